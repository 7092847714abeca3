"""The `tdkit` command line: help, exit codes, one-line errors for every bad-input class, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tdkit.tools.cli import main

SUBCOMMANDS = ("emit", "run", "apply", "bench", "smoke", "inspect", "strategies")


def _fails_cleanly(capsys: pytest.CaptureFixture[str], argv: list[str], code: int,
                   needle: str) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == code, f"exit {rc}, stderr: {err}"
    assert len(err.splitlines()) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    assert needle in err, err
    return err


def test_console_script_help_lists_subcommands() -> None:
    exe = Path(sys.executable).parent / "tdkit"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_each_subcommand_has_help(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([sub, "--help"])
    assert info.value.code == 0
    assert "usage: tdkit " + sub in capsys.readouterr().out


def test_bad_shape_string(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["run", "softmax", "--shape", "12xabc"], 2, "bad shape")


def test_zero_dim_shape(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["emit", "softmax", "--shape", "0x8"], 2, "must be positive")


def test_unsupported_dtype(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["run", "softmax", "--shape", "8x8", "--dtype", "f8"], 2,
                   "unsupported dtype")


@pytest.mark.parametrize("threads", ["0", "-1", "many", "100000"])
def test_bench_threads_out_of_range(capsys: pytest.CaptureFixture[str], threads: str) -> None:
    """A usage error of argparse: exit 2 with one line, before anything compiles."""
    with pytest.raises(SystemExit) as info:
        main(["bench", "attention", "--shape", "1x16x16x16", "--threads", threads])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --threads" in err, err


@pytest.mark.parametrize("sub", ["run", "bench"])
def test_unknown_timer(capsys: pytest.CaptureFixture[str], sub: str) -> None:
    """A usage error of argparse: exit 2 with one line, before anything compiles."""
    with pytest.raises(SystemExit) as info:
        main([sub, "attention", "--shape", "1x16x16x16", "--timer", "stopwatch"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --timer" in err, err


def test_timer_reaches_the_harness_config() -> None:
    from tdkit.tools.cli import _config, build_parser

    parser = build_parser()
    chosen = parser.parse_args(["bench", "attention", "--shape", "1x16x16x16", "--timer",
                                "benchmark-module"])
    assert _config(chosen).timer == "benchmark-module"
    default = parser.parse_args(["bench", "attention", "--shape", "1x16x16x16"])
    assert _config(default).timer == "runtime"
    no_flag = parser.parse_args(["smoke", "--quick"])  # smoke has no --timer
    assert _config(no_flag).timer == "runtime"


@pytest.mark.parametrize(("argv", "needle"), [
    (["--variant", "key_tile=8"], "name it with --strategy"),
    (["--strategy", "flash", "--variant", "key_tile"], "bad --variant"),
    (["--strategy", "flash", "--variant", "bogus=1"], "unknown knob 'bogus'"),
    (["--strategy", "flash", "--variant", "key_tile=24"], "key_tile must be a power of two"),
])
def test_bench_bad_variant(capsys: pytest.CaptureFixture[str], argv: list[str],
                           needle: str) -> None:
    _fails_cleanly(capsys, ["bench", "attention", "--shape", "1x16x16x16", "--no-peers",
                            *argv], 2, needle)


def test_unknown_problem_kind(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["run", "conv", "--shape", "8x8"], 2, "unknown problem")


def test_unknown_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["emit", "softmax", "--shape", "8x8", "--strategy", "nope"], 2,
                   "unknown strategy")


def test_unknown_knob(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["emit", "softmax", "--shape", "8x8", "--knob", "bogus=1"], 2,
                   "unknown knob")


def test_knob_of_wrong_type(capsys: pytest.CaptureFixture[str]) -> None:
    from tdkit.strategies import registry

    name = next(f.name for f in __import__("dataclasses").fields(
        registry.get("softmax_cpu").knobs) if f.type in ("int", int))
    _fails_cleanly(capsys, ["emit", "softmax", "--shape", "8x8", "--knob", f"{name}=many"], 2,
                   "invalid knob")


def test_malformed_knob_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["emit", "softmax", "--shape", "8x8", "--knob", "novalue"], 2,
                   "NAME=VALUE")


def test_bad_usage_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "softmax", "--shape"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected one argument" in err


def test_malformed_mlir_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.mlir"
    f.write_text("func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {\n  return %y\n")
    _fails_cleanly(capsys, ["run", str(f)], 2, "malformed MLIR")


def test_unknown_op_in_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "unknown.mlir"
    f.write_text('func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {\n'
                 '  %0 = "mystery.op"(%x) : (tensor<4xf32>) -> tensor<4xf32>\n'
                 '  return %0 : tensor<4xf32>\n}\n')
    _fails_cleanly(capsys, ["run", str(f)], 2, "mystery.op")


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["run", "/nonexistent/x.mlir"], 2, "no such file")


def test_missing_compiler(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["run", "softmax", "--shape", "8x8", "--strategy", "default",
                            "--compiler", "/nonexistent/iree-compile"], 2, "not found")


def test_wrong_input_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    f = tmp_path / "m.mlir"
    f.write_text("func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {\n"
                 "  return %x : tensor<4xf32>\n}\n")
    np.save(tmp_path / "a.npy", np.zeros(4, np.float32))
    np.save(tmp_path / "b.npy", np.zeros(4, np.float32))
    _fails_cleanly(capsys, ["run", str(f), "--input", f"@{tmp_path / 'a.npy'}", "--input",
                            f"@{tmp_path / 'b.npy'}"], 2, "takes 1 inputs")


def test_attention_default_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "attention", "--shape", "2x3x32x48x16", "--causal", "--strategy",
               "default", "--json", "--rounds", "1", "--repetitions", "1"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    for key in ("ok", "strategy", "applied", "dispatches", "max_abs_err", "tolerance",
                "time_ms"):
        assert key in out, key
    assert out["ok"] and out["strategy"] == "default"
    assert out["max_abs_err"] <= out["tolerance"]
