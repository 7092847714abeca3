"""`tdkit tune FILE.mlir|model.onnx`: the families whose dispatches the module holds are swept,
candidates verified against IREE's default build (or onnxruntime for ONNX models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tdkit.matchers.problems import Softmax
from tdkit.tools import tunedb
from tdkit.tools.harness import payload_text

from ..cli.test_onnx import _exporter_style_attention

TDKIT = [sys.executable, "-m", "tdkit.tools.cli"]
ENV = {**os.environ, "TDKIT_NO_PROGRESS": "1"}


def _tune(tmp: Path, target: Path, *extra: str) -> tuple[int, dict, str]:
    proc = subprocess.run([*TDKIT, "tune", str(target), "--db", str(tmp / "t.db"),
                           "--artifacts", str(tmp / "art"), "--confirm-rounds", "0", "--json",
                           *extra], capture_output=True, text=True, timeout=900, env=ENV)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.startswith("{") else {}, \
        proc.stderr


def test_tune_payload_file_finds_its_softmax(tmp_path: Path) -> None:
    path = tmp_path / "softmax.mlir"
    path.write_text(payload_text(Softmax((128, 512)), "generic"))
    rc, out, err = _tune(tmp_path, path, "--budget", "4")
    assert rc == 0, err
    (sweep,) = out["sweeps"]  # only softmax_cpu targets this module's dispatch
    assert sweep["strategy"] == "softmax_cpu" and sweep["evaluated"] == 4
    assert sweep["problem"].startswith("file softmax.mlir")
    with tunedb.TuneDB(tmp_path / "t.db") as db:
        rows = db.candidates()
    assert rows and all(r.status in tunedb.VERIFIED for r in rows)
    # exported: the file's tuned knobs as general (any-shape) entries
    proc = subprocess.run([*TDKIT, "export", "--db", str(tmp_path / "t.db"), "-o",
                           str(tmp_path / "best.mlir"), "--json"], capture_output=True,
                          text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "tdkit_softmax_cpu_r2_d1_t0" in (tmp_path / "best.mlir").read_text()


def test_tune_onnx_model_checks_against_onnxruntime(tmp_path: Path) -> None:
    model = tmp_path / "block.onnx"
    _exporter_style_attention(model)
    # its MatMul -> Div -> Softmax -> MatMul is raised: the attention families are swept, for
    # the raised chain (its head dim), each candidate compiled with the raising spec
    rc, out, err = _tune(tmp_path, model, "--search", "random", "--budget", "3")
    assert rc == 0, err
    assert [s["strategy"] for s in out["sweeps"]] == ["flash", "config"]
    assert all(s["evaluated"] == 3 and s["best_ms"] > 0 for s in out["sweeps"])
    with tunedb.TuneDB(tmp_path / "t.db") as db:
        rows = db.candidates()
    ok = [r for r in rows if r.status != tunedb.PRUNED]
    assert ok and all(r.status in tunedb.VERIFIED and r.max_abs_err < r.tolerance for r in ok)
    # and with --no-raise the softmax dispatch is what gets tuned
    rc, out, err = _tune(tmp_path / "plain", model, "--no-raise", "--budget", "2")
    assert rc == 0, err
    assert [s["strategy"] for s in out["sweeps"]] == ["softmax_cpu"]


def test_tune_file_without_a_tunable_dispatch_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "add.mlir"
    path.write_text("func.func @main(%a: tensor<4xf32>, %b: tensor<4xf32>) -> tensor<4xf32> {\n"
                    "  %0 = arith.addf %a, %b : tensor<4xf32>\n  return %0 : tensor<4xf32>\n}\n")
    rc, _, err = _tune(tmp_path, path, "--budget", "2")
    assert rc == 2 and "no dispatch" in err and "Traceback" not in err
    rc, _, err = _tune(tmp_path, path, "--strategy", "flash", "--budget", "2")
    assert rc == 2 and "targets no dispatch" in err
