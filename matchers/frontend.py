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
MASK_NONE, MASK_ADD, MASK_KEEP = "none", "additive", "boolean"
# A Where(keep, scores, low) mask is raised when `low` is at most this (finfo.min or -inf).
MASK_LOW = -1e30


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
    mask: str = MASK_NONE  # MASK_NONE, MASK_ADD (additive, input type) or MASK_KEEP (i1)
    # For each dim of the mask operand: the scores dim it follows (batch..., m, k2 as 0..nb+1)
    # or None where it broadcasts (a size-1 dim read at index 0).
    mask_dims: tuple[int | None, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        dims = "x".join(str(s) for s in (*self.batch, self.m, self.k2, self.d))
        mask = "" if self.mask == MASK_NONE else f" {self.mask} mask"
        return f"attention {dims} n={self.n} scale={self.scale:.6g}{mask} {self.dtype}"


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


def batch_groups(dims: tuple[int, ...], batch: tuple[int, ...]) -> list[list[int]] | None:
    """How `dims` collapse onto `batch` (consecutive groups whose sizes multiply to each
    batch dim), e.g. (1, 2, 4) onto (1, 8): [[0], [1, 2]] (K/V after grouped-query head
    expansion); None if they do not."""
    groups: list[list[int]] = []
    i = 0
    for size in batch:
        group, prod = [], 1
        while i < len(dims) and (prod < size or (dims[i] == 1 and prod == size and
                                                  size == 1 and not group)):
            group.append(i)
            prod *= dims[i]
            i += 1
        if prod != size or not group:
            return None
        groups.append(group)
    while i < len(dims) and dims[i] == 1 and groups:  # trailing unit dims join the last
        groups[-1].append(i)
        i += 1
    return groups if i == len(dims) else None


def _unbatch(value: ir.Value) -> ir.Value:
    """A batch_matmul operand before the collapse of its batch dims into one (if any); only
    that one collapse: an earlier one (e.g. grouped-query head expansion) stays outside."""
    op = _op(value)
    return op.operands[0] if _name(op) == "tensor.collapse_shape" else value


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
    softmax = _op(_through(p_value, "tensor.collapse_shape"))
    if _name(softmax) == "linalg.softmax":  # one op (torch-style IR, tdkit's chain form)
        scores = softmax.operands[0]
        dim = ir.IntegerAttr(softmax.attributes["dimension"]).value
        if dim != len(_shape(scores)) - 1:
            raise _NotAttention("the softmax reduces over another axis than the keys")
        return _chain_from_scores(pv, scores, v_value)
    # softmax: normalize = exp / sum
    norm = _generic(_through(p_value, "tensor.collapse_shape"), "arith.divf")
    exp = _generic(norm.operands[0], "math.exp")
    total = _generic(_through(norm.operands[1], "tensor.expand_shape"), "arith.addf")
    if _op(total.operands[0]) != exp:
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
    return _chain_from_scores(pv, scores, v_value)


def _transposed_b(matmul: ir.Operation) -> bool:
    """A batch_matmul whose indexing maps read B as (batch, n, k): Q·K^T without a
    transpose op. Default maps (no attribute) read B as (batch, k, n)."""
    if "indexing_maps" not in matmul.attributes:
        return False
    maps = [str(ir.AffineMapAttr(m).value)
            for m in ir.ArrayAttr(matmul.attributes["indexing_maps"])]
    return maps == ["(d0, d1, d2, d3) -> (d0, d1, d3)", "(d0, d1, d2, d3) -> (d0, d2, d3)",
                    "(d0, d1, d2, d3) -> (d0, d1, d2)"]


def _captured_constant(generic: ir.Operation) -> float | None:
    """The constant a one-input generic multiplies or divides by when it takes it from outside
    its body (a captured scalar), e.g. `%in * %cst`."""
    for op in generic.regions[0].blocks[0].operations:
        op = op.operation
        if op.name in ("arith.mulf", "arith.divf"):
            outer = [v for v in op.operands if not isinstance(v.owner, ir.Block)]
            if len(outer) == 1 and _name(_op(outer[0])) == "arith.constant":
                c = _constant_scalar(outer[0])
                return c if op.name == "arith.mulf" else 1.0 / c
    return None


def _chain_from_scores(pv: ir.Operation, scores: ir.Value, v_value: ir.Value
                       ) -> AttentionChain:
    """The rest of the walk from the softmax input: mask, scale, Q·K^T, Q, K, V."""
    # mask: scores = scaled + mask, or select(keep, scaled, low)
    mask, mask_kind, mask_dims, scores = _mask(scores)
    # scale: scores = qk / c or qk * c (or qk itself: scale 1)
    scaled = _op(scores)
    if _name(scaled) == "linalg.generic":
        body = _body_ops(scaled)
        captured = _captured_constant(scaled) if len(scaled.operands) == 2 else None
        if captured is None and len(scaled.operands) != 3:  # qk, constant, init
            raise _NotAttention("the scores take extra inputs: not raised by this version")
        if captured is not None:
            # IREE's DAG matcher compares region bodies op by op and cannot match a body that
            # uses a value from outside it: the spec would silently not apply
            raise _NotAttention(f"the scale generic uses the constant {captured:g} from outside "
                                f"its body, which IREE's DAG matcher cannot match")
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
    q = _unbatch(qk.operands[0])
    q, q_scale = _scaled_input(q)
    scale *= q_scale
    kt = _unbatch(qk.operands[1])
    if _transposed_b(qk):  # batch_matmul reading K as (b, k2, d) through its maps
        k = kt
    else:
        transpose = _producer(kt, "linalg.transpose")
        perm = list(ir.DenseI64ArrayAttr(transpose.attributes["permutation"]))
        rank = len(perm)
        if perm != [*range(rank - 2), rank - 1, rank - 2]:
            raise _NotAttention(f"K is transposed with {perm}, not over its last two dims")
        k = transpose.operands[0]
    v = _unbatch(v_value)
    q_shape, k_shape, v_shape = _shape(q), _shape(k), _shape(v)
    if len(q_shape) < 3 or batch_groups(k_shape[:-2], q_shape[:-2]) is None or \
            batch_groups(v_shape[:-2], q_shape[:-2]) is None:
        raise _NotAttention(f"Q {q_shape}, K {k_shape}, V {v_shape} do not share batch dims")
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
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    ops = _dag(root, set(inputs))
    return AttentionChain(root=root, ops=ops, inputs=inputs, batch=tuple(q_shape[:-2]),
                          m=q_shape[-2], k2=k_shape[-2], d=q_shape[-1], n=v_shape[-1],
                          scale=scale, dtype=_ELEMENT[elem], mask=mask_kind,
                          mask_dims=mask_dims)


def _scaled_input(value: ir.Value) -> tuple[ir.Value, float]:
    """(x, c) if `value` is x * c or x / c elementwise with a constant c (the scale applied
    to Q before the matmul, as some exporters write it), else (value, 1)."""
    op = _op(value)
    if _name(op) != "linalg.generic" or len(op.operands) != 3:
        return value, 1.0
    body = [n for n in _body_ops(op) if n != "linalg.yield"]
    rank = len(_shape(value))
    if body not in (["arith.mulf"], ["arith.divf"]) or _map_dims(op, 0) != list(range(rank)) \
            or _name(_op(op.operands[1])) != "arith.constant":
        return value, 1.0
    c = _constant_scalar(op.operands[1])
    return op.operands[0], (c if body == ["arith.mulf"] else 1.0 / c)


def _map_dims(generic: ir.Operation, operand: int) -> list[int | None] | None:
    """The iteration dim each result of operand `operand`'s indexing map reads, None for a
    constant 0; None if the map is anything else."""
    amap = ir.AffineMapAttr(ir.ArrayAttr(generic.attributes["indexing_maps"])[operand]).value
    dims: list[int | None] = []
    for expr in amap.results:
        expr = expr.maybe_downcast()
        if isinstance(expr, ir.AffineDimExpr):
            dims.append(expr.position)
        elif isinstance(expr, ir.AffineConstantExpr) and expr.value == 0:
            dims.append(None)
        else:
            return None
    return dims


def _mask(scores: ir.Value) -> tuple[ir.Value | None, str, tuple[int | None, ...], ir.Value]:
    """(mask value, kind, dims, scores before the mask) if `scores` is masked, else
    (None, MASK_NONE, (), scores)."""
    op = _op(scores)
    if _name(op) != "linalg.generic":
        return None, MASK_NONE, (), scores
    body = [n for n in _body_ops(op) if n != "linalg.yield"]
    rank = len(_shape(scores))
    ident = list(range(rank))
    if body == ["arith.addf"] and len(op.operands) == 3:
        first, second = _map_dims(op, 0), _map_dims(op, 1)
        if first == ident and _is_scores(op.operands[0]):
            which, dims = 1, second
        elif second == ident and _is_scores(op.operands[1]):
            which, dims = 0, first
        else:
            return None, MASK_NONE, (), scores
        mask = op.operands[which]
        _check_mask_dims(mask, dims, rank)
        shape = _shape(mask)
        varying = {d for d, size in zip(dims, shape, strict=True) if d is not None and size > 1}
        if None in dims and varying != {rank - 1}:
            # tdkit's attention strategies take an additive mask shaped like the scores, or
            # one over the keys only (a padding mask); raising another broadcast would leave
            # the attention dispatch to IREE's default
            raise _NotAttention("the additive mask broadcasts over "
                                + ", ".join(_DIM_NAMES(rank)[i] for i in range(rank)
                                            if i not in dims)
                                + " but varies along "
                                + ", ".join(_DIM_NAMES(rank)[i] for i in sorted(varying))
                                + ": not supported by tdkit's attention strategies yet")
        if None in dims:  # a padding mask: varies along the keys only
            dims = [d if d == rank - 1 else None for d in dims]
        return mask, MASK_ADD, tuple(dims), op.operands[1 - which]
    if body == ["arith.select"] and len(op.operands) == 4:
        if _map_dims(op, 1) != ident:
            raise _NotAttention("the select does not keep the scores in place")
        low = _constant_scalar(op.operands[2])
        if low > MASK_LOW:
            raise _NotAttention(f"the select fills masked scores with {low:g}, not -inf or "
                                f"finfo.min: not a mask")
        mask, dims = op.operands[0], _map_dims(op, 0)
        _check_mask_dims(mask, dims, rank)
        return mask, MASK_KEEP, tuple(dims), op.operands[1]
    return None, MASK_NONE, (), scores


def _DIM_NAMES(rank: int) -> list[str]:  # noqa: N802
    """Names of the scores dims: batch dims, then the queries and the keys."""
    return [f"batch dim {i}" for i in range(rank - 2)] + ["the queries", "the keys"]


def _is_scores(value: ir.Value) -> bool:
    """Whether `value` is (a scaling of) a Q·K^T batch_matmul result."""
    op = _op(_through(value, "tensor.expand_shape"))
    if _name(op) == "linalg.generic":
        op = _op(_through(op.operands[0], "tensor.expand_shape"))
    return _name(op) == "linalg.batch_matmul"


def _check_mask_dims(mask: ir.Value, dims: list[int | None] | None, rank: int) -> None:
    shape = _shape(mask)
    if dims is None or len(dims) != len(shape):
        raise _NotAttention("the mask's indexing is not a broadcast of the scores' dims")
    kept = [d for d in dims if d is not None]
    if kept != sorted(kept) or len(set(kept)) != len(kept):
        raise _NotAttention("the mask's dims are permuted against the scores")
    if any(d is None and size != 1 for d, size in zip(dims, shape, strict=True)):
        raise _NotAttention("the mask broadcasts a dim that is not of size 1")
    if rank - 1 not in kept:
        raise _NotAttention("the mask does not vary along the keys: not an attention mask")


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
        for value in [*op.operands, *_captures(op)]:
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


def _captures(op: ir.Operation) -> list[ir.Value]:
    """Values the ops in `op`'s regions use but that are defined outside `op`."""
    found = []
    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                for value in inner.operation.operands:
                    owner = value.owner
                    if isinstance(owner, ir.Block):
                        continue
                    if owner.operation.parent != op:
                        found.append(value)
    return found


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
        if _name(lhs) != "linalg.softmax" and (
                _name(lhs) != "linalg.generic" or "arith.divf" not in _body_ops(lhs)):
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


# --- Decomposed softmax that IREE does not raise itself ----------------------------------------

@dataclass
class SoftmaxChain:
    """max-reduce -> one generic computing exp(x - max) -> sum-reduce -> divide, over one dim.

    IREE 3.13 raises the form with separate sub and exp generics to `linalg.softmax` itself,
    but not this one (it then forms two dispatches and writes the exponentials to memory)."""

    root: ir.Operation  # the normalize generic
    ops: list[ir.Operation]
    inputs: list[ir.Value]  # [x]
    shape: tuple[int, ...]
    dim: int
    dtype: DType

    @property
    def label(self) -> str:
        return f"softmax {'x'.join(map(str, self.shape))} dim={self.dim} {self.dtype}"


def _softmax_chain(norm: ir.Operation, taken: set[ir.Operation]) -> SoftmaxChain:
    if [n for n in _body_ops(norm) if n != "linalg.yield"] != ["arith.divf"] or \
            len(norm.operands) != 3:
        raise _NotAttention("not a normalize generic")
    exp = _generic(norm.operands[0], "math.exp")
    if [n for n in _body_ops(exp) if n != "linalg.yield"] != ["arith.subf", "math.exp"] or \
            len(exp.operands) != 3:
        raise _NotAttention("not a fused exp(x - max) generic")
    total = _generic(_through(norm.operands[1], "tensor.expand_shape"), "arith.addf")
    maxr = _generic(_through(exp.operands[1], "tensor.expand_shape"), "arith.maximumf")
    x = exp.operands[0]
    if maxr.operands[0] != x or _op(total.operands[0]) != exp:
        raise _NotAttention("the reductions do not read the same rows")
    its = _iterators(maxr)
    if its.count("reduction") != 1 or _iterators(total) != its:
        raise _NotAttention("not one reduced dim")
    elem = _elem(x)
    if elem not in _ELEMENT:
        raise _NotAttention(f"element type {elem}")
    ops = _dag(norm, {x})
    if taken & set(ops):
        raise _NotAttention("part of an attention chain")
    return SoftmaxChain(root=norm, ops=ops, inputs=[x], shape=_shape(x),
                        dim=its.index("reduction"), dtype=_ELEMENT[elem])


def find_softmax(func: ir.Operation, taken: set[ir.Operation] = frozenset()
                 ) -> list[SoftmaxChain]:
    """Softmaxes written as max, fused exp(x - max), sum, divide in one function (not those
    inside the attention chains whose ops are `taken`)."""
    found = []
    for op in list(func.regions[0].blocks[0].operations):
        op = op.operation
        if op.name != "linalg.generic" or "arith.divf" not in _body_ops(op):
            continue
        try:
            found.append(_softmax_chain(op, set(taken)))
        except _NotAttention:
            continue
    return found
