"""The CPU softmax codegen strategy family: knobs, and the transform script that lowers one
softmax dispatch from tensors to vectors on buffers (ending in `no_pipeline`).

What the strategy sees (IREE 3.13, llvm-cpu): a dispatch whose root is an all-parallel
`linalg.generic` writing the result, fed by `k` row reductions over the softmax dimension,
each initialized by a `linalg.fill`:

* `k = 2` ("fused" form, from `linalg.softmax` or from generics IREE raises to it): fill,
  max-reduce, fill, exp-sum-reduce, and the root `exp(x - max) / sum`;
* `k = 1` ("split" form, from a frontend's generics IREE does not raise, e.g. `sub+exp` in
  one generic): two dispatches, `max-reduce -> exp(x - max)` and `sum-reduce -> e / sum`.

The strategy: tile the root over rows into workgroups and fuse the fills and reductions into
that loop; tile again to one row (or one column strip when the softmax dimension is not the
innermost one) and fuse again; tile the reductions (partial vector accumulators when the
reduced dim is the contiguous one) and the root along the row; peel the row loops so every
tile has a static size; vectorize; bufferize; map the forall to workgroups; lower vectors in
separate pattern groups. Every step that looks for ops asserts how many it found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from iree.compiler import ir
from iree.compiler.dialects import transform
from iree.compiler.dialects.transform import structured
from iree.compiler.dialects.transform import vector as tvector

from tdkit.strategies import iree_ops, steps
from tdkit.strategies.base import KnobError, require
from tdkit.strategies.library import LibraryEntry

FUSED = "fused"
SPLIT = "split"
FORMS = (FUSED, SPLIT)
_REDUCTIONS = {FUSED: 2, SPLIT: 1}
# Longest row `whole_row_limit` may ask to vectorize whole: at 4096 f32 (256 registers' worth)
# the whole-row kernel ran 0.73x and 0.79x the tiled one on 4096x4096 (two runs), and compile
# time grows with it.
MAX_WHOLE_ROW = 4096
# Rows vectorized whole must be a multiple of this many elements (one AVX-512 register of
# f32): LLVM splits a row of 1000 or 129 into registers plus a ragged tail, and those ran
# 0.92-0.95x the tiled kernel (333x1000, 2x3x17x129), while multiples of 16 ran 1.05-1.67x
# (512x1024 1.27-1.53x, 512x2048 1.17x, 128x4096 1.67x, 4096x128 1.05x; side by side).
WHOLE_ROW_MULTIPLE = 16


@dataclass(frozen=True)
class SoftmaxCpuKnobs:
    """Tile sizes of the CPU softmax strategy.

    Attributes:
      rows_per_workgroup: rows (iterations of the innermost parallel dim before the reduced
        one) each workgroup owns, when the softmax dim is the innermost dim.
      columns_per_workgroup: contiguous columns each workgroup owns when the softmax dim is
        not the innermost dim; a multiple of `column_width`.
      reduction_tile: elements of a row each reduction step consumes when the softmax dim is
        the innermost one; the width of the partial accumulator (several vector registers
        give independent dependency chains).
      vector_width: elements per vector along the row for the normalization when the softmax
        dim is the innermost one; a power of two.
      column_width: columns (elements of the innermost dim) each vector step covers when the
        softmax dim is not the innermost one; a power of two. Every step reads this many
        contiguous elements from `outer_reduction_tile` rows far apart in memory, so wider
        strips waste fewer cache lines and TLB entries.
      outer_reduction_tile: rows of the reduced dim each step consumes when the softmax dim
        is not the innermost one.
      rank1_chunk: elements each workgroup normalizes for a rank-1 softmax (every workgroup
        recomputes the two reductions over the whole vector).
      whole_row_limit: rows (softmax over the innermost dim, rank >= 2) of at most this many
        elements, and a multiple of 16, are vectorized as one vector each, untiled: the exp
        that the sum and the normalization both compute is then one value, computed once
        per element instead of twice (the row spills to the stack, which stays in L1);
        `reduction_tile` and `vector_width` apply to the other rows only. 0 tiles every row.
    """

    rows_per_workgroup: int = 2
    columns_per_workgroup: int = 32
    reduction_tile: int = 64
    vector_width: int = 16
    column_width: int = 32
    outer_reduction_tile: int = 8
    rank1_chunk: int = 4096
    whole_row_limit: int = 2048

    def check(self, shape: tuple[int, ...] | None = None, dim: int | None = None) -> None:
        """Raise KnobError with one sentence for values that cannot give a correct, vectorized
        kernel; with a `shape` (and the softmax `dim`, default the last), also for row tiles
        larger than the row when the softmax dim is the innermost one."""
        for name in ("rows_per_workgroup", "columns_per_workgroup", "reduction_tile",
                     "vector_width", "column_width", "outer_reduction_tile", "rank1_chunk"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    f"{name} must be a positive integer, got {value!r}")
        require(_is_pow2(self.vector_width),
                f"vector_width must be a power of two, got {self.vector_width}")
        require(self.vector_width <= 64,
                f"vector_width must be at most 64 elements, got {self.vector_width}")
        require(_is_pow2(self.column_width) and self.column_width <= 64,
                f"column_width must be a power of two of at most 64, got {self.column_width}")
        require(self.reduction_tile % self.vector_width == 0,
                f"reduction_tile ({self.reduction_tile}) must be a multiple of vector_width "
                f"({self.vector_width})")
        require(self.reduction_tile <= 256,
                f"reduction_tile must be at most 256 elements, got {self.reduction_tile}")
        require(self.columns_per_workgroup % self.column_width == 0,
                f"columns_per_workgroup ({self.columns_per_workgroup}) must be a multiple of "
                f"column_width ({self.column_width})")
        require(isinstance(self.whole_row_limit, int) and not isinstance(self.whole_row_limit, bool)
                and 0 <= self.whole_row_limit <= MAX_WHOLE_ROW,
                f"whole_row_limit must be an integer from 0 to {MAX_WHOLE_ROW}, got "
                f"{self.whole_row_limit!r}")
        require(self.outer_reduction_tile <= 16,
                f"outer_reduction_tile must be at most 16, got {self.outer_reduction_tile}")
        if shape is None:
            return
        rank = len(shape)
        require(1 <= rank <= 4, f"softmax strategy supports rank 1 to 4, got rank {rank}")
        require(all(isinstance(s, int) and s > 0 for s in shape),
                f"shape must have positive static sizes, got {shape}")
        d = (rank - 1 if dim is None else dim) % rank
        if d == rank - 1:
            # A larger tile leaves only a remainder tile (vector_width <= reduction_tile).
            require(self.reduction_tile <= shape[d],
                    f"reduction_tile ({self.reduction_tile}) exceeds the softmax dim "
                    f"({shape[d]}) of shape {shape}")
        # Workgroup tiles and outer_reduction_tile larger than their dim are allowed: they
        # mean "the whole dim" (a static tile, or a masked one).


def space(shape: tuple[int, ...], dim: int) -> dict[str, tuple[int, ...]]:
    """The knob ranges `tdkit tune` searches for a softmax of `shape` over `dim`: only the
    knobs that shape's tiling reads (the others would only produce identical binaries)."""
    rank = len(shape)
    dim %= rank
    row = {"reduction_tile": (16, 32, 64, 128, 256), "vector_width": (4, 8, 16, 32, 64)}
    if rank == 1:
        return {"rank1_chunk": (1024, 2048, 4096, 8192, 16384), **row}
    if dim == rank - 1:
        longest = SoftmaxCpuKnobs(whole_row_limit=MAX_WHOLE_ROW)
        whole = {"whole_row_limit": (0, MAX_WHOLE_ROW)} if whole_row(longest, shape, dim) else {}
        return {"rows_per_workgroup": (1, 2, 4, 8, 16, 32), **row, **whole}
    return {"columns_per_workgroup": (32, 64, 128, 256), "column_width": (8, 16, 32, 64),
            "outer_reduction_tile": (1, 2, 4, 8, 16)}


def whole_row_form(rank: int, dim: int) -> bool:
    """Whether a softmax of `rank` over `dim` can have its rows vectorized whole: rank >= 2,
    over the innermost dim."""
    return rank >= 2 and dim % rank == rank - 1


def whole_row(knobs: SoftmaxCpuKnobs, shape: tuple[int, ...], dim: int) -> bool:
    """Whether the strategy vectorizes each row of a softmax of `shape` over `dim` whole (see
    `SoftmaxCpuKnobs.whole_row_limit`)."""
    return (whole_row_form(len(shape), dim) and shape[-1] <= knobs.whole_row_limit
            and shape[-1] % WHOLE_ROW_MULTIPLE == 0)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# --- Tile sizes per (rank, dim) --------------------------------------------------------------

@dataclass(frozen=True)
class Tiling:
    """The tile sizes the strategy uses for one (rank, dim, form), derived from the knobs.

    `workgroup`/`row` tile the root (all-parallel, rank `rank`); `reduction` tiles each
    reduction op along its reduced loop (`reduced_loop`: `dim`, except in the SPLIT form
    where IREE moves it last); `normalize` tiles the root within a row.
    `inner_reduction` says whether the reduced dim is the innermost (contiguous) one."""

    rank: int
    dim: int
    reduced_loop: int
    workgroup: tuple[int, ...]
    row: tuple[int, ...]
    reduction: tuple[int, ...]
    normalize: tuple[int, ...]

    @property
    def inner_reduction(self) -> bool:
        return self.dim == self.rank - 1

    @property
    def masked_generic(self) -> tuple[int, ...]:
        """Vector sizes for the root when a tile may be partial: its innermost tile."""
        if self.inner_reduction:
            return tuple(1 if i < self.rank - 1 else self.normalize[-1]
                         for i in range(self.rank))
        return tuple(self.normalize[i] if i == self.dim else self.row[i]
                     for i in range(self.rank))

    @property
    def masked_fill(self) -> tuple[int, ...]:
        """Vector sizes for a fill (a reduction's init): the root tile without `dim`."""
        return tuple(s for i, s in enumerate(self.masked_generic) if i != self.dim)

    @property
    def masked_partial(self) -> tuple[int, ...]:
        """Vector sizes for a partial accumulator (and the op combining it): the reduction's
        result dims, then the reduced dim's tile (how tile_reduction_using_for lays it out)."""
        return (*self.masked_fill, self.reduction[self.reduced_loop])

    @property
    def masked_reduction(self) -> tuple[int, ...]:
        """Vector sizes for a reduction's in-loop partial op, in its own loop order."""
        if self.reduced_loop == self.dim:
            return tuple(self.reduction[i] if i == self.dim else s
                         for i, s in enumerate(self.masked_generic))
        return self.masked_partial


def split_form_shape(rank: int, dim: int) -> tuple[int, int]:
    """The (rank, dim) of the SPLIT-form dispatches of a softmax of `rank` over `dim`: IREE
    collapses the dims before `dim` into one and the dims after it into one."""
    return (int(dim > 0) + 1 + int(dim < rank - 1), int(dim > 0))


def tiling(knobs: SoftmaxCpuKnobs, rank: int, dim: int, form: str = FUSED) -> Tiling:
    """Tile sizes for the dispatch of a softmax of rank `rank` over `dim` in `form` (rank and
    dim as the dispatch shows them)."""
    if not 1 <= rank <= 4:
        raise KnobError(f"softmax strategy supports rank 1 to 4, got rank {rank}")
    if not 0 <= dim < rank:
        raise KnobError(f"softmax dim {dim} is out of range for rank {rank}")
    if form not in FORMS:
        raise KnobError(f"unknown softmax dispatch form {form!r}; expected one of {FORMS}")
    zeros = [0] * rank
    reduced_loop = dim if form == FUSED else rank - 1
    if rank == 1:
        return Tiling(rank, dim, reduced_loop, (knobs.rank1_chunk,), (),
                      (knobs.reduction_tile,), (knobs.vector_width,))
    if dim == rank - 1:
        workgroup = [1] * (rank - 2) + [knobs.rows_per_workgroup, 0]
        row = [1] * (rank - 1) + [0]
        reduction = zeros[:-1] + [knobs.reduction_tile]
        normalize = zeros[:-1] + [knobs.vector_width]
    else:
        workgroup = [0 if i == dim else 1 for i in range(rank - 1)]
        workgroup.append(knobs.columns_per_workgroup)
        row = [0 if i == dim else 1 for i in range(rank - 1)] + [knobs.column_width]
        normalize = list(zeros)
        normalize[dim] = knobs.outer_reduction_tile
        reduction = list(zeros)
        reduction[reduced_loop] = knobs.outer_reduction_tile
    return Tiling(rank, dim, reduced_loop, tuple(workgroup), tuple(row), tuple(reduction),
                  tuple(normalize))


def _block_mapping(tile_sizes: Sequence[int]) -> ir.ArrayAttr:
    """`[#gpu.block<z>, #gpu.block<y>, #gpu.block<x>]` for the tiled dims, innermost = x."""
    count = sum(1 for t in tile_sizes if t)
    names = ["x", "y", "z"][:count][::-1]
    return ir.ArrayAttr.get([ir.Attribute.parse(f"#gpu.block<{n}>") for n in names])


# --- Steps: each takes handles and returns the handles it made --------------------------------

def _any() -> ir.Type:
    return transform.AnyOpType.get()


@dataclass(frozen=True)
class DispatchHandles:
    """Handles to the ops of one softmax dispatch, in program order."""

    func: ir.Value
    fills: list[ir.Value]
    reductions: list[ir.Value]
    root: ir.Value


def match_dispatch(variant: ir.Value, reductions: int) -> DispatchHandles:
    """The func, its `reductions` fills and reductions, and the root generic (the last one)."""
    (func,) = steps.match_exactly(variant, "func.func", 1)
    fills = steps.match_exactly(func, "linalg.fill", reductions)
    generics = steps.match_exactly(func, "linalg.generic", reductions + 1)
    return DispatchHandles(func, fills, generics[:-1], generics[-1])


def _interleave(fills: Sequence[ir.Value], reductions: Sequence[ir.Value]) -> list[ir.Value]:
    out: list[ir.Value] = []
    for f, r in zip(fills, reductions, strict=True):
        out += [f, r]
    return out


def tile_to_workgroups(h: DispatchHandles, t: Tiling) -> tuple[DispatchHandles, ir.Value]:
    """Tile the root into a workgroup-mapped forall, fill the workgroup count from it, and fuse
    every fill and reduction into it. Returns the in-forall handles and the forall."""
    tiled = structured.TileUsingForallOp(h.root, tile_sizes=list(t.workgroup),
                                         mapping=_block_mapping(t.workgroup))
    iree_ops.populate_workgroup_count_region_using_num_threads_slice(tiled.forall_op)
    fused, forall = steps.fuse_producers(_interleave(h.fills, h.reductions), tiled.forall_op)
    return DispatchHandles(h.func, fused[0::2], fused[1::2], tiled.tiled_op), forall


def tile_rows(h: DispatchHandles, t: Tiling) -> tuple[DispatchHandles, list[ir.Value]]:
    """Tile the root to one row (or one column strip) with scf.for loops and fuse the fills
    and reductions into the innermost loop. Returns the in-loop handles and the loops."""
    if not any(t.row):
        return h, []
    tiled = structured.TileUsingForOp(h.root, sizes=list(t.row))
    loops = list(tiled.loops)
    fused, loops[-1] = steps.fuse_producers(_interleave(h.fills, h.reductions), loops[-1])
    return DispatchHandles(h.func, fused[0::2], fused[1::2], tiled.tiled_linalg_op), loops


@dataclass(frozen=True)
class ReductionTiles:
    """What `tile_reductions` made, one entry per reduction: the loop, the fill of the
    partial accumulator, the partial (in-loop) op, and the op combining the partials."""

    loops: list[ir.Value]
    partial_fills: list[ir.Value]
    partials: list[ir.Value]
    combines: list[ir.Value]


def tile_reductions(h: DispatchHandles, t: Tiling, *, partial: bool = True) -> ReductionTiles:
    """Tile each reduction along its reduced loop.

    `partial=True`: `tile_reduction_using_for`, a loop whose body updates a partial
    accumulator elementwise (innermost dim: `reduction_tile` lanes of a row; otherwise
    `outer_reduction_tile` rows of column vectors: independent dependency chains, and
    shorter f16 summation chains), combined once after the loop. It needs a reduction body
    with a single combiner op.
    `partial=False`: plain `tile_using_for`; each step reduces its tile into the running
    value. Works for any body (IREE widens an f16 `maximumf` to f32 with extf/truncf in the
    split form, which `tile_reduction_using_for` cannot analyze)."""
    out = ReductionTiles([], [], [], [])
    for red in h.reductions:
        if partial:
            op = structured.TileReductionUsingForOp([_any()], _any(), _any(), _any(), red,
                                                    tile_sizes=list(t.reduction))
            out.loops.append(op.for_op)
            out.partial_fills.append(op.fill_op[0])
            out.partials.append(op.split_op)
            out.combines.append(op.combining_op)
        else:
            tiled = structured.TileUsingForOp(red, sizes=list(t.reduction))
            out.loops.append(tiled.loops[0])
            out.partials.append(tiled.tiled_linalg_op)
    return out


def tile_normalize(h: DispatchHandles, t: Tiling) -> tuple[ir.Value, ir.Value]:
    """Tile the root (the normalization) along the row; returns the tiled op and the loop."""
    tiled = structured.TileUsingForOp(h.root, sizes=list(t.normalize))
    return tiled.tiled_linalg_op, tiled.loops[0]


def peel(loops: Sequence[ir.Value]) -> None:
    """Peel the last, partial iteration of each loop so every tile has a static size. A
    leftover dynamic tile is caught later by `vectorize`, which asserts that no linalg op is
    left."""
    for lp in loops:
        steps.peel_last_iteration(lp)


def vectorize(func: ir.Value, t: Tiling,
              masked: Sequence[tuple[ir.Value, Sequence[int]]] = (),
              optional: Sequence[tuple[ir.Value, Sequence[int]]] = (),
              scalar_ok: int = 0, children: bool = True) -> ir.Value:
    """Vectorize the func. `masked` lists ops to vectorize first with the given vector sizes
    (masks only where a size is dynamic); `optional` likewise, but an op there may fail to
    vectorize and stay scalar. Then ops with static shapes (all of them once the loops are
    peeled, when the tiled dims are static) go through
    `vectorize_children_and_apply_patterns`; generics and fills left with a dynamic size
    (the column remainder of a workgroup when the softmax dim is not the innermost one, or
    the rank-1 chunk remainder) get masked vectors of their tile size. Fails if more than
    `scalar_ok` linalg ops are left. `children=False` skips the
    `vectorize_children_and_apply_patterns` step (when `masked` already lists every op): it
    also vectorizes a static `tensor.insert_slice` of a whole column strip into one huge
    read/write copy."""
    for op, sizes in masked:
        _vectorize_op(op, sizes)
    for op, sizes in optional:
        _maybe(op, lambda h, sizes=sizes: _vectorize_op(h, sizes))
    if children:
        vectorized = structured.VectorizeChildrenAndApplyPatternsOp(func).result
    else:
        vectorized = func
    generics = structured.MatchOp.match_op_names(vectorized, ["linalg.generic"]).result
    if scalar_ok:
        _maybe(generics, lambda h: _vectorize_op(h, t.masked_generic))
    else:
        _vectorize_op(generics, t.masked_generic)
    fills = structured.MatchOp.match_op_names(vectorized, ["linalg.fill"]).result
    _vectorize_op(fills, t.masked_fill)
    with ir.InsertionPoint(transform.ApplyPatternsOp(vectorized).patterns):
        # A transfer inside a vector.mask region cannot bufferize; make the mask an operand.
        tvector.ApplyLowerMaskedTransfersPatternsOp()
        transform.ApplyCanonicalizationPatternsOp()
    leftover = structured.MatchOp(_any(), vectorized,
                                  interface=structured.MatchInterfaceEnum.LinalgOp).result
    steps.expect_count(leftover, scalar_ok, transform.MatchCmpIPredicate.le)
    return vectorized


def _vectorize_op(op: ir.Value, sizes: Sequence[int]) -> None:
    structured.VectorizeOp(steps.unique(op), vector_sizes=list(sizes))


def _maybe(target: ir.Value, step) -> None:
    """Run `step(handle)` on `target` inside `transform.sequence failures(suppress)`."""
    seq = transform.SequenceOp(transform.FailurePropagationMode.Suppress, [], target)
    with ir.InsertionPoint(seq.body):
        step(seq.bodyTarget)
        transform.YieldOp()


def hoist_accumulators(func: ir.Value) -> ir.Value:
    """Keep reduction accumulators in registers: hoist the loop-invariant read/write pairs
    of each accumulator out of its loop (vector iter_args) and forward writes to reads, on
    tensors, with IREE's own pass. Returns the new func handle."""
    return transform.ApplyRegisteredPassOp(
        _any(), func, "iree-codegen-optimize-tensor-insert-extract-slices").result


def bufferize(func: ir.Value) -> ir.Value:
    """Eliminate empty tensors, bufferize, and map the workgroup forall to workgroup ids.
    Returns the bufferized func."""
    iree_ops.eliminate_empty_tensors(func)
    with ir.InsertionPoint(transform.ApplyPatternsOp(func).patterns):
        structured.ApplyEraseUnnecessaryInputsPatternsOp()
    memref_func = iree_ops.bufferize(func)
    steps.cleanup(memref_func)  # folds loop-carried buffers that pad-dynamic-alloc cannot retype
    # Dynamically sized stack buffers (accumulators of a partial column strip) get their
    # static upper bound; LLVMCPU refuses dynamic allocas.
    memref_func = transform.ApplyRegisteredPassOp(
        _any(), memref_func, "iree-codegen-pad-dynamic-alloc").result
    iree_ops.forall_to_workgroup(memref_func)
    steps.cleanup(memref_func)
    return memref_func


def lower_vectors(func: ir.Value) -> None:
    """Lower vector ops to what the LLVM conversion takes, one pattern family per group
    (a single group with all of them has been seen to never terminate)."""
    inner = tvector.VectorMultiReductionLowering.InnerReduction
    groups = [
        [lambda: tvector.ApplyCastAwayVectorLeadingOneDimPatternsOp(),
         lambda: tvector.ApplyDropUnitDimWithShapeCastPatternsOp()],
        [lambda: tvector.ApplyReorderMultiReductionPatternsOp(lowering_strategy=inner),
         lambda: tvector.ApplyMultiReductionFlatteningPatternsOp(lowering_strategy=inner),
         lambda: tvector.ApplyMultiReductionUnrollingPatternsOp(lowering_strategy=inner)],
        [lambda: tvector.ApplyTransferPermutationPatternsOp(),
         lambda: tvector.ApplyLowerTransferPatternsOp(max_transfer_rank=1)],
        [lambda: tvector.ApplyTransferToScfPatternsOp(max_transfer_rank=1, full_unroll=True)],
        [lambda: tvector.ApplyLowerBroadcastPatternsOp()],
        [lambda: tvector.ApplyLowerShapeCastPatternsOp()],
        [lambda: transform.ApplyCanonicalizationPatternsOp()],
    ]
    for group in groups:
        with ir.InsertionPoint(transform.ApplyPatternsOp(func).patterns):
            for build in group:
                build()
    transform.ApplyCommonSubexpressionEliminationOp(func)
    # The horizontal combines may be reassociated (a tree, not a 64-long chain): faster, and
    # the f16 sums stay within tolerance. linalg reductions fix no order anyway.
    _set_fastmath(func, "vector.reduction", "reassoc")
    # Division by the row sum, a loop invariant: `arcp` lets LLVM's LICM turn it into one
    # reciprocal per row and a multiply per element.
    _set_fastmath(func, "arith.divf", "arcp")


def _set_fastmath(func: ir.Value, op_name: str, flags: str) -> None:
    """Set `fastmath = #arith.fastmath<flags>` on every `op_name` op in the func (if any)."""
    ops = structured.MatchOp.match_op_names(func, [op_name]).result
    attr = ir.Attribute.parse(f"#arith.fastmath<{flags}>")
    param = transform.ParamConstantOp(transform.AnyParamType.get(), attr).result
    transform.AnnotateOp(ops, "fastmath", param=param)


def build_codegen_spec(name: str, knobs: SoftmaxCpuKnobs, *, rank: int, dim: int,
                       form: str = FUSED, whole: bool = False) -> transform.NamedSequenceOp:
    """Emit `transform.named_sequence @name(%variant: !transform.any_op {transform.readonly})`
    lowering one softmax dispatch of rank `rank` over `dim` (in `form`, see FORMS) at the
    current insertion point (inside a module with `transform.with_named_sequence`). With
    `whole` (FUSED form, innermost dim, rank >= 2), each row is vectorized untiled (see
    `SoftmaxCpuKnobs.whole_row_limit`); the row length must be static."""
    knobs.check()
    t = tiling(knobs, rank, dim, form)
    if whole and not (form == FUSED and whole_row_form(rank, dim)):
        raise KnobError("whole-row vectorization needs the fused form of a softmax over the "
                        f"innermost dim of rank >= 2 (got rank {rank}, dim {dim}, {form})")
    seq = transform.NamedSequenceOp(name, [_any()], [],
                                    arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        h = match_dispatch(seq.bodyTarget, _REDUCTIONS[form])
        h, _forall = tile_to_workgroups(h, t)
        h, _row_loops = tile_rows(h, t)
        if whole:
            # One row per loop iteration, static: the sum and the normalization vectorize to
            # the same `math.exp` of the same row vector, which CSE then computes once.
            steps.cleanup(h.func)
            func = vectorize(h.func, t)
            _finish(func)
            transform.YieldOp()
            return seq
        reds = tile_reductions(h, t, partial=form == FUSED)
        root, norm_loop = tile_normalize(h, t)
        masked: list[tuple[ir.Value, Sequence[int]]] = []
        if t.inner_reduction:
            # Static row length: peel so every tile is full-size and static.
            peel([*reds.loops, norm_loop])
        else:
            # Partial column strips: masked vectors (masks fold away when sizes divide).
            masked += [(f, t.masked_fill) for f in h.fills]
            masked += [(op, t.masked_partial) for op in [*reds.partial_fills, *reds.combines]]
            masked.append((root, t.masked_generic))
            if form == FUSED:
                masked += [(op, t.masked_reduction) for op in reds.partials]
        # In the split form IREE may rewrite an f16/bf16 max-reduce body to extf/maximumf/
        # truncf after configuration; the vectorizer rejects that body, so that one
        # reduction may stay a scalar loop (two once peeled), as in IREE's own pipeline.
        optional = ([] if form == FUSED or t.inner_reduction else
                    [(op, t.masked_reduction) for op in reds.partials])
        steps.cleanup(h.func)
        func = vectorize(h.func, t, masked, optional, scalar_ok=0 if form == FUSED else 2,
                         children=t.inner_reduction)
        _finish(hoist_accumulators(func))
        transform.YieldOp()
    return seq


def _finish(func: ir.Value) -> None:
    """Bufferize the vectorized func, lower its vectors, and mark it `no_pipeline`."""
    func = bufferize(func)
    lower_vectors(func)
    iree_ops.annotate_translation_info(func, iree_ops.translation_info_no_pipeline())


# --- Library entries ---------------------------------------------------------------------------

def spec_name(*, rank: int, dim: int, form: str = FUSED, whole: bool = False) -> str:
    """`tdkit_softmax_cpu_r<rank>_d<dim>` for the dispatch's rank and dim (`_split` suffix for
    the SPLIT form, `_row` for whole-row vectorization)."""
    return (f"tdkit_softmax_cpu_r{rank}_d{dim}" + ("" if form == FUSED else f"_{form}")
            + ("_row" if whole else ""))


def dispatch_shape(shape: tuple[int, ...], dim: int, form: str = FUSED) -> tuple[int, ...]:
    """The input shape IREE's `form` dispatch of a softmax of `shape` over `dim` shows: the
    same for FUSED; SPLIT collapses the dims before and after `dim` (see `split_form_shape`)."""
    if form == FUSED:
        return tuple(shape)
    dim %= len(shape)
    before, after = shape[:dim], shape[dim + 1:]
    return ((math.prod(before),) if before else ()) + (shape[dim],) + \
        ((math.prod(after),) if after else ())


def library_entry(knobs: SoftmaxCpuKnobs, *, rank: int, dim: int,
                  form: str = FUSED, shape: tuple[int, ...] | None = None,
                  whole: bool = False) -> LibraryEntry:
    """The spec and matcher for the `form` dispatch(es) of a softmax of `rank` over `dim`
    (the frontend's rank and dim; a SPLIT-form entry targets the collapsed dispatch shape
    IREE makes, see `split_form_shape`). `whole`: the whole-row variant, whose matcher also
    requires rows of at most `knobs.whole_row_limit` elements."""
    from tdkit.matchers.softmax import build_codegen_matcher

    knobs.check()
    tiling(knobs, rank, dim, form)
    r, d = (rank, dim) if form == FUSED else split_form_shape(rank, dim)
    exact = None if shape is None else dispatch_shape(shape, dim, form)
    max_row = knobs.whole_row_limit if whole else None
    return LibraryEntry(
        strategy="softmax_cpu",
        spec_name=spec_name(rank=r, dim=d, form=form, whole=whole),
        build_matcher=lambda n: build_codegen_matcher(n, rank=r, dim=d, form=form, shape=exact,
                                                      max_row=max_row,
                                                      row_multiple=WHOLE_ROW_MULTIPLE),
        build_spec=lambda n: build_codegen_spec(n, knobs, rank=r, dim=d, form=form,
                                                whole=whole),
        config=knobs,
    )


def library_entries(knobs: SoftmaxCpuKnobs, *, rank: int, dim: int,
                    shape: tuple[int, ...] | None = None) -> list[LibraryEntry]:
    """Entries for both dispatch forms of a softmax of `rank` over `dim`: FUSED (from
    `linalg.softmax` or raised generics) and SPLIT (unraised frontend generics); with
    `shape`, matching only a softmax of exactly that shape (exported tuned strategies).

    For a FUSED dispatch over the innermost dim (rank >= 2) with `whole_row_limit` set, the
    whole-row entry comes first: `foreach_match` applies the first matcher that succeeds, so
    rows up to the limit take it and longer (or dynamic) rows the tiled entry."""
    d = dim % rank
    whole_ok = (knobs.whole_row_limit > 0 and whole_row_form(rank, d)
                and (shape is None or whole_row(knobs, shape, d)))
    entries = [library_entry(knobs, rank=rank, dim=d, whole=True, shape=shape)] \
        if whole_ok else []
    if shape is None or not whole_ok:
        entries.append(library_entry(knobs, rank=rank, dim=d, shape=shape))
    entries.append(library_entry(knobs, rank=rank, dim=d, form=SPLIT, shape=shape))
    return entries
