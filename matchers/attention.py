"""Transform-dialect matchers that recognize attention, at the two stages IREE shows it.

**Codegen time** (kernel configuration, `transform.foreach_match` in `@__kernel_config`): IREE's
codegen preprocessing has rewritten `iree_linalg_ext.attention` into three `linalg.fill`s, one
`iree_linalg_ext.online_attention` with three results (accumulator, running max, running sum)
and a normalize `linalg.generic` (`acc * (1 / sum)`, plus a `truncf` for f16/bf16 outputs)
whose result is stored. The batch dims are collapsed into one, or dropped when their product is
1, so the online_attention iteration domain is `(b, m, k1, k2, n)` ("batched", rank 5) or
`(m, k1, k2, n)` (rank 4); its operands are `Q, K, V, scale[, mask], acc, max, sum`.
`build_codegen_matcher` anchors on the store of the result (so nothing was fused after the
normalization), walks to the normalize generic and from it to the online_attention, checks the
three fills, and applies `CodegenPredicate` (dtype, rank, mask, head dims, sizes). It yields
the online_attention op.

**Before dispatch formation** (`--iree-preprocessing-transform-spec-filename`):
`build_attention_matcher` matches `iree_linalg_ext.attention` with or without a mask through
`transform.iree.match.attention` (exact element types and indexing maps), optionally with exact
sizes, and yields the op.

Matchers are named sequences `@name(%op {transform.readonly}) -> !transform.any_op` built at
the caller's insertion point (inside a module with `transform.with_named_sequence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from iree.compiler import ir
from iree.compiler.dialects import preprocessing_transform as pre
from iree.compiler.dialects import transform

from tdkit.matchers.dtypes import DType

ONLINE_ATTENTION = "iree_linalg_ext.online_attention"
ATTENTION = "iree_linalg_ext.attention"
STORES = ["iree_codegen.store_to_buffer", "iree_tensor_ext.dispatch.tensor.store"]

# Mask forms of the attention op before dispatch formation.
MASK_NONE = "none"
MASK_FULL = "full"            # mask indexed (batch..., m, k2), e.g. an additive float mask
MASK_BROADCAST = "broadcast"  # mask indexed (m, k2), broadcast over the batch (causal i1)
MASK_FORMS = (MASK_NONE, MASK_FULL, MASK_BROADCAST)

# Mask kinds of the online_attention at codegen time.
CODEGEN_MASK_NONE = "none"
CODEGEN_MASK_FLOAT = "float"
CODEGEN_MASK_BOOL = "bool"
CODEGEN_MASK_KEYS = "keys"
CODEGEN_MASKS = (CODEGEN_MASK_NONE, CODEGEN_MASK_FLOAT, CODEGEN_MASK_BOOL, CODEGEN_MASK_KEYS)


def _any() -> ir.Type:
    return transform.AnyOpType.get()


def _any_value() -> ir.Type:
    return transform.AnyValueType.get()


def _param_i64() -> ir.Type:
    return transform.ParamType.get(ir.IntegerType.get_signless(64))


def _readonly_matcher(name: str) -> transform.NamedSequenceOp:
    return transform.NamedSequenceOp(name, [_any()], [_any()],
                                     arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])


def _map(rank: int, dims: Sequence[int]) -> ir.AffineMap:
    return ir.AffineMap.get(rank, 0, [ir.AffineDimExpr.get(d) for d in dims])


def _dyn_tensor(rank: int, elem: ir.Type) -> ir.Type:
    return ir.RankedTensorType.get([ir.ShapedType.get_dynamic_size()] * rank, elem)


# --- Codegen time: fills + online_attention + normalize generic ---------------------------------

@dataclass(frozen=True)
class CodegenPredicate:
    """What a codegen-time attention matcher requires of the dispatch.

    Attributes:
      batched: the iteration domain has a (collapsed) batch dim: rank 5 `(b, m, k1, k2, n)`;
        False for rank 4 `(m, k1, k2, n)` (IREE drops a batch of size 1).
      mask: CODEGEN_MASK_NONE; CODEGEN_MASK_FLOAT, an additive mask of the input type indexed
        like the scores `((b,) m, k2)`; CODEGEN_MASK_KEYS, an additive mask over the keys
        only `(k2)`, shared by the batch and the queries (a padding mask); or
        CODEGEN_MASK_BOOL, a boolean `(m, k2)` mask shared
        by the batch, stored as i8 after dispatch formation (a causal mask).
      dtype: element type of Q, K and V; the accumulator is always f32. None accepts any
        type, and then only checks that Q has at least the rank `batched` implies (list
        batched predicates first).
      head_dim: exact K1 (the Q/K head dim), or None.
      value_dim: exact N (the V/output head dim), or None.
      max_head_dim: upper bound on K1 and N, or None.
      min_m, min_k2: lower bounds on the query and key sequence lengths, or None.
      m, k2, batch: exact query length, key length and (collapsed) batch size, or None
        (exported tuned strategies match only the shape they were tuned for).
    """

    batched: bool = True
    mask: str = "none"
    dtype: DType | None = None
    head_dim: int | None = None
    value_dim: int | None = None
    max_head_dim: int | None = None
    min_m: int | None = None
    min_k2: int | None = None
    m: int | None = None
    k2: int | None = None
    batch: int | None = None

    def __post_init__(self) -> None:
        if self.mask not in CODEGEN_MASKS:
            raise ValueError(f"unknown mask kind {self.mask!r}; expected one of {CODEGEN_MASKS}")

    @property
    def masked(self) -> bool:
        return self.mask != CODEGEN_MASK_NONE

    @property
    def rank(self) -> int:
        """Loops of the online_attention: (b,) m, k1, k2, n."""
        return 5 if self.batched else 4

    @property
    def first_init(self) -> int:
        """Operand index of the accumulator init (after Q, K, V, scale and the mask)."""
        return 5 if self.masked else 4

    def indexing_maps(self) -> list[ir.AffineMap]:
        """The unmasked online_attention maps IREE builds: Q, K, V, scale, acc, max, sum."""
        r = self.rank
        b = [0] if self.batched else []
        m, k1, k2, n = (len(b) + i for i in range(4))
        return [_map(r, [*b, m, k1]), _map(r, [*b, k2, k1]), _map(r, [*b, k2, n]), _map(r, []),
                _map(r, [*b, m, n]), _map(r, [*b, m]), _map(r, [*b, m])]


def _match_value(op: ir.Value, operand: int, rank: int, elem: ir.Type | None,
                 bounds: Sequence[tuple[int, int | None, int | None]] = ()) -> None:
    """Operand `operand` of `op` is a rank-`rank` tensor of `elem` (without `elem`: of rank at
    least `rank`) whose dims satisfy `bounds` = [(dim, lower or None, upper or None)]."""
    value = transform.GetOperandOp(_any_value(), op, [operand]).result
    if elem is not None:
        pre.MatchCastCompatibleTypesOp(value, _dyn_tensor(rank, elem))
    else:
        pre.MatchDimBoundsOp(value, rank - 1)
    for dim, low, high in bounds:
        if low is not None or high is not None:
            pre.MatchDimBoundsOp(value, dim, lower_bound=low, upper_bound=high)


def _match_online_attention_types(op: ir.Value, pred: CodegenPredicate) -> None:
    """`transform.iree.match.online_attention` (unmasked only): exact element types and maps;
    K1/N sizes through `transform.iree.match.dims_equal` on the dims it returns."""
    assert pred.dtype is not None
    elem = pred.dtype.mlir_type()
    f32 = ir.F32Type.get()
    maps = ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in pred.indexing_maps()])
    p = _param_i64()
    dims = pre.MatchOnlineAttentionOp(p, p, p, p, p, op, elem, elem, elem, elem, f32, f32, f32,
                                      maps)
    if pred.value_dim is not None:
        pre.MatchDimsEqualOp(dims.n_dims, [pred.value_dim])
    if pred.head_dim is not None:
        pre.MatchDimsEqualOp(dims.k1_dims, [pred.head_dim])


def build_codegen_matcher(name: str, pred: CodegenPredicate = CodegenPredicate()
                          ) -> transform.NamedSequenceOp:
    """Emit `@name(%op {transform.readonly}) -> !transform.any_op` matching the store of an
    attention dispatch's result (see the module docstring) that satisfies `pred`; yields the
    `iree_linalg_ext.online_attention` op."""
    seq = _readonly_matcher(name)
    with ir.InsertionPoint(seq.body):
        store = seq.bodyTarget
        transform.MatchOperationNameOp(store, STORES)
        norm = transform.GetProducerOfOperand(_any(), store, 0).result
        transform.MatchOperationNameOp(norm, ["linalg.generic"])
        # The normalize generic reads (sum, acc): both are results of the online_attention.
        oa = transform.GetProducerOfOperand(_any(), norm, 1).result
        transform.MatchOperationNameOp(oa, [ONLINE_ATTENTION])
        oa_sum = transform.GetProducerOfOperand(_any(), norm, 0).result
        transform.MatchOperationNameOp(oa_sum, [ONLINE_ATTENTION])
        for i in range(3):  # acc, max and sum start from fills
            init = transform.GetProducerOfOperand(_any(), oa, pred.first_init + i).result
            transform.MatchOperationNameOp(init, ["linalg.fill"])
        elem = pred.dtype.mlir_type() if pred.dtype is not None else None
        qk_rank = pred.rank - 2  # Q is (b,) m x k1; K is (b,) k2 x k1; V is (b,) k2 x n
        first = 1 if pred.batched else 0
        hd = pred.max_head_dim
        exact_batch = [(0, pred.batch, pred.batch)] if pred.batched and pred.batch else []
        _match_value(oa, 0, qk_rank, elem,
                     [(first, pred.min_m, None), (first + 1, pred.head_dim, pred.head_dim),
                      (first, pred.m, pred.m), *exact_batch]
                     + ([(first + 1, None, hd)] if hd else []))
        _match_value(oa, 1, qk_rank, elem, [(first, pred.min_k2, None), (first, pred.k2, pred.k2)])
        _match_value(oa, 2, qk_rank, elem,
                     [(first + 1, pred.value_dim, pred.value_dim)]
                     + ([(first + 1, None, hd)] if hd else []))
        if pred.mask == CODEGEN_MASK_FLOAT:
            _match_value(oa, 4, qk_rank, elem)
        elif pred.mask == CODEGEN_MASK_KEYS:
            _match_value(oa, 4, 1, elem)
        elif pred.mask == CODEGEN_MASK_BOOL:
            _match_value(oa, 4, 2, ir.IntegerType.get_signless(8))
        if not pred.masked and pred.dtype is not None:
            _match_online_attention_types(oa, pred)
        transform.YieldOp([oa])
    return seq


def codegen_predicates(dtypes: Sequence[DType] = (DType.F32, DType.F16, DType.BF16),
                       **common: int | None) -> list[CodegenPredicate]:
    """One predicate per (mask kind, batched, dtype): the variants a family covers (a masked
    op never satisfies an unmasked predicate, and vice versa; batched ones come first)."""
    return [CodegenPredicate(batched=batched, mask=mask, dtype=dt, **common)
            for mask in CODEGEN_MASKS for batched in (True, False) for dt in dtypes]


def predicate_name(pred: CodegenPredicate) -> str:
    """A short suffix naming a predicate: e.g. `b_floatmask_f16`, `nb_f32`."""
    parts = ["b" if pred.batched else "nb"]
    if pred.masked:
        parts.append(f"{pred.mask}mask")
    parts.append(str(pred.dtype) if pred.dtype is not None else "any")
    return "_".join(parts)


# --- Before dispatch formation: iree_linalg_ext.attention --------------------------------------

def attention_indexing_maps(batch_rank: int, mask: str = MASK_NONE) -> list[ir.AffineMap]:
    """Maps of an attention op over `(batch..., m, k1, k2, n)` with Q `(b, m, k1)`,
    K `(b, k2, k1)`, V `(b, k2, n)`, scale `()`, the mask (per `mask`) and O `(b, m, n)`."""
    if mask not in MASK_FORMS:
        raise ValueError(f"unknown mask form {mask!r}; expected one of {MASK_FORMS}")
    if batch_rank < 0:
        raise ValueError(f"batch_rank must be >= 0, got {batch_rank}")
    r = batch_rank + 4
    b = list(range(batch_rank))
    m, k1, k2, n = (batch_rank + i for i in range(4))
    maps = [_map(r, [*b, m, k1]), _map(r, [*b, k2, k1]), _map(r, [*b, k2, n]), _map(r, [])]
    if mask == MASK_FULL:
        maps.append(_map(r, [*b, m, k2]))
    elif mask == MASK_BROADCAST:
        maps.append(_map(r, [m, k2]))
    maps.append(_map(r, [*b, m, n]))
    return maps


def build_attention_matcher(name: str, *, batch_rank: int, dtype: DType,
                            mask: str = MASK_NONE,
                            sizes: dict[str, Sequence[int]] | None = None
                            ) -> transform.NamedSequenceOp:
    """Emit `@name(%op {transform.readonly}) -> !transform.any_op` matching an
    `iree_linalg_ext.attention` with `batch_rank` batch dims, Q/K/V/O of `dtype` and the mask
    form `mask` (MASK_NONE, MASK_FULL or MASK_BROADCAST); `sizes` optionally pins dims exactly,
    keyed "batch", "m", "n", "k1", "k2" (IREE's names: k1 = head dim, k2 = key length,
    n = value dim). Yields the attention op."""
    sizes = dict(sizes or {})
    unknown = set(sizes) - {"batch", "m", "n", "k1", "k2"}
    if unknown:
        raise ValueError(f"unknown size keys {sorted(unknown)}")
    elem = dtype.mlir_type()
    maps = attention_indexing_maps(batch_rank, mask)
    seq = _readonly_matcher(name)
    with ir.InsertionPoint(seq.body):
        op = seq.bodyTarget
        transform.MatchOperationNameOp(op, [ATTENTION])
        dims = pre.MatchAttentionOp(op, elem, elem, elem, elem, maps)
        params = dict(zip(("batch", "m", "n", "k1", "k2"), dims.results, strict=True))
        for key, values in sizes.items():
            pre.MatchDimsEqualOp(params[key], list(values))
        transform.YieldOp([op])
    return seq
