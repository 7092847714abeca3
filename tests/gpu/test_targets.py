"""`--target`: GPU targets compile here, say clearly that they did not run, and refuse to
benchmark without a device; CPU strategies refuse GPU targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tdkit.tools.cli import main
from tdkit.tools.devicecode import device_code
from tdkit.tools.harness import HarnessConfig, build
from tdkit.tools.toolchain import compile_argv, target_options

from .conftest import GPU_TARGETS, device_of


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


@pytest.mark.parametrize(("target", "flags"), [
    ("cpu", ["--iree-hal-local-target-device-backends=llvm-cpu"]),
    ("cuda:sm_80", ["--iree-hal-target-device=cuda", "--iree-cuda-target=sm_80"]),
    ("cuda:sm_90", ["--iree-hal-target-device=cuda", "--iree-cuda-target=sm_90"]),
    ("rocm:gfx942", ["--iree-hal-target-device=hip", "--iree-rocm-target=gfx942"]),
])
def test_target_flags(target: str, flags: list[str]) -> None:
    opts = target_options(target)
    assert opts.target_name == target
    argv = compile_argv("iree-compile", Path("in.mlir"), Path("out.vmfb"), opts,
                        dump_configurations=Path("configurations"))
    for flag in flags:
        assert flag in argv
    assert ("--iree-hal-dump-executable-binaries-to=binaries" in argv) == opts.is_gpu


def test_unknown_target(capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(capsys, ["run", "softmax", "--shape", "8x16", "--target", "cuda:sm_70"],
                    "unknown target 'cuda:sm_70'")


def test_cpu_strategy_refuses_gpu_target(capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(capsys, ["emit", "softmax", "--shape", "8x16", "--strategy", "softmax_cpu",
                             "--target", "rocm:gfx942"], "generates cpu code")


@pytest.mark.parametrize("target", ["cuda:sm_80", "rocm:gfx942"])
def test_run_default_on_gpu_target(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "softmax", "--shape", "16x256", "--strategy", "default", "--target",
               target, "--json", "--no-time"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["target"] == target, out
    assert out["dispatches"][0]["strategy"].startswith("default:#iree_gpu.pipeline"), out
    if device_of(target) is None:
        assert not out["verified"] and "no " in out["not_run"] and "device" in out["not_run"]
        assert out["max_abs_err"] is None
    else:
        assert out["verified"] and out["max_abs_err"] <= out["tolerance"]


def test_compare_default_without_a_device(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "softmax", "--shape", "16x256", "--target", "cuda:sm_80",
               "--compare-default", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["strategy"] == "softmax_gpu" and out["applied"], out
    if device_of("cuda:sm_80") is None:
        assert out["default_ok"] is None and out["speedup"] is None  # nothing ran
    else:
        assert out["default_ok"] is not None and out["speedup"] > 0


def test_bench_needs_a_device(capsys: pytest.CaptureFixture[str]) -> None:
    if device_of("cuda:sm_80") is not None:
        pytest.skip("this machine has a CUDA device: bench runs there (tests/gpu/test_on_device)")
    _one_line_error(capsys, ["bench", "softmax", "--shape", "16x256", "--target", "cuda:sm_80"],
                    "has none")


@pytest.mark.parametrize(("target", "backend", "instruction"), [
    ("cuda:sm_80", "cuda", "mma.sync.aligned.m16n8k16"),
    ("rocm:gfx942", "rocm", "v_mfma_f32"),
])
def test_device_code_of_default_f16_attention(target: str, backend: str, instruction: str,
                                              tmp_path: Path) -> None:
    """The reader of device code sees what IREE's own GPU attention pipeline emits for f16:
    matrix instructions, shared memory, barriers."""
    from tdkit.matchers.attention_problem import Attention
    from tdkit.matchers.dtypes import DType

    problem = Attention(batch=(2,), m=128, k2=128, d=64, dtype=DType.F16)
    cfg = HarnessConfig(artifacts=tmp_path, compile=target_options(target))
    b = build(problem, "attention", "default", None, tmp_path / "default", cfg)
    code = device_code(b.artifact, backend)
    assert code.kernels and code.mma > 0 and code.barriers > 0 and code.shared_accesses > 0
    assert any(instruction in m for m in code.mma_instructions()), code.mma_instructions()
    assert code.threads_per_block in (64, 128, 256, 512)


def test_gpu_targets_listed() -> None:
    for target in GPU_TARGETS:
        assert target_options(target).is_gpu


def test_run_file_for_a_gpu_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A payload file compiles with the GPU families for the target (the softmax dispatch
    gets softmax_gpu); without the GPU nothing runs and the result says so."""
    from tdkit.matchers.dtypes import DType
    from tdkit.matchers.problems import Softmax
    from tdkit.tools.harness import payload_text

    f = tmp_path / "softmax.mlir"
    f.write_text(payload_text(Softmax((64, 1024), -1, DType.F32), "softmax"))
    rc = main(["run", str(f), "--target", "rocm:gfx942", "--json", "--artifacts",
               str(tmp_path / "a")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["applied"], out
    assert [d["strategy"] for d in out["dispatches"]] == ["tdkit_softmax_gpu_r2_d1_f32"]
    if device_of("rocm:gfx942") is None:
        assert not out["verified"] and "no hip device" in out["not_run"]


def test_tune_file_for_a_gpu_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tune FILE --target` sweeps the target's families that own a dispatch of the file; the
    sweep key names the target; here the candidates are compiled only."""
    from tdkit.matchers.dtypes import DType
    from tdkit.matchers.problems import Softmax
    from tdkit.tools.harness import payload_text

    if device_of("cuda:sm_80") is not None:
        pytest.skip("this machine has a CUDA device: the sweep times candidates there")
    f = tmp_path / "softmax.mlir"
    f.write_text(payload_text(Softmax((64, 1024), -1, DType.F32), "softmax"))
    rc = main(["tune", str(f), "--target", "cuda:sm_80", "--budget", "2", "--search", "random",
               "--db", str(tmp_path / "t.db"), "--artifacts", str(tmp_path / "a"), "--json",
               "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"], out
    (sweep,) = out["sweeps"]
    assert sweep["strategy"] == "softmax_gpu" and "target=cuda:sm_80" in sweep["problem"]
    assert sweep["compiled"] == 2


def test_smoke_gpu_matrix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tdkit smoke --target` runs the GPU matrix: every case compiles with its strategy
    applied; without the GPU each says it was compiled only."""
    rc = main(["smoke", "--target", "rocm:gfx942", "--json", "--artifacts", str(tmp_path),
               "--junit", str(tmp_path / "j.xml")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"], out
    strategies = {c["strategy"] for c in out["cases"]}
    assert {"softmax_gpu", "flash_gpu", "default"} <= strategies
    assert all(c["applied"] and c["target"] == "rocm:gfx942" for c in out["cases"])
    if device_of("rocm:gfx942") is None:
        assert all(not c["verified"] and c["not_run"] for c in out["cases"])
    assert (tmp_path / "j.xml").read_text().count("<testcase") == len(out["cases"])
