"""`tdkit run FILE.mlir`: strategies on the dispatches tdkit knows, default on the rest, outputs
saved, verified against IREE's default build of the same module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tdkit.tools.cli import main

MODULE = """
func.func @main(%x: tensor<48x300xf32>, %y: tensor<48x300xf32>)
    -> (tensor<48x300xf32>, tensor<48x300xf32>) {
  %e = tensor.empty() : tensor<48x300xf32>
  %s = linalg.softmax dimension(1) ins(%x : tensor<48x300xf32>)
      outs(%e : tensor<48x300xf32>) -> tensor<48x300xf32>
  %a = arith.mulf %y, %y : tensor<48x300xf32>
  return %s, %a : tensor<48x300xf32>, tensor<48x300xf32>
}
"""

NO_SOFTMAX = """
func.func @main(%y: tensor<16xf32>) -> tensor<16xf32> {
  %a = arith.addf %y, %y : tensor<16xf32>
  return %a : tensor<16xf32>
}
"""


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    rc = main([*argv, "--json", "--no-time"])
    out = capsys.readouterr()
    return rc, json.loads(out.out) if out.out.strip() else {"stderr": out.err}


def test_run_file_with_inputs_saves_outputs(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model.mlir"
    src.write_text(MODULE)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((48, 300)) * 4).astype(np.float32)
    y = rng.standard_normal((48, 300)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out_dir = tmp_path / "out"
    rc, d = _run(capsys, ["run", str(src), "--input", f"@{tmp_path / 'x.npy'}",
                          "--input", f"@{tmp_path / 'y.npy'}", "--output-dir", str(out_dir)])
    assert rc == 0, d
    assert d["ok"] and d["applied"] and d["targeted"] == 1
    tdkit = [x for x in d["dispatches"] if x["strategy"].startswith("tdkit_")]
    assert len(tdkit) == 1 and "softmax" in tdkit[0]["name"]
    s = np.load(out_dir / "output0.npy")
    a = np.load(out_dir / "output1.npy")
    ref = np.exp(x - x.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(s, ref, atol=2e-6)
    np.testing.assert_allclose(a, y * y, rtol=1e-6)


def test_run_file_without_known_dispatch(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "plain.mlir"
    src.write_text(NO_SOFTMAX)
    rc, d = _run(capsys, ["run", str(src)])
    assert rc == 0 and d["targeted"] == 0
    assert any("no dispatch" in n for n in d["notes"])
    rc = main(["run", str(src), "--strategy", "softmax_cpu", "--no-time"])
    err = capsys.readouterr().err
    assert rc == 1 and "not applied" in err and len(err.strip().splitlines()) == 1


def test_inspect_lists_dispatches_and_their_strategies(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model.mlir"
    src.write_text(MODULE)
    assert main(["inspect", str(src), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    by_family = {r["targeted_by"]: r for r in d["dispatches"]}
    assert set(by_family) == {"softmax_cpu", None}, d["dispatches"]
    assert by_family["softmax_cpu"]["strategy"].startswith("tdkit_softmax_cpu_r2_d1")
    assert by_family[None]["strategy"].startswith("default:")
    assert not list(Path(d["artifacts"]).glob("*.vmfb")), "inspect must not build code"
