"""The `flash` attention family: a full transform-dialect strategy for one CPU attention dispatch.

What it lowers (IREE 3.13, llvm-cpu; see `tdkit.matchers.attention`): three `linalg.fill`s, an
`iree_linalg_ext.online_attention` with loops `(b, m, k1, k2, n)` (or `(m, k1, k2, n)` when the
batch is 1) and a normalize `linalg.generic`. The strategy, one small function per step, each
returning the handles it made:

1. `distribute`: annotate the online_attention with a distribution `lowering_config`
   (`[1, WM, 0, 0, 0]`) and run IREE's `tile-and-distribute-to-workgroups-using-forall-op`
   pass, which tiles it to WM query rows per workgroup, fuses the fills and the normalize
   generic, and maps the loop to workgroups;
2. `pad_rows`: pad the workgroup tile to a multiple of WM rows (padding values equal to the
   fills, so the padded fills fold; padded query rows are computed and never stored);
3. `tile_keys`: tile the key dim by KC with `scf.for` (the loop carries the accumulator, the
   running max and the running sum: online softmax); `peel` the last partial key tile, so
   every tile is static and no key needs masking;
4. `decompose`: every online_attention into Q·Kᵀ, max/exp/sum pieces, rescale and P·V;
5. `vectorize` (the leftover dynamic normalize tile with explicit, masked vector sizes);
6. `bufferize` (eliminate empty tensors first) and hoist loop-invariant transfers;
7. `lower_vectors` with IREE's own CPU vector-lowering passes; annotate `no_pipeline`.

Fully masked rows (every visible key masked with `finfo.min`): IREE's decomposition computes
the softmax with `exp2` after multiplying the mask by log2(e), which overflows `finfo.min` to
`-inf` and yields 0/0. The strategy sets `decomposition_config = {use_exp2 = false}` by
default (knob `exp2`), so the masked scores stay finite and such rows become the uniform average
of the visible values, as the float64 reference defines them.

No buffer or vector of size M x K2 exists at any point: per workgroup there is the WM x N
accumulator, two WM-vectors of statistics and a WM x KC score tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from iree.compiler import ir
from iree.compiler.dialects import transform
from iree.compiler.dialects.transform import loop, structured
from iree.compiler.dialects.transform import vector as tvector

from tdkit.matchers.attention import (
    CODEGEN_MASK_BOOL,
    CODEGEN_MASK_FLOAT,
    CODEGEN_MASK_NONE,
    CodegenPredicate,
    build_codegen_matcher,
    predicate_name,
)
from tdkit.matchers.dtypes import DType
from tdkit.strategies import iree_ops
from tdkit.strategies.base import require
from tdkit.strategies.library import LibraryEntry

FAMILY = "flash"
ONLINE_ATTENTION = "iree_linalg_ext.online_attention"
# f32's most negative finite value: the running-max fill IREE uses, and so the max padding.
F32_LOWEST = -3.4028234663852886e38
LAYOUTS = ("rows", "transposed")
LOWERINGS = ("iree", "transform")


@dataclass(frozen=True)
class FlashKnobs:
    """Tile sizes and options of the flash strategy.

    Attributes:
      rows: query rows per workgroup (WM); the accumulator tile is rows x N.
      key_tile: keys per step of the key loop (KC); the score tile is rows x key_tile.
      exp2: use IREE's exp2 decomposition (mask scaled by log2(e)); False uses exp, which keeps
        `finfo.min` masks finite (fully masked rows stay correct).
      layout: "rows" keeps IREE's decomposition as is (scores `rows x key_tile`, vectors along
        the keys); "transposed" interchanges the score ops so that scores are computed and
        reduced as `key_tile x rows` (vectors along the query rows): Q·Kᵀ needs no transpose
        of K and the softmax reductions are element-wise across vectors.
      lowering: "iree" lowers vectors with IREE's CPU vector-lowering passes; "transform"
        with transform-dialect patterns (contractions to outer products, multi-reductions
        `innerparallel`), which keeps the "transposed" layout.
      masked_normalize: vectorize the normalize generic of a partial row tile with masked
        vectors (False leaves it to IREE's scalar loop lowering).
    """

    rows: int = 8
    key_tile: int = 16
    exp2: bool = False
    layout: str = "rows"
    lowering: str = "iree"
    masked_normalize: bool = False

    def check(self, problem: Any = None) -> None:
        """Raise KnobError with one sentence for knob values, or combinations with the
        problem's sizes, that cannot give a correct kernel."""
        for name in ("rows", "key_tile"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    f"{name} must be a positive integer, got {value!r}")
        require(self.rows <= 64, f"rows must be at most 64, got {self.rows}")
        require(self.layout in LAYOUTS,
                f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        require(self.lowering in LOWERINGS,
                f"lowering must be one of {', '.join(LOWERINGS)}, got {self.lowering!r}")
        require(_is_pow2(self.key_tile),
                f"key_tile must be a power of two (it is a vector width), got {self.key_tile}")
        require(self.key_tile <= 64, f"key_tile must be at most 64, got {self.key_tile}")
        require(self.rows * self.key_tile <= 256,
                f"rows x key_tile = {self.rows * self.key_tile} score elements exceeds 256 "
                f"(rows={self.rows}, key_tile={self.key_tile}; e.g. 32 x 16 compiled and then "
                f"crashed at run time)")
        if problem is None:
            return
        require(self.rows <= problem.m,
                f"rows ({self.rows}) exceeds the query length M = {problem.m}")
        require(self.key_tile <= problem.k2,
                f"key_tile ({self.key_tile}) exceeds the key length K2 = {problem.k2}")


def fit(problem: Any, knobs: FlashKnobs) -> FlashKnobs:
    """Shrink the default knobs to a small problem: rows <= M, key_tile a power of two <= K2."""
    key_tile = knobs.key_tile
    while key_tile > problem.k2:
        key_tile //= 2
    return replace(knobs, rows=min(knobs.rows, problem.m), key_tile=key_tile)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# --- Loop positions -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Dims:
    """Positions of the online_attention loops: rank 5 `(b, m, k1, k2, n)` or rank 4."""

    rank: int

    @property
    def m(self) -> int:
        return self.rank - 4

    @property
    def k2(self) -> int:
        return self.rank - 2

    def tiles(self, **sizes: int) -> list[int]:
        """Tile sizes with 1 for the batch dim and `sizes` (by loop name) elsewhere, 0 else."""
        out = [0] * self.rank
        if self.rank == 5:
            out[0] = 1
        for name, size in sizes.items():
            out[getattr(self, name)] = size
        return out


# --- Steps: each takes handles and returns the handles it made ----------------------------------

def _any() -> ir.Type:
    return transform.AnyOpType.get()


def match_one(target: ir.Value, op_name: str) -> ir.Value:
    """The unique `op_name` under `target`; fails (definitely) if there is not exactly one."""
    found = structured.MatchOp.match_op_names(target, [op_name]).result
    (one,) = transform.SplitHandleOp([_any()], found, pass_through_empty_handle=False).results
    return one


def distribute(func: ir.Value, attention: ir.Value, dims: Dims, knobs: FlashKnobs
               ) -> tuple[ir.Value, ir.Value]:
    """Annotate the distribution tile (and the decomposition config), then run IREE's
    tile-and-distribute pass. Returns the new func handle and the tiled online_attention."""
    config = iree_ops.cpu_lowering_config(distribution=dims.tiles(m=knobs.rows))
    iree_ops.annotate(attention, "lowering_config", config)
    iree_ops.annotate(attention, "decomposition_config",
                      iree_ops.decomposition_config(use_exp2=knobs.exp2))
    func = iree_ops.apply_registered_pass(
        func, "iree-codegen-tile-and-distribute-to-workgroups-using-forall-op")
    return func, match_one(func, ONLINE_ATTENTION)


def pad_rows(attention: ir.Value, dims: Dims, knobs: FlashKnobs, padding_values: list[ir.Attribute]
             ) -> ir.Value:
    """Pad the workgroup's query rows to a multiple of `rows` (a no-op when they divide).
    Returns the padded online_attention."""
    padded = structured.PadTilingInterfaceOp(
        _any(), _any(), attention, [], static_padding_sizes=dims.tiles(m=knobs.rows),
        padding_values=padding_values, pad_to_multiple_of=True)
    return padded.padded


def tile_keys(attention: ir.Value, dims: Dims, knobs: FlashKnobs) -> tuple[ir.Value, ir.Value]:
    """Tile the key loop by `key_tile`; returns (tiled online_attention, scf.for)."""
    sizes = [0] * dims.rank
    sizes[dims.k2] = knobs.key_tile
    tiled = structured.TileUsingForOp(attention, sizes=sizes)
    return tiled.tiled_linalg_op, tiled.loops[0]


def peel(for_loop: ir.Value) -> None:
    """Peel the partial last iteration of the key loop so every key tile is static. On a loop
    whose trip count divides evenly peeling fails by design; that failure is suppressed."""
    for_type = transform.OperationType.get("scf.for")
    seq = transform.SequenceOp(transform.FailurePropagationMode.Suppress, [], for_loop)
    with ir.InsertionPoint(seq.body):
        cast = transform.CastOp(for_type, seq.bodyTarget)
        loop.LoopPeelOp(for_type, for_type, cast.result)
        transform.YieldOp()


def decompose(func: ir.Value, pred: CodegenPredicate, knobs: FlashKnobs) -> None:
    """Decompose every online_attention of the func (full key tiles and the peeled remainder,
    each in its own `scf.for`); with the "transposed" layout, interchange the score ops of
    each decomposition (see `interchange_scores`)."""
    found = structured.MatchOp.match_op_names(func, [ONLINE_ATTENTION]).result
    each = transform.ForeachOp([], [found])
    with ir.InsertionPoint(each.body):
        attention = each.body.arguments[0]
        key_loop = transform.GetParentOp(_any(), attention, op_name="scf.for").result
        iree_ops.decompose_aggregate_op(attention)
        if knobs.layout == "transposed":
            interchange_scores(key_loop, pred)
        transform.YieldOp()


def decomposed_generics(pred: CodegenPredicate) -> list[str]:
    """The `linalg.generic`s one online_attention decomposes into, in program order (IREE
    3.13, `OnlineAttentionOp::decomposeOperation`)."""
    ops = ["scale_q", "qk", "qk_elementwise"]
    if pred.masked:
        ops.append("mask")
    ops += ["max", "norm", "norm_sum", "p", "sum"]
    if pred.dtype not in (None, DType.F32):
        ops.append("truncate_p")
    return ops + ["scale_acc", "pv"]


def interchange_scores(key_loop: ir.Value, pred: CodegenPredicate) -> list[ir.Value]:
    """Interchange the loops of the generics that produce or read the score tile so that the
    key dim comes before the query-row dim: vectorization then builds `key_tile x rows`
    vectors. Q·Kᵀ becomes `(b, k2, m, k1)`. Returns the interchanged generics."""
    names = decomposed_generics(pred)
    found = structured.MatchOp.match_op_names(key_loop, ["linalg.generic"]).result
    generics = transform.SplitHandleOp([_any()] * len(names), found,
                                       pass_through_empty_handle=False).results
    batch = [0] if pred.batched else []
    shift = len(batch)
    score_perm = batch + [shift + 1, shift]                  # (b, m, k2) -> (b, k2, m)
    qk_perm = batch + [shift + 2, shift, shift + 1]          # (b, m, k1, k2) -> (b, k2, m, k1)
    perms = {"qk": qk_perm, "qk_elementwise": score_perm, "mask": score_perm,
             "max": score_perm, "p": score_perm, "sum": score_perm, "truncate_p": score_perm}
    out = []
    for name, generic in zip(names, generics, strict=True):
        if name in perms:
            out.append(structured.InterchangeOp(generic, iterator_interchange=perms[name]).result)
    return out


def cleanup(func: ir.Value) -> None:
    """Canonicalize, fold tiling leftovers, then CSE."""
    with ir.InsertionPoint(transform.ApplyPatternsOp(func).patterns):
        structured.ApplyTilingCanonicalizationPatternsOp()
        loop.ApplyForLoopCanonicalizationPatternsOp()
        transform.ApplyCanonicalizationPatternsOp()
    transform.ApplyCommonSubexpressionEliminationOp(func)


def vectorize_normalize(func: ir.Value, dims: Dims, knobs: FlashKnobs, value_dim: int) -> None:
    """Vectorize the normalize generic (the only `linalg.generic` before decomposition) with
    explicit vector sizes `[1, rows, N]`: its tile is dynamic (masked vectors) when M is not
    a multiple of `rows`."""
    generic = match_one(func, "linalg.generic")
    structured.VectorizeOp(generic, [1] * (dims.rank - 4) + [knobs.rows, value_dim])


def vectorize(func: ir.Value, knobs: FlashKnobs) -> ir.Value:
    """Vectorize every static linalg op of the func; returns the func handle.

    With the "transposed" layout the transfer permutation patterns are applied only after
    the vectorizer's own patterns, so the score ops keep the iteration order the
    interchange gave them; then the broadcasts are folded into contractions."""
    transposed = knobs.layout == "transposed"
    vectorized = structured.VectorizeChildrenAndApplyPatternsOp(
        func, disable_transfer_permutation_map_lowering_patterns=transposed).result
    with ir.InsertionPoint(transform.ApplyPatternsOp(vectorized).patterns):
        transform.ApplyCanonicalizationPatternsOp()
    if transposed:
        with ir.InsertionPoint(transform.ApplyPatternsOp(vectorized).patterns):
            tvector.ApplyTransferPermutationPatternsOp()
        with ir.InsertionPoint(transform.ApplyPatternsOp(vectorized).patterns):
            tvector.ApplyVectorReductionToContractPatternsOp()
            transform.ApplyCanonicalizationPatternsOp()
    transform.ApplyCommonSubexpressionEliminationOp(vectorized)
    return vectorized


def bufferize(func: ir.Value) -> ir.Value:
    """Eliminate empty tensors, bufferize, hoist loop-invariant vector transfers; returns the
    bufferized func handle."""
    iree_ops.eliminate_empty_tensors(func)
    with ir.InsertionPoint(transform.ApplyPatternsOp(func).patterns):
        structured.ApplyEraseUnnecessaryInputsPatternsOp()
    memref_func = iree_ops.bufferize(func)
    cleanup(memref_func)
    return structured.HoistRedundantVectorTransfersOp(_any(), memref_func).transformed


VECTOR_LOWERING_PASSES: list[tuple[str, dict[str, Any]]] = [
    ("iree-codegen-drop-vector-unit-dims", {}),
    ("iree-llvmcpu-virtual-vector-lowering", {"split-transfers": "linalg-copy"}),
    ("canonicalize", {}),
    ("iree-codegen-vector-transfer-lowering", {}),
    ("iree-llvmcpu-vector-transpose-lowering", {"lower-vector-transpose-to-avx2": True}),
    ("canonicalize", {}),
    ("iree-llvmcpu-vector-shape-cast-lowering", {}),
]


def lower_vectors(func: ir.Value, knobs: FlashKnobs) -> ir.Value:
    """Lower vector ops to what IREE's LLVM conversion takes. Returns the func handle."""
    if knobs.lowering == "iree":
        return lower_vectors_iree(func)
    lower_vectors_transform(func)
    return func


def lower_vectors_iree(func: ir.Value) -> ir.Value:
    """IREE's CPU vector lowering, pass by pass (as its own pipelines run it). Returns the
    func handle (each pass consumes the previous one)."""
    for name, options in VECTOR_LOWERING_PASSES:
        func = iree_ops.apply_registered_pass(func, name, options)
    return func


def lower_vectors_transform(func: ir.Value) -> None:
    """Lower vector ops with transform-dialect patterns, one family per group (a single
    group with all of them has been seen to never terminate): contractions to outer
    products to FMAs, multi-reductions over outer dims element-wise (`innerparallel`),
    transfers to 1-D loads/stores, transposes, broadcasts and shape casts."""
    parallel = tvector.VectorMultiReductionLowering.InnerParallel
    groups = [
        # 2-D contractions lower to outer products in their accumulator's layout; with a
        # leading unit (batch) dim they would be unrolled along the query rows instead.
        [lambda: tvector.ApplyCastAwayVectorLeadingOneDimPatternsOp(),
         lambda: tvector.ApplyDropUnitDimWithShapeCastPatternsOp()],
        [lambda: tvector.ApplyLowerContractionPatternsOp(
            lowering_strategy=tvector.VectorContractLowering.OuterProduct)],
        [lambda: tvector.ApplyLowerOuterProductPatternsOp(),
         lambda: transform.ApplyCanonicalizationPatternsOp()],
        [lambda: tvector.ApplyReorderMultiReductionPatternsOp(lowering_strategy=parallel),
         lambda: tvector.ApplyMultiReductionFlatteningPatternsOp(lowering_strategy=parallel),
         lambda: tvector.ApplyMultiReductionUnrollingPatternsOp(lowering_strategy=parallel)],
        [lambda: tvector.ApplyCastAwayVectorLeadingOneDimPatternsOp(),
         lambda: tvector.ApplyDropUnitDimWithShapeCastPatternsOp()],
        [lambda: tvector.ApplyTransferPermutationPatternsOp(),
         lambda: tvector.ApplyLowerTransferPatternsOp(max_transfer_rank=1)],
        [lambda: tvector.ApplyTransferToScfPatternsOp(max_transfer_rank=1, full_unroll=True)],
        [lambda: tvector.ApplyLowerTransposePatternsOp(
            lowering_strategy=tvector.VectorTransposeLowering.Shuffle16x16)],
        [lambda: tvector.ApplyLowerBroadcastPatternsOp()],
        [lambda: tvector.ApplyLowerShapeCastPatternsOp()],
        [lambda: transform.ApplyCanonicalizationPatternsOp()],
    ]
    for i, group in enumerate(groups):
        with ir.InsertionPoint(transform.ApplyPatternsOp(func).patterns):
            for build in group:
                build()
        if i == 2:  # hoist what the contraction lowering made loop-invariant (Q transposed)
            iree_ops.apply_licm(func)
    transform.ApplyCommonSubexpressionEliminationOp(func)


def padding_values(pred: CodegenPredicate) -> list[ir.Attribute]:
    """One padding value per online_attention operand, equal to the fill of each init (so
    pad(fill) folds): Q, K, V, scale, [mask], acc = 0, max = f32 lowest, sum = 0."""
    elem = (pred.dtype or DType.F32).mlir_type()
    f32 = ir.F32Type.get()
    zero = ir.FloatAttr.get(elem, 0.0)
    values = [zero, zero, zero, zero]
    if pred.mask == CODEGEN_MASK_FLOAT:
        values.append(zero)
    elif pred.mask == CODEGEN_MASK_BOOL:  # padded rows see every key: no 0/0 in them
        values.append(ir.IntegerAttr.get(ir.IntegerType.get_signless(8), 1))
    values += [ir.FloatAttr.get(f32, 0.0), ir.FloatAttr.get(f32, F32_LOWEST),
               ir.FloatAttr.get(f32, 0.0)]
    return values


def build_codegen_spec(name: str, knobs: FlashKnobs, pred: CodegenPredicate,
                       value_dim: int | None = None) -> transform.NamedSequenceOp:
    """Emit `@name(%variant {transform.consumed})` lowering one attention dispatch that
    satisfies `pred` (rank, mask, dtype) with `knobs`. `value_dim` (N), when known, lets the
    partial normalize tile be vectorized with static masked sizes."""
    knobs.check()
    dims = Dims(pred.rank)
    seq = transform.NamedSequenceOp(name, [_any()], [],
                                    arg_attrs=[{"transform.consumed": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        func = match_one(seq.bodyTarget, "func.func")
        attention = match_one(func, ONLINE_ATTENTION)
        func, attention = distribute(func, attention, dims, knobs)
        attention = pad_rows(attention, dims, knobs, padding_values(pred))
        if value_dim is not None and knobs.masked_normalize:
            vectorize_normalize(func, dims, knobs, value_dim)
        attention, key_loop = tile_keys(attention, dims, knobs)
        peel(key_loop)
        decompose(func, pred, knobs)
        cleanup(func)
        func = vectorize(func, knobs)
        func = bufferize(func)
        func = lower_vectors(func, knobs)
        iree_ops.annotate(func, "translation_info", iree_ops.translation_info_no_pipeline())
        transform.YieldOp()
    return seq


# --- Library entries ---------------------------------------------------------------------------

def spec_name(pred: CodegenPredicate) -> str:
    return f"tdkit_attention_flash_{predicate_name(pred)}"


def library_entry(knobs: FlashKnobs, pred: CodegenPredicate,
                  value_dim: int | None = None) -> LibraryEntry:
    """The flash spec for dispatches satisfying `pred`, and its matcher."""
    knobs.check()
    return LibraryEntry(
        strategy=FAMILY,
        spec_name=spec_name(pred),
        build_matcher=lambda n: build_codegen_matcher(n, pred),
        build_spec=lambda n: build_codegen_spec(n, knobs, pred, value_dim),
    )


def predicates_for(problem: Any) -> list[CodegenPredicate]:
    """The codegen predicate a problem's dispatch satisfies (batched iff the batch size is
    not 1; see `problem_mask`), or every variant for None."""
    from tdkit.matchers.attention import codegen_predicates

    if problem is None:
        return codegen_predicates()
    return [CodegenPredicate(batched=problem.batch_size != 1, mask=problem_mask(problem),
                             dtype=problem.dtype, head_dim=problem.d,
                             value_dim=problem.value_dim)]


def problem_mask(problem: Any) -> str:
    """The codegen mask kind of an Attention problem's dispatch: a user mask (with causal
    folded in) is float; causal alone is a boolean (m, k2) mask."""
    if problem.mask:
        return CODEGEN_MASK_FLOAT
    return CODEGEN_MASK_BOOL if problem.causal else CODEGEN_MASK_NONE


def library_entries(problem: Any, knobs: FlashKnobs) -> list[LibraryEntry]:
    """Entries lowering `problem`'s attention dispatch (or any attention dispatch for None)."""
    return [library_entry(knobs, p, p.value_dim) for p in predicates_for(problem)]


__all__: Sequence[str] = ["FlashKnobs", "build_codegen_spec", "library_entries"]
