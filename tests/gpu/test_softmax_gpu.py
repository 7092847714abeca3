"""`softmax_gpu` compiled for every GPU target (no GPU needed): the strategy ran on the
dispatch, the lowered IR maps rows to blocks and lanes to threads with shuffle reductions, the
device code has vectorized loads and warp shuffles (shared memory and barriers only when a row
spans several subgroups), and invalid knobs fail before compiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tdkit.matchers.dtypes import DType
from tdkit.matchers.problems import Softmax
from tdkit.strategies import registry
from tdkit.tools.cli import main
from tdkit.tools.devicecode import device_code
from tdkit.tools.harness import HarnessConfig, build
from tdkit.tools.toolchain import target_options
from tdkit.tools.tunedb import TuneDB

from .conftest import GPU_TARGETS, assert_rejected_before_compiling

BACKEND = {"cuda:sm_80": "cuda", "cuda:sm_90": "cuda", "rocm:gfx942": "rocm"}
CASES = [  # (shape, dtype): non-divisible rows and row length, rank 4, 16-bit types
    ((333, 1000), DType.F32),
    ((4, 8, 128, 256), DType.F16),
    ((512, 1024), DType.BF16),
]


def _build(problem: Softmax, target: str, tmp_path: Path, knobs: dict[str, str] | None = None):
    cfg = HarnessConfig(artifacts=tmp_path, compile=target_options(target))
    b = build(problem, "softmax", "softmax_gpu", knobs, tmp_path / target.replace(":", "_"), cfg)
    family = registry.get("softmax_gpu")
    return b, family.parse_knobs(knobs, problem, target)


@pytest.mark.parametrize("target", GPU_TARGETS)
@pytest.mark.parametrize(("shape", "dtype"), CASES)
def test_compiles_with_shuffles_and_vector_loads(target: str, shape: tuple[int, ...],
                                                 dtype: DType, tmp_path: Path) -> None:
    problem = Softmax(shape, -1, dtype)
    b, knobs = _build(problem, target, tmp_path)
    assert [d.strategy.startswith("tdkit_softmax_gpu_") for d in b.dispatches] == [True]
    code = device_code(b.artifact, BACKEND[target])
    assert code.shuffles > 0 and code.vector_loads > 0, code.as_dict()
    assert code.threads_per_block == knobs.rows_per_block * knobs.threads_per_row
    if target.startswith("cuda"):
        sm = target.split(":")[1]
        assert f".target {sm}" in code.text
    # one subgroup per row: the reductions stay in registers (no shared memory, no barrier)
    assert code.barriers == 0 and code.shared_accesses == 0, code.as_dict()


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_long_rows_combine_subgroups_through_shared_memory(target: str, tmp_path: Path) -> None:
    problem = Softmax((64, 32768), -1, DType.F32)
    b, knobs = _build(problem, target, tmp_path)
    assert knobs.threads_per_row == 256 and knobs.rows_per_block == 1
    code = device_code(b.artifact, BACKEND[target])
    assert code.threads_per_block == 256
    assert code.shuffles > 0 and code.barriers > 0 and code.shared_accesses > 0
    assert code.dynamic_shared or code.shared_bytes > 0


def test_lowered_ir_shows_the_thread_mapping(capsys: pytest.CaptureFixture[str],
                                             filecheck) -> None:
    rc = main(["apply", "softmax", "--shape", "64x1024", "--target", "cuda:sm_80",
               "--knob", "rows_per_block=4", "--knob", "threads_per_row=32",
               "--knob", "vector_width=4"])
    text = capsys.readouterr().out
    assert rc == 0
    filecheck(text, """
CHECK: func.func @main_dispatch_0_softmax_64x1024xf32
CHECK-SAME: pipeline = #iree_codegen.no_pipeline workgroup_size = [32, 4, 1] subgroup_size = 32
CHECK-DAG: gpu.thread_id x
CHECK-DAG: gpu.thread_id y
CHECK-DAG: hal.interface.workgroup.id[0]
CHECK: vector.transfer_read {{.*}} vector<4xf32>
CHECK: gpu.shuffle xor {{.*}} %c16_i32, %c32_i32 : f32
CHECK: math.exp
CHECK: gpu.shuffle xor {{.*}} %c1_i32, %c32_i32 : f32
CHECK: vector.transfer_write {{.*}} vector<4xf32>
CHECK-NOT: memref.alloc
""")


@pytest.mark.parametrize(("target", "knobs", "needle"), [
    ("rocm:gfx942", ["threads_per_row=32"], "multiple of the subgroup size of rocm:gfx942"),
    ("cuda:sm_80", ["rows_per_block=64", "threads_per_row=32"], "exceeds the 1024 threads"),
    ("cuda:sm_80", ["threads_per_row=64", "rows_per_block=2"], "spans several subgroups"),
    ("cuda:sm_90", ["vector_width=3"], "power of two"),
    ("cuda:sm_80", ["threads_per_row=512", "vector_width=4", "rows_per_block=1"],
     "exceeds the row length 1000"),
])
def test_invalid_knobs_fail_before_compiling(target: str, knobs: list[str], needle: str,
                                             capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    argv = ["run", "softmax", "--shape", "32x1000", "--target", target, "--artifacts",
            str(tmp_path)]
    assert_rejected_before_compiling(argv, knobs, needle, tmp_path, capsys)


def test_tune_compiles_candidates_without_a_device(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep for a GPU target here compiles and checks every candidate, records them as
    `compiled`, and says that timing needs the device."""
    from .conftest import device_of

    if device_of("rocm:gfx942") is not None:
        pytest.skip("this machine has a ROCm device: the sweep times candidates there")
    db = tmp_path / "t.db"
    rc = main(["tune", "softmax", "--shape", "128x2048", "--target", "rocm:gfx942",
               "--search", "random", "--budget", "5", "--db", str(db), "--artifacts",
               str(tmp_path / "a"), "--json", "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"], out
    (sweep,) = out["sweeps"]
    assert sweep["strategy"] == "softmax_gpu" and "target=rocm:gfx942" in sweep["problem"]
    assert sweep["compiled"] == 5 and sweep["best_ms"] is None
    assert "no hip device" in sweep["not_run"]
    with TuneDB(db) as tdb:
        rows = [r for r in tdb.candidates(sweep["problem"], "softmax_gpu", None)
                if r.status != "pruned"]
    assert len(rows) == 5 and {r.status for r in rows} == {"compiled"}
    assert len({r.binary_hash for r in rows}) == 5
    assert all(json.loads(r.knobs)["target"] == "rocm:gfx942" for r in rows)


def test_report_of_a_compile_only_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    from .conftest import device_of

    if device_of("cuda:sm_80") is not None:
        pytest.skip("this machine has a CUDA device: the sweep times candidates there")
    db = tmp_path / "t.db"
    assert main(["tune", "softmax", "--shape", "64x1024", "--target", "cuda:sm_80",
                 "--search", "grid", "--space", "threads_per_row=32",
                 "--space", "vector_width=2,4", "--space", "rows_per_block=1",
                 "--db", str(db), "--artifacts", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["report", "--db", str(db), "-o", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "summary.md").read_text()
    # the two grid points and the untuned defaults (4 rows per block)
    assert "| compiled | 3 |" in text and "No timed candidate: 3 compiled and applied" in text
    capsys.readouterr()
