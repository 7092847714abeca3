"""`tdkit run model.onnx`: import with iree-import-onnx, compile with tdkit's strategies, check
against onnxruntime and IREE's default build; the imported torch-dialect IR runs too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tdkit.tools.cli import main

S, D, H = 96, 32, 2


def _exporter_style_attention(path: Path) -> None:
    """MatMul(Q, K^T) -> Div(sqrt(D)) -> Softmax -> MatMul(V), as ONNX exporters write it."""
    def io(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, H, S, D])

    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Div", ["s", "scale"], ["sd"]),
        helper.make_node("Softmax", ["sd"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
    ]
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [float(np.sqrt(D))])
    graph = helper.make_graph(nodes, "block", [io("q"), io("k"), io("v")], [io("o")], [scale])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_run_onnx_model_against_onnxruntime(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "block.onnx"
    _exporter_style_attention(model)
    rng = np.random.default_rng(0)
    for name in "qkv":
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((1, H, S, D)).astype(np.float32))
    argv = ["run", str(model), "--json", "--no-time", "--output-dir", str(tmp_path / "out"),
            "--artifacts", str(tmp_path / "art")]
    for name in "qkv":
        argv += ["--input", f"@{tmp_path / f'{name}.npy'}"]
    rc = main(argv)
    d = json.loads(capsys.readouterr().out)
    assert rc == 0, d
    assert d["ok"] and d["onnxruntime_ok"] and d["onnxruntime_max_abs_err"] < 2e-5
    # raised: IREE's three dispatches (matmul, softmax, matmul) become one flash dispatch
    assert len(d["raised"]) == 1 and d["not_raised"] == []
    assert [x["strategy"] for x in d["dispatches"]] == ["tdkit_attention_flash_b_f32_r0"]
    assert len(d["default_dispatches"]) >= 3
    out = np.load(tmp_path / "out" / "output0.npy")
    q, k, v = (np.load(tmp_path / f"{n}.npy").astype(np.float64) for n in "qkv")
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(D)
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(out, (p / p.sum(-1, keepdims=True)) @ v, atol=2e-5)
    imported = list((tmp_path / "art").glob("block/import/block.mlir"))
    assert imported, "the imported torch-dialect IR was not kept"

    rc = main(["run", str(imported[0]), "--json", "--no-time"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["ok"], d
    assert len(d["dispatches"]) == 1

    # without raising, the softmax dispatch gets the softmax strategy
    rc = main(["run", str(imported[0]), "--json", "--no-time", "--no-raise"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["ok"], d
    assert "raised" not in d and len(d["dispatches"]) >= 3
    assert any(x["strategy"].startswith("tdkit_softmax_cpu") for x in d["dispatches"])


def test_malformed_onnx_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    rc = main(["run", str(bad), "--no-time"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "cannot import bad.onnx" in err
