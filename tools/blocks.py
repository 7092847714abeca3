"""Exporter-style attention blocks as ONNX models (built with `onnx.helper`, nothing downloaded).

Each block is what an ONNX exporter writes for one attention layer: MatMul(Q, K^T) -> Div or
Mul by a scale -> [additive mask | Where(causal, x, finfo.min)] -> Softmax -> MatMul(V), with
grouped-query K/V expansion (Unsqueeze, Expand, Reshape) when there are fewer KV heads.
`python -m tdkit.tools.blocks DIR` writes the five reference blocks (GPT-2, BERT, ViT, cross
attention, GQA) that `make bench-raise` runs; tests build small ones with `attention_block`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def attention_block(path: Path, *, heads: int = 2, m: int = 48, k2: int = 48, d: int = 16,
                    scale: str = "div", axis: int = -1, mask: str = "",
                    kv_heads: int = 0) -> Path:
    """Write one block: Q [1,H,M,D], K/V [1,KVH,K2,D] -> O [1,H,M,D].

    scale: "div" (by sqrt(D)), "mul" (by 0.3), "q" (Q times 1/sqrt(D)) or "none".
    mask: "" (none), "add" (a padding mask input [1,1,1,K2]), "full" ([1,H,M,K2]), "heads"
    ([1,H,1,K2]), "causal" (a constant lower-triangular bool with Where(keep, x, finfo.min)),
    "where0" (the same filling 0).
    axis: the Softmax axis. kv_heads: fewer K/V heads, expanded to `heads` (GQA)."""
    import onnx
    from onnx import TensorProto, helper

    kvh = kv_heads or heads
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, heads, m, d]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, kvh, k2, d]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, kvh, k2, d])]
    nodes, inits = [], []
    k_name, v_name = "k", "v"
    if kv_heads:
        group = heads // kv_heads
        inits += [helper.make_tensor("ax", TensorProto.INT64, [1], [2]),
                  helper.make_tensor("eshape", TensorProto.INT64, [5],
                                     [1, kv_heads, group, k2, d]),
                  helper.make_tensor("rshape", TensorProto.INT64, [4], [1, heads, k2, d])]
        for n in "kv":
            nodes += [helper.make_node("Unsqueeze", [n, "ax"], [n + "u"]),
                      helper.make_node("Expand", [n + "u", "eshape"], [n + "e"]),
                      helper.make_node("Reshape", [n + "e", "rshape"], [n + "r"])]
        k_name, v_name = "kr", "vr"
    q_name = "q"
    if scale == "q":  # the scale applied to Q before the matmul
        inits.append(helper.make_tensor("cq", TensorProto.FLOAT, [], [float(d) ** -0.5]))
        nodes.append(helper.make_node("Mul", ["q", "cq"], ["qs"]))
        q_name = "qs"
    nodes += [helper.make_node("Transpose", [k_name], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", [q_name, "kt"], ["s"])]
    scores = "s"
    if scale == "div":
        inits.append(helper.make_tensor("c", TensorProto.FLOAT, [], [float(np.sqrt(d))]))
        nodes.append(helper.make_node("Div", ["s", "c"], ["ss"]))
        scores = "ss"
    elif scale == "mul":
        inits.append(helper.make_tensor("c", TensorProto.FLOAT, [], [0.3]))
        nodes.append(helper.make_node("Mul", ["s", "c"], ["ss"]))
        scores = "ss"
    if mask in ("add", "full", "heads"):
        shape = {"add": [1, 1, 1, k2], "full": [1, heads, m, k2],
                 "heads": [1, heads, 1, k2]}[mask]
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, shape))
        nodes.append(helper.make_node("Add", [scores, "mask"], ["sm"]))
        scores = "sm"
    elif mask in ("causal", "where0"):
        keep = np.tril(np.ones((m, k2), dtype=bool))
        low = float(np.finfo(np.float32).min) if mask == "causal" else 0.0
        inits.append(helper.make_tensor("keep", TensorProto.BOOL, [1, 1, m, k2],
                                        keep.reshape(-1).tolist()))
        inits.append(helper.make_tensor("low", TensorProto.FLOAT, [], [low]))
        nodes.append(helper.make_node("Where", ["keep", scores, "low"], ["sm"]))
        scores = "sm"
    elif mask:
        raise ValueError(f"unknown mask {mask!r}")
    nodes += [helper.make_node("Softmax", [scores], ["p"], axis=axis),
              helper.make_node("MatMul", ["p", v_name], ["o"])]
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, heads, m, d])
    graph = helper.make_graph(nodes, "block", inputs, [out], inits)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# name -> (what it stands for, attention_block arguments)
REFERENCE_BLOCKS: dict[str, tuple[str, dict]] = {
    "gpt2": ("GPT-2 block: 12 heads, S = 1024, D = 64, causal Where",
             dict(heads=12, m=1024, k2=1024, d=64, mask="causal")),
    "bert": ("BERT block: 12 heads, S = 512, D = 64, additive padding mask",
             dict(heads=12, m=512, k2=512, d=64, mask="add")),
    "vit": ("ViT block: 12 heads, S = 197, D = 64",
            dict(heads=12, m=197, k2=197, d=64)),
    "cross": ("cross attention: 8 heads, M = 100, K2 = 300, D = 64",
              dict(heads=8, m=100, k2=300, d=64)),
    "gqa": ("GQA block: 8 query heads, 2 KV heads, S = 1024, D = 128",
            dict(heads=8, kv_heads=2, m=1024, k2=1024, d=128)),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "blocks")
    for name, (what, kw) in REFERENCE_BLOCKS.items():
        path = attention_block(out / f"{name}.onnx", **kw)
        print(f"{path}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
