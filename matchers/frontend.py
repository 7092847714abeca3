"""Recognize attention written the way frontends write it, in IREE's preprocessing-stage IR.

ONNX exporters (and torch eager graphs) write attention as MatMul(Q, K^T) -> Div/Mul by a
scale -> Softmax -> MatMul(V). After `iree-import-onnx` and IREE's input conversion, at the
point a preprocessing transform spec runs (`--compile-to=preprocessing` shows it), that is:

    K^T: linalg.transpose; Q, K^T collapsed to rank 3; fill + linalg.batch_matmul; expand_shape
    scale: a linalg.generic dividing (or multiplying) by a rank-0 constant tensor
    softmax: decomposed generics: max (with an unused i64 argmax result), sub, exp, sum, div
    P collapsed, V collapsed; fill + linalg.batch_matmul; expand_shape

`find_attention` walks a function's ops in Python and returns each such chain with what the
raising needs: the ops of the DAG (root = the op producing the attention output), its inputs
(Q, K, V as they enter the chain), the sizes and the scale. Chains that look like attention but
are not (softmax over another axis, extra inputs such as masks this version cannot raise) come
back as near misses with the reason, and are left alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from iree.compiler import ir

from tdkit.matchers.dtypes import DType

# Ops a chain may contain besides its inputs (anything else ends the walk: an input).
_INTERIOR = ("linalg.", "tensor.collapse_shape", "tensor.expand_shape", "tensor.empty",
             "arith.constant")
_ELEMENT = {"f32": DType.F32, "f16": DType.F16, "bf16": DType.BF16}


@dataclass
class AttentionChain:
    """One unfused attention found in a function."""

    root: ir.Operation  # produces the attention output
    ops: list[ir.Operation]  # every op of the chain, in program order
    inputs: list[ir.Value]  # Q (b..., m, d), K (b..., k2, d), V (b..., k2, n)
    batch: tuple[int, ...]
    m: int
    k2: int
    d: int
    n: int
    scale: float
    dtype: DType
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        dims = "x".join(str(s) for s in (*self.batch, self.m, self.k2, self.d))
        return f"attention {dims} n={self.n} scale={self.scale:.6g} {self.dtype}"


@dataclass
class NearMiss:
    """A chain that starts like attention but is not raised, and why."""

    where: str
    reason: str


class _NotAttention(Exception):
    pass


def _op(value: ir.Value) -> ir.Operation | None:
    owner = value.owner
    return owner.operation if isinstance(owner, ir.OpView | ir.Operation) else None


def _name(op: ir.Operation | None) -> str:
    return op.name if op is not None else ""


def _producer(value: ir.Value, *names: str) -> ir.Operation:
    op = _op(value)
    if _name(op) not in names:
        raise _NotAttention(f"expected {' or '.join(names)}, found {_name(op) or 'an argument'}")
    return op


def _through(value: ir.Value, *skip: str) -> ir.Value:
    """Follow `value` back through reshapes/transposes named in `skip`."""
    op = _op(value)
    while _name(op) in skip:
        value = op.operands[0]
        op = _op(value)
    return value


def _body_ops(generic: ir.Operation) -> list[str]:
    return [o.name for o in generic.regions[0].blocks[0].operations]


def _iterators(generic: ir.Operation) -> list[str]:
    return [str(a).strip('"').split("<")[-1].rstrip(">")
            for a in ir.ArrayAttr(generic.attributes["iterator_types"])]


def _shape(value: ir.Value) -> tuple[int, ...]:
    return tuple(ir.RankedTensorType(value.type).shape)


def _elem(value: ir.Value) -> str:
    return str(ir.RankedTensorType(value.type).element_type)


def _generic(value: ir.Value, body: str) -> ir.Operation:
    op = _producer(value, "linalg.generic")
    if body not in _body_ops(op):
        raise _NotAttention(f"expected a generic computing {body}, found one computing "
                            f"{', '.join(n for n in _body_ops(op) if n != 'linalg.yield')}")
    return op


def _constant_scalar(value: ir.Value) -> float:
    op = _producer(value, "arith.constant")
    attr = op.attributes["value"]
    if isinstance(attr, ir.DenseElementsAttr | ir.DenseFPElementsAttr):
        arr = np.array(ir.DenseFPElementsAttr(attr))
        if arr.size != 1:
            raise _NotAttention("the scale is not a single constant")
        return float(arr.reshape(-1)[0])
    return float(ir.FloatAttr(attr).value)


def _chain(pv: ir.Operation) -> AttentionChain:
    """Walk back from the P·V batch_matmul; _NotAttention with the reason if it is not one."""
    if pv.name != "linalg.batch_matmul":
        raise _NotAttention("not a batch_matmul")
    p_value, v_value = pv.operands[0], pv.operands[1]
    # softmax: normalize = exp / sum
    norm = _generic(_through(p_value, "tensor.collapse_shape"), "arith.divf")
    exp = _generic(norm.operands[0], "math.exp")
    total = _generic(_through(norm.operands[1], "tensor.expand_shape"), "arith.addf")
    if _op(_through(total.operands[0])) != exp:
        raise _NotAttention("the softmax sum does not read the exponentials")
    sub = _generic(exp.operands[0], "arith.subf")
    maxr = _generic(_through(sub.operands[1], "tensor.expand_shape"), "arith.maximumf")
    scores = sub.operands[0]
    if maxr.operands[0] != scores:
        raise _NotAttention("the softmax max does not read the same scores")
    its = _iterators(maxr)
    if its[-1] != "reduction" or its.count("reduction") != 1:
        raise _NotAttention("the softmax reduces over another axis than the keys")
    if _iterators(total)[-1] != "reduction":
        raise _NotAttention("the softmax sum reduces over another axis than the keys")
    # scale: scores = qk / c or qk * c (or qk itself: scale 1)
    scaled = _op(scores)
    if _name(scaled) == "linalg.generic":
        body = _body_ops(scaled)
        if "arith.select" in body:
            raise _NotAttention("the scores are masked with a select (causal Where): not "
                                "raised by this version")
        if "arith.addf" in body:
            raise _NotAttention("the scores get an additive mask: not raised by this version")
        if len(scaled.operands) != 3:  # qk, constant, init
            raise _NotAttention("the scores take extra inputs: not raised by this version")
        if "arith.divf" in body:
            scale = 1.0 / _constant_scalar(scaled.operands[1])
        elif "arith.mulf" in body:
            scale = _constant_scalar(scaled.operands[1])
        else:
            raise _NotAttention("the scores are not scaled by a constant")
        qk_value = scaled.operands[0]
    else:
        scale, qk_value = 1.0, scores
    qk = _producer(_through(qk_value, "tensor.expand_shape"), "linalg.batch_matmul")
    q = _through(qk.operands[0], "tensor.collapse_shape")
    kt = _through(qk.operands[1], "tensor.collapse_shape")
    transpose = _producer(kt, "linalg.transpose")
    perm = list(ir.DenseI64ArrayAttr(transpose.attributes["permutation"]))
    rank = len(perm)
    if perm != [*range(rank - 2), rank - 1, rank - 2]:
        raise _NotAttention(f"K is transposed with {perm}, not over its last two dims")
    k = transpose.operands[0]
    v = _through(v_value, "tensor.collapse_shape")
    q_shape, k_shape, v_shape = _shape(q), _shape(k), _shape(v)
    if not (len(q_shape) == len(k_shape) == len(v_shape) >= 3) or \
            q_shape[:-2] != k_shape[:-2] or k_shape[:-2] != v_shape[:-2]:
        raise _NotAttention(f"Q {q_shape}, K {k_shape}, V {v_shape} do not share batch dims "
                            f"(grouped-query head expansion is not raised by this version)")
    if q_shape[-1] != k_shape[-1] or k_shape[-2] != v_shape[-2]:
        raise _NotAttention(f"Q {q_shape}, K {k_shape}, V {v_shape} do not chain")
    elem = _elem(q)
    if elem not in _ELEMENT or _elem(k) != elem or _elem(v) != elem:
        raise _NotAttention(f"element type {elem} is not one tdkit raises")
    root = pv
    users = [u.owner for u in pv.results[0].uses]
    if len(users) == 1 and _name(users[0].operation) == "tensor.expand_shape":
        root = users[0].operation
    if _shape(root.results[0]) != (*q_shape[:-1], v_shape[-1]):
        raise _NotAttention("the output is reshaped differently from Q's batch dims")
    ops = _dag(root, {q, k, v})
    return AttentionChain(root=root, ops=ops, inputs=[q, k, v], batch=tuple(q_shape[:-2]),
                          m=q_shape[-2], k2=k_shape[-2], d=q_shape[-1], n=v_shape[-1],
                          scale=scale, dtype=_ELEMENT[elem])


def _dag(root: ir.Operation, inputs: set[ir.Value]) -> list[ir.Operation]:
    """Every op `root` depends on up to `inputs`, in program order; _NotAttention if an op
    outside the chain is reached or an interior result escapes the chain."""
    seen: dict[ir.Operation, None] = {}
    stack = [root]
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen[op] = None
        for value in op.operands:
            if value in inputs:
                continue
            producer = _op(value)
            if producer is None or not producer.name.startswith(_INTERIOR):
                raise _NotAttention(f"the chain reads {_name(producer) or 'an argument'} "
                                    f"besides Q, K and V")
            stack.append(producer)
    order = {op: i for i, op in enumerate(_block_ops(root))}
    ops = sorted(seen, key=lambda o: order[o])
    inside = set(ops)
    for op in ops:
        if op == root or op.name == "arith.constant":
            continue
        for result in op.results:
            for use in result.uses:
                if use.owner.operation not in inside:
                    raise _NotAttention(f"an intermediate result ({op.name}) is used outside "
                                        f"the attention")
    return ops


def _block_ops(op: ir.Operation) -> list[ir.Operation]:
    block = op.parent.regions[0].blocks[0] if op.parent is not None else None
    if block is None:
        return []
    return [o.operation for o in block.operations]


def find_attention(func: ir.Operation) -> tuple[list[AttentionChain], list[NearMiss]]:
    """Attention chains (and near misses) in one function of preprocessing-stage IR."""
    chains, misses = [], []
    for op in list(func.regions[0].blocks[0].operations):
        op = op.operation
        if op.name != "linalg.batch_matmul":
            continue
        lhs = _op(_through(op.operands[0], "tensor.collapse_shape"))
        if _name(lhs) != "linalg.generic" or "arith.divf" not in _body_ops(lhs):
            continue  # a plain matmul, or the Q·K^T one: not the end of a chain
        try:
            chains.append(_chain(op))
        except _NotAttention as why:
            misses.append(NearMiss(_where(op), str(why)))
    return chains, misses


def _where(op: ir.Operation) -> str:
    shape = "x".join(str(s) for s in _shape(op.results[0]))
    return f"batch_matmul -> {shape} in @{_func_name(op)}"


def _func_name(op: ir.Operation) -> str:
    parent = op.parent
    while parent is not None and "sym_name" not in parent.attributes:
        parent = parent.parent
    return ir.StringAttr(parent.attributes["sym_name"]).value if parent is not None else "?"


def flops(chain: AttentionChain) -> int:
    return 2 * math.prod(chain.batch) * chain.m * chain.k2 * (chain.d + chain.n)
