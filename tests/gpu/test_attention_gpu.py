"""`flash_gpu` compiled for every GPU target (no GPU needed): IREE's VectorDistribute attention
pipeline configured by tdkit. The dispatch is configured by tdkit; the device code uses the
target's matrix instructions when the knobs ask for them (mma.sync on sm_80/sm_90, MFMA on
gfx942), K/V tiles go through shared memory, and no M x K2 buffer exists; invalid knobs fail
before compiling."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tdkit.matchers.attention_problem import Attention
from tdkit.matchers.dtypes import DType
from tdkit.strategies import registry
from tdkit.tools.cli import main
from tdkit.tools.devicecode import device_code, memref_shapes
from tdkit.tools.harness import HarnessConfig, build
from tdkit.tools.toolchain import target_options

from .conftest import GPU_TARGETS, assert_rejected_before_compiling, device_of

BACKEND = {"cuda:sm_80": "cuda", "cuda:sm_90": "cuda", "rocm:gfx942": "rocm"}
MMA = {  # (target backend, dtype) -> the matrix instruction the PTX / ISA must contain
    ("cuda", DType.F16): "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
    ("cuda", DType.BF16): "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
    ("rocm", DType.F16): "v_mfma_f32_",
    ("rocm", DType.BF16): "v_mfma_f32_",
    ("rocm", DType.F32): "v_mfma_f32_",
}
SUBGROUP = {"cuda": 32, "rocm": 64}


def _build(problem: Attention, target: str, tmp_path: Path,
           knobs: dict[str, str] | None = None):
    cfg = HarnessConfig(artifacts=tmp_path, compile=target_options(target))
    b = build(problem, "attention", "flash_gpu", knobs, tmp_path / target.replace(":", "_"),
              cfg)
    return b, registry.get("flash_gpu").parse_knobs(knobs, problem, target)


@pytest.mark.parametrize("target", GPU_TARGETS)
@pytest.mark.parametrize("dtype", [DType.F16, DType.BF16, DType.F32])
def test_compiles_with_matrix_instructions_and_shared_memory(target: str, dtype: DType,
                                                             tmp_path: Path) -> None:
    problem = Attention(batch=(2, 4), m=256, k2=256, d=64, dtype=dtype)
    b, knobs = _build(problem, target, tmp_path)
    assert [d.strategy.startswith("tdkit_attention_gpu_") for d in b.dispatches] == [True]
    backend = BACKEND[target]
    code = device_code(b.artifact, backend)
    assert code.threads_per_block == knobs.warps * SUBGROUP[backend]
    assert code.barriers > 0 and code.shared_accesses > 0
    assert code.dynamic_shared if backend == "cuda" else code.shared_bytes > 0
    want = MMA.get((backend, dtype))
    if want is None:  # f32 on CUDA: IREE 3.13 has no f32 mma.sync; the SIMT route
        assert not knobs.use_mma and code.mma == 0
    else:
        assert knobs.use_mma and code.mma > 0
        assert any(want in m for m in code.mma_instructions()), code.mma_instructions()
    if target == "cuda:sm_90":
        assert ".target sm_90" in code.text


@pytest.mark.parametrize("target", ["cuda:sm_80", "rocm:gfx942"])
def test_knobs_choose_simt_or_matrix_instructions(target: str, tmp_path: Path) -> None:
    problem = Attention(batch=(1, 2), m=128, k2=128, d=64, dtype=DType.F16)
    b, knobs = _build(problem, target, tmp_path, {"use_mma": "false", "block_m": "4",
                                                  "warps": "4"})
    assert not knobs.use_mma
    assert device_code(b.artifact, BACKEND[target]).mma == 0


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_partial_tiles_causal_compile(target: str, tmp_path: Path) -> None:
    """197 queries and keys (ViT): partial query and key tiles, masked; causal."""
    problem = Attention(batch=(1, 4), m=197, k2=197, d=64, dtype=DType.F16, causal=True)
    b, knobs = _build(problem, target, tmp_path)
    assert 197 % knobs.block_m and 197 % knobs.key_tile
    (attention,) = [d for d in b.dispatches if "attention" in d.name]
    assert attention.strategy.startswith("tdkit_attention_gpu_")
    assert device_code(b.artifact, BACKEND[target]).mma > 0


def test_lowered_ir_has_shared_tiles_warps_and_no_score_matrix(
        capsys: pytest.CaptureFixture[str], filecheck) -> None:
    m, k2 = 512, 384
    rc = main(["apply", "attention", "--shape", f"2x4x{m}x{k2}x64", "--dtype", "f16",
               "--target", "cuda:sm_80", "--knob", "block_m=64", "--knob", "key_tile=64",
               "--knob", "warps=4"])
    text = capsys.readouterr().out
    assert rc == 0
    filecheck(text, """
CHECK: func.func @main_dispatch_0_attention
CHECK-SAME: pipeline = #iree_gpu.pipeline<VectorDistribute>
CHECK-SAME: workgroup_size = [128, 1, 1] subgroup_size = 32
CHECK-DAG: gpu.thread_id x
CHECK-DAG: #gpu.address_space<workgroup>
CHECK: scf.for
CHECK: gpu.barrier
CHECK: nvgpu.mma.sync
CHECK: math.exp2
CHECK: nvgpu.mma.sync
""")
    shared = set(re.findall(r"memref<([\dx]+)x\w+, #gpu.address_space<workgroup>>", text))
    assert shared, "K/V tiles must be staged in shared memory"
    for shape in memref_shapes(text):
        assert not (m in shape and k2 in shape), f"an M x K2 buffer: {shape}"


@pytest.mark.parametrize(("target", "shape", "knobs", "needle"), [
    ("cuda:sm_80", "1x2x512x512x64", ["block_m=1024"], "exceeds the query length"),
    ("cuda:sm_80", "1x2x2048x512x64", ["warps=64", "block_m=2048"], "threads exceeds the 1024"),
    ("rocm:gfx942", "1x2x512x512x128", ["block_m=256", "key_tile=128", "warps=4"],
     "shared-memory tiles need"),
    ("cuda:sm_90", "1x2x512x512x64", ["key_tile=24"], "must be a multiple of"),
    ("cuda:sm_80", "1x2x512x512x64", ["mma_shape=32x32"], "not available on cuda:sm_80"),
])
def test_invalid_knobs_fail_before_compiling(target: str, shape: str, knobs: list[str],
                                             needle: str, capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    argv = ["run", "attention", "--shape", shape, "--dtype", "f16", "--target", target,
            "--artifacts", str(tmp_path)]
    assert_rejected_before_compiling(argv, knobs, needle, tmp_path, capsys)


def test_tune_compiles_flash_gpu_candidates(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    if device_of("cuda:sm_80") is not None:
        pytest.skip("this machine has a CUDA device: the sweep times candidates there")
    rc = main(["tune", "attention", "--shape", "2x4x256x256x64", "--dtype", "f16",
               "--target", "cuda:sm_80", "--search", "random", "--budget", "4",
               "--db", str(tmp_path / "t.db"), "--artifacts", str(tmp_path / "a"), "--json",
               "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"], out
    (sweep,) = out["sweeps"]
    assert sweep["strategy"] == "flash_gpu" and sweep["compiled"] == 4
    assert sweep["best_ms"] is None and "no cuda device" in sweep["not_run"]
