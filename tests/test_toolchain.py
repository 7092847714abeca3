"""The one door to iree-* tools: pure argv building, timeouts, crashes, missing tools, artifacts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tdkit.tools.errors import EXIT_BAD_INPUT, ToolError
from tdkit.tools.toolchain import (
    NO_THREADING,
    CompileOptions,
    RunOptions,
    compile_argv,
    compile_module,
    find_tool,
    library_flags,
    run_module,
    run_process,
    thread_flags,
)


def test_compile_argv_is_pure_and_complete() -> None:
    opts = CompileOptions(cpu="znver4", link_embedded=False, extra_flags=("--x=1",))
    argv = compile_argv("iree-compile", Path("in.mlir"), Path("out.vmfb"), opts,
                        library=Path("lib.mlir"), dump_configurations=Path("cfg"))
    assert argv == [
        "iree-compile", "in.mlir", "--iree-hal-target-device=local",
        "--iree-hal-local-target-device-backends=llvm-cpu", "--iree-llvmcpu-target-cpu=znver4",
        "--iree-llvmcpu-link-embedded=false",
        "--iree-codegen-transform-dialect-library=lib.mlir@__kernel_config",
        "--mlir-disable-threading",
        "--iree-hal-dump-executable-configurations-to=cfg", "--x=1", "-o", "out.vmfb"]
    assert argv == compile_argv("iree-compile", Path("in.mlir"), Path("out.vmfb"), opts,
                                library=Path("lib.mlir"), dump_configurations=Path("cfg"))


def test_compiles_with_a_transform_library_run_single_threaded() -> None:
    """IREE 3.13 sometimes deadlocks loading a transform library for two executables at
    once; every compile with a library or preprocessing spec turns threading off, once."""
    plain = compile_argv("c", Path("a"), Path("b"), CompileOptions())
    assert NO_THREADING not in plain
    spec = compile_argv("c", Path("a"), Path("b"), CompileOptions(), preprocessing=Path("r"))
    assert spec.count(NO_THREADING) == 1
    opts = CompileOptions(extra_flags=(NO_THREADING,))
    lib = compile_argv("c", Path("a"), Path("b"), opts, library=Path("l"))
    assert lib.count(NO_THREADING) == 1


def test_compile_argv_gpu_targets() -> None:
    cuda = compile_argv("c", Path("a"), Path("b"), CompileOptions(target="cuda"))
    assert "--iree-hal-target-device=cuda" in cuda and "--iree-cuda-target=sm_80" in cuda
    rocm = compile_argv("c", Path("a"), Path("b"), CompileOptions(target="rocm",
                                                                  gpu_arch="gfx90a"))
    assert "--iree-hal-target-device=hip" in rocm and "--iree-rocm-target=gfx90a" in rocm
    with pytest.raises(ValueError, match="unknown target"):
        compile_argv("c", Path("a"), Path("b"), CompileOptions(target="tpu"))


def test_timeout_kills_and_reports() -> None:
    with pytest.raises(ToolError, match="timed out after 0.5 s") as info:
        run_process([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5,
                    what="sleeper")
    assert "sleep" in info.value.repro


def test_crash_is_reported_with_signal() -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    with pytest.raises(ToolError, match="crashed with SIGSEGV"):
        run_process([sys.executable, "-c", code], timeout_s=30, what="crasher")


def test_failure_carries_stderr_tail_and_repro() -> None:
    code = "import sys; print('line1\\nerror: boom', file=sys.stderr); sys.exit(3)"
    with pytest.raises(ToolError) as info:
        run_process([sys.executable, "-c", code], timeout_s=30, what="failer")
    err = info.value
    assert err.returncode == 3 and "error: boom" in err.stderr_tail
    assert "error: boom" in err.one_line() and "repro:" in err.one_line()


def test_missing_tool_is_bad_input() -> None:
    with pytest.raises(ToolError) as info:
        find_tool("iree-compile", "/nonexistent/iree-compile")
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_compile_writes_all_artifacts_and_runs(tmp_path: Path) -> None:
    payload = """
func.func @main(%a: tensor<4xf32>, %b: tensor<4xf32>) -> tensor<4xf32> {
  %0 = arith.addf %a, %b : tensor<4xf32>
  return %0 : tensor<4xf32>
}"""
    art = compile_module(payload, tmp_path / "c")
    for name in ("payload.mlir", "command.txt", "stderr.txt", "module.vmfb"):
        assert (art.dir / name).is_file(), name
    assert "iree-compile" in (art.dir / "command.txt").read_text()
    assert art.configuration_files(), "dispatch configurations were not dumped"
    a = np.arange(4, dtype=np.float32)
    (out,) = run_module(art.vmfb, [a, a], [((4,), np.dtype(np.float32))], tmp_path / "r")
    np.testing.assert_array_equal(out, 2 * a)


def test_compile_error_is_tool_error_with_artifacts(tmp_path: Path) -> None:
    with pytest.raises(ToolError) as info:
        compile_module("func.func @main( {", tmp_path / "bad")
    assert "iree-compile failed" in info.value.summary
    assert (tmp_path / "bad" / "stderr.txt").read_text()


def test_library_flags_come_from_the_module_attribute() -> None:
    text = ('module attributes {tdkit.compile_flags = ["--a=1", "--b"], '
            'transform.with_named_sequence} {\n}\n')
    assert library_flags(text) == ("--a=1", "--b")
    assert library_flags("module attributes {transform.with_named_sequence} {\n}\n") == ()
    assert library_flags(None) == ()


def test_thread_flags_set_local_task_workers_only() -> None:
    assert thread_flags(RunOptions()) == []
    assert thread_flags(RunOptions(threads=1)) == ["--task_topology_group_count=1"]
    assert thread_flags(RunOptions(device="local-sync", threads=1)) == []
    assert thread_flags(RunOptions(device="cuda://0", threads=2)) == []


def test_blas_threads_limits_openblas_inside_the_block_only() -> None:
    from threadpoolctl import threadpool_info

    from tdkit.tools.peers import blas_threads

    def blas() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas()
    assert before, "numpy has no BLAS thread pool to limit"
    with blas_threads(1):
        assert blas() == [1] * len(before)
    assert blas() == before
    with blas_threads(None):
        assert blas() == before
