"""The GPU softmax codegen strategy family (CUDA sm_80/sm_90, ROCm gfx942): knobs, and the
transform script that lowers one fused softmax dispatch over the innermost dim to warp-shuffle
reductions with vectorized, coalesced global loads (ending in `no_pipeline`).

What the strategy sees (IREE 3.13, inner `builtin.module` of a GPU variant): `fill`, max-reduce,
`fill`, exp-sum-reduce, and the root `exp(x - max) / sum`, rank 2 to 4, reduced dim last.

The mapping: the rows are tiled `rows_per_block` at a time onto `#gpu.block<x>` (leading dims
of rank 3-4 onto block y/z, one index each), and inside a block one row goes to each
`#gpu.thread<y>`; `threads_per_row` lanes (`threadIdx.x`, a multiple of the subgroup size)
share a row. Each row op is split at `floor(L / C) * C` (`C = threads_per_row * vector_width`)
into whole chunks and a tail. Whole chunks: reductions keep a C-wide partial accumulator
across a loop (`tile_reduction_using_for`), the normalization loops over chunks. The tail
(`L mod C` elements): reductions are padded to C with -inf (read out of bounds with that
padding), the normalization is masked. After vectorization, bufferization and thread
mapping, the row body sits in `scf.if (threadIdx.x < 1)`; it becomes a
`gpu.warp_execute_on_lane_0` over `threads_per_row` lanes and `warp_distribute` gives each
lane `vector_width` contiguous elements per chunk (lane i at `i * vector_width`, so a warp's
loads are contiguous) and turns each horizontal reduction into a butterfly of shuffles;
with several subgroups per row, IREE combines the subgroups through shared memory.

Limits (rejected by `SoftmaxGpuKnobs.check`): one subgroup-multiple of threads per row; rows
of several subgroups need `rows_per_block == 1` (IREE's cross-subgroup buffer is indexed by
subgroup only); the rows dim must be a multiple of `rows_per_block` (thread foralls must be
static); rows must hold at least one chunk; only the innermost dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from iree.compiler import ir
from iree.compiler.dialects import transform
from iree.compiler.dialects.transform import structured
from iree.compiler.dialects.transform import vector as tvector

from tdkit.strategies import iree_ops, steps
from tdkit.strategies.base import require
from tdkit.strategies.gpu_targets import GpuTarget, parse_target
from tdkit.strategies.library import LibraryEntry

DTYPES = ("f32", "f16", "bf16")
_ELEMENT_TYPES = {"f32": ir.F32Type, "f16": ir.F16Type, "bf16": ir.BF16Type}
_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2}
# Shared-memory buffers IREE allocates per cross-subgroup reduction (the max is reduced once
# for each of its two uses, the sum once); one element per subgroup each.
_CROSS_SUBGROUP_BUFFERS = 3


@dataclass(frozen=True)
class SoftmaxGpuKnobs:
    """Work split of the GPU softmax strategy (softmax over the innermost dim).

    Attributes:
      rows_per_block: rows each workgroup (block) owns, one per `threadIdx.y`.
      threads_per_row: lanes (`threadIdx.x`) sharing one row; a multiple of the target's
        subgroup size. One subgroup: shuffle-only reductions. More: shuffles, then one value
        per subgroup through shared memory and a barrier (only with `rows_per_block == 1`).
      vector_width: contiguous elements each lane loads per step (a power of two; 4 f32 or
        8 f16 = one 16-byte load). A row is processed in chunks of
        `threads_per_row * vector_width` elements.
      target: the GPU the knobs are for ("cuda:sm_80", "cuda:sm_90", "rocm:gfx942"); tdkit
        sets it from `--target`.

    The defaults (1 row x 64 lanes x 4) are valid on every target (2 warps per row on CUDA,
    one wavefront on gfx942) for rows of at least 256 elements; `default_knobs` picks
    per-target values.
    """

    rows_per_block: int = 1
    threads_per_row: int = 64
    vector_width: int = 4
    target: str = "cuda:sm_80"  # set from `--target`, not searched

    @property
    def chunk(self) -> int:
        """Elements of a row one step of all its lanes covers."""
        return self.threads_per_row * self.vector_width

    @property
    def workgroup_size(self) -> tuple[int, int, int]:
        """`(threads_per_row, rows_per_block, 1)`: the block's (x, y, z) thread counts."""
        return (self.threads_per_row, self.rows_per_block, 1)

    def shared_memory_bytes(self, target: GpuTarget | str) -> int:
        """An upper bound of the shared memory one block uses: IREE's cross-subgroup
        reductions keep one 32-bit slot per subgroup in each of their buffers (aligned);
        nothing when a row is one subgroup. (Measured on gfx942, 4 waves: 48 bytes f32, 40
        f16.)"""
        t = parse_target(target)
        subgroups = self.threads_per_row // t.subgroup_size
        if subgroups <= 1:
            return 0
        return _CROSS_SUBGROUP_BUFFERS * (4 * subgroups + 16)

    def check(self, shape: Sequence[int] | None = None,
              target: GpuTarget | str | None = None, dim: int | None = None) -> None:
        """Raise KnobError with one sentence for values that cannot give a correct kernel or
        exceed the limits of `target` (default: the knobs' own); with a `shape` (softmax over
        `dim`, default the last), also for that problem."""
        for name in ("rows_per_block", "threads_per_row", "vector_width"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    f"{name} must be a positive integer, got {value!r}")
        require(_is_pow2(self.vector_width) and self.vector_width <= 16,
                f"vector_width must be a power of two of at most 16, got {self.vector_width}")
        _check_target(self, parse_target(self.target if target is None else target))
        if shape is not None:
            _check_shape(self, tuple(shape), dim)


def _check_target(k: SoftmaxGpuKnobs, t: GpuTarget) -> None:
    sg = t.subgroup_size
    require(k.threads_per_row % sg == 0,
            f"threads_per_row ({k.threads_per_row}) must be a multiple of the subgroup size "
            f"of {t.name} ({sg}): the lane reductions shuffle across whole subgroups")
    threads = k.rows_per_block * k.threads_per_row
    require(threads <= t.max_threads_per_block,
            f"rows_per_block x threads_per_row = {threads} threads exceeds the "
            f"{t.max_threads_per_block} threads per block of {t.name}")
    require(k.threads_per_row == sg or k.rows_per_block == 1,
            f"threads_per_row ({k.threads_per_row}) spans several subgroups of {t.name}, "
            f"which needs rows_per_block == 1 (got {k.rows_per_block}): IREE's cross-subgroup "
            "reduction buffer is shared by all rows of a block")
    require(k.threads_per_row <= sg * sg,
            f"threads_per_row ({k.threads_per_row}) exceeds {sg * sg}, the most subgroups one "
            f"subgroup can combine on {t.name}")
    smem = k.shared_memory_bytes(t)
    require(smem <= t.max_shared_memory_bytes,
            f"the strategy needs {smem} bytes of shared memory per block, more than the "
            f"{t.max_shared_memory_bytes} of {t.name}")


def _check_shape(k: SoftmaxGpuKnobs, shape: tuple[int, ...], dim: int | None) -> None:
    rank = len(shape)
    require(2 <= rank <= 4, f"softmax_gpu supports rank 2 to 4, got rank {rank}")
    require(all(isinstance(s, int) and s > 0 for s in shape),
            f"shape must have positive static sizes, got {shape}")
    d = rank - 1 if dim is None else dim % rank
    require(d == rank - 1,
            f"softmax_gpu only reduces the innermost dim, got dim {d} of rank {rank}")
    rows, length = shape[-2], shape[-1]
    require(rows % k.rows_per_block == 0,
            f"rows_per_block ({k.rows_per_block}) must divide the {rows} rows of dim "
            f"{rank - 2} (thread-mapped loops must have static trip counts)")
    require(k.chunk <= length,
            f"threads_per_row x vector_width = {k.chunk} exceeds the row length {length}")
    if rank > 2:
        # Leading dims map one index per block onto grid z/y; the y/z limits are the
        # smallest of the targets (65535 on CUDA).
        for i, size in enumerate(shape[:-2]):
            require(size <= 65535,
                    f"dim {i} ({size}) exceeds 65535, the grid y/z limit")


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _divisors_up_to(n: int, cap: int) -> tuple[int, ...]:
    return tuple(d for d in (1, 2, 4, 8, 16, 32) if d <= cap and n % d == 0)


def default_knobs(shape: Sequence[int], target: GpuTarget | str,
                  dtype: str = "f32") -> SoftmaxGpuKnobs:
    """Valid knobs for a softmax of `shape` over its last dim on `target`: one subgroup per
    row and 16-byte loads where the row is long enough, up to 4 rows per block for short
    rows; for rows of 8192+ elements, one block of 256 lanes (CUDA: 8 warps) per row."""
    t = parse_target(target)
    shape = tuple(shape)
    length, rows = shape[-1], shape[-2]
    vw = 16 // _ITEMSIZE.get(dtype, 4)
    while vw > 1 and t.subgroup_size * vw > length:
        vw //= 2
    if length >= 8192:
        tpr = 256
        while tpr > t.subgroup_size and tpr * vw > length:
            tpr //= 2
        knobs = SoftmaxGpuKnobs(rows_per_block=1, threads_per_row=tpr, vector_width=vw,
                                target=t.name)
    else:
        rpb = max(_divisors_up_to(rows, 4))
        knobs = SoftmaxGpuKnobs(rows_per_block=rpb, threads_per_row=t.subgroup_size,
                                vector_width=vw, target=t.name)
    knobs.check(shape, t)
    return knobs


def space(shape: Sequence[int], dim: int, target: GpuTarget | str) -> dict[str, tuple[int, ...]]:
    """The knob ranges a tuner searches for a softmax of `shape` over `dim` on `target`
    (combinations `check` rejects, e.g. several rows of several subgroups, are pruned)."""
    t = parse_target(target)
    shape = tuple(shape)
    rank = len(shape)
    require((dim % rank) == rank - 1,
            f"softmax_gpu only reduces the innermost dim, got dim {dim % rank} of rank {rank}")
    length, rows = shape[-1], shape[-2]
    sg = t.subgroup_size
    tprs = tuple(sg * m for m in (1, 2, 4, 8, 16) if sg * m <= min(t.max_threads_per_block,
                                                                     length))
    return {
        "rows_per_block": _divisors_up_to(rows, t.max_threads_per_block // sg),
        "threads_per_row": tprs or (sg,),
        "vector_width": tuple(v for v in (1, 2, 4, 8) if sg * v <= length) or (1,),
    }


# --- Steps: each takes handles and returns the handles it made --------------------------------

def _any() -> ir.Type:
    return transform.AnyOpType.get()


def _mapping(kind: str, names: Sequence[str]) -> ir.ArrayAttr:
    return ir.ArrayAttr.get([ir.Attribute.parse(f"#gpu.{kind}<{n}>") for n in names])


def _apply_patterns(func: ir.Value, *builders) -> None:
    with ir.InsertionPoint(transform.ApplyPatternsOp(func).patterns):
        for build in builders:
            build()


@dataclass(frozen=True)
class DispatchHandles:
    """Handles to the ops of one softmax dispatch: the func, the two fills, the two
    reductions (max, then exp-sum) and the root (normalization)."""

    func: ir.Value
    fills: list[ir.Value]
    reductions: list[ir.Value]
    root: ir.Value

    def producers(self) -> list[ir.Value]:
        """Fills and reductions in program order (what is fused into a root's loop)."""
        return [self.fills[0], self.reductions[0], self.fills[1], self.reductions[1]]

    def with_producers(self, ops: Sequence[ir.Value], root: ir.Value) -> DispatchHandles:
        return DispatchHandles(self.func, [ops[0], ops[2]], [ops[1], ops[3]], root)


def match_dispatch(variant: ir.Value) -> DispatchHandles:
    """The func, its 2 fills and the 3 generics (2 reductions, the root last)."""
    (func,) = steps.match_exactly(variant, "func.func", 1)
    fills = steps.match_exactly(func, "linalg.fill", 2)
    generics = steps.match_exactly(func, "linalg.generic", 3)
    return DispatchHandles(func, fills, generics[:2], generics[2])


def tile_to_blocks(h: DispatchHandles, knobs: SoftmaxGpuKnobs, rank: int
                   ) -> tuple[DispatchHandles, ir.Value]:
    """Tile the root `rows_per_block` rows at a time into a block-mapped forall (rows on
    block x, leading dims one index each on block y/z), fill the workgroup count from it, and
    fuse the fills and reductions into it. Returns the in-forall handles and the forall."""
    lead = rank - 2
    tiles = [1] * lead + [knobs.rows_per_block, 0]
    names = ["x", "y", "z"][: lead + 1][::-1]
    tiled = structured.TileUsingForallOp(h.root, tile_sizes=tiles,
                                         mapping=_mapping("block", names))
    iree_ops.populate_workgroup_count_region_using_num_threads_slice(tiled.forall_op)
    fused, forall = steps.fuse_producers(h.producers(), tiled.forall_op)
    return h.with_producers(fused, tiled.tiled_op), forall


def tile_rows_to_threads(h: DispatchHandles, rank: int) -> tuple[DispatchHandles, ir.Value]:
    """Give each `#gpu.thread<y>` one row of the block: tile the root by 1 row, fuse the fills
    and reductions again, and clean up. Returns the per-row handles (deduplicated) and the
    forall."""
    tiled = structured.TileUsingForallOp(h.root, tile_sizes=[0] * (rank - 2) + [1, 0],
                                         mapping=_mapping("thread", ["y"]))
    fused, forall = steps.fuse_producers(h.producers(), tiled.forall_op)
    steps.cleanup(h.func)
    rows = h.with_producers([steps.unique(op) for op in fused], tiled.tiled_op)
    return rows, forall


@dataclass(frozen=True)
class RowParts:
    """Each row op split along the row into whole chunks (`main`, multiple of the chunk) and
    the tail (`tails`, `L mod chunk` elements; empty handles when the chunk divides L).
    Order: max-reduce, exp-sum-reduce, root."""

    main: list[ir.Value]
    tails: list[ir.Value]


def split_rows(h: DispatchHandles, rank: int, chunk: int) -> RowParts:
    """Split the two reductions and the root at `floor(L / chunk) * chunk` along the row
    (`continuous_tile_sizes` computes that point in the payload; the reductions' tails then
    start from the whole-chunk result)."""
    sizes = structured.ContinuousTileSizesOp(_any(), _any(), h.root, dimension=rank - 1,
                                             target_size=chunk)
    # The first chunk size is floor(L / chunk) * chunk; the merge keeps the split_handle
    # from failing when there is no second size (the chunk divides L).
    both = transform.MergeHandlesOp([sizes.chunk_sizes, h.root]).result
    point = transform.SplitHandleOp([_any(), _any()], both, overflow_result=1).results[0]
    main: list[ir.Value] = []
    tails: list[ir.Value] = []
    for op in [*h.reductions, h.root]:
        parts = structured.SplitOp(op, rank - 1, point).result
        first, rest = transform.SplitHandleOp([_any(), _any()], parts,
                                              fail_on_payload_too_small=False).results
        main.append(first)
        tails.append(rest)
    return RowParts(main, tails)


def tile_chunks(parts: RowParts, rank: int, chunk: int) -> list[ir.Value]:
    """Loop over the whole chunks: each reduction into a chunk-wide partial accumulator (one
    horizontal reduction after the loop), the root chunk by chunk. Returns the 3 loops."""
    sizes = [0] * (rank - 1) + [chunk]
    loops = []
    for red in parts.main[:2]:
        op = structured.TileReductionUsingForOp([_any()], _any(), _any(), _any(), red,
                                                tile_sizes=sizes)
        loops.append(op.for_op)
    loops.append(structured.TileUsingForOp(parts.main[2], sizes=sizes).loops[0])
    return loops


def pad_reduction_tails(parts: RowParts, rank: int, chunk: int, dtype: str) -> list[ir.Value]:
    """Pad the row of each reduction tail to one whole chunk with -inf (neutral for the max,
    and exp(-inf - max) = 0 for the sum); vectorized, the pad becomes an out-of-bounds read
    with that padding. Returns the padded ops."""
    elem = _ELEMENT_TYPES[dtype].get()
    neg_inf = ir.FloatAttr.get(elem, float("-inf"))
    zero = ir.FloatAttr.get(elem, 0.0)
    padded = []
    # Operands: max (x, init); sum (x, max, init). Only x has the padded (row) dim.
    for op, values in zip(parts.tails[:2], ([neg_inf, zero], [neg_inf, zero, zero]),
                          strict=True):
        pad = structured.PadTilingInterfaceOp(
            _any(), _any(), op, [], padding_values=values,
            static_padding_sizes=[0] * (rank - 1) + [chunk], pad_to_multiple_of=True)
        padded.append(pad.padded)
    return padded


def vectorize(func: ir.Value, rank: int, chunk: int) -> ir.Value:
    """Vectorize every linalg op and pad at chunk width (the root's tail masked), forward the
    partial accumulators through loop iter_args, and fold slices into transfers. Fails if a
    linalg op is left. Returns the func."""
    sizes = [1] * (rank - 1) + [chunk]
    ops = steps.unique(structured.MatchOp.match_op_names(func, ["linalg.generic",
                                                           "linalg.reduce"]).result)
    structured.VectorizeOp(ops, vector_sizes=sizes)
    pads = structured.MatchOp.match_op_names(func, ["tensor.pad"]).result
    structured.VectorizeOp(pads, vector_sizes=sizes)
    # Fills are static (a row's scalar, a chunk-wide accumulator). Not
    # vectorize_children_and_apply_patterns: it would also turn the split's insert_slices
    # into whole-row vector copies.
    structured.VectorizeOp(structured.MatchOp.match_op_names(func, ["linalg.fill"]).result)
    _apply_patterns(func, tvector.ApplyLowerMaskedTransfersPatternsOp,
                    iree_ops.fold_tensor_slice_into_transfer,
                    transform.ApplyCanonicalizationPatternsOp)
    func = transform.ApplyRegisteredPassOp(
        _any(), func, "iree-codegen-optimize-tensor-insert-extract-slices").result
    steps.cleanup(func)
    left = structured.MatchOp(_any(), func,
                              interface=structured.MatchInterfaceEnum.LinalgOp).result
    steps.expect_count(left, 0)
    return func


def bufferize(func: ir.Value) -> ir.Value:
    """Eliminate empty tensors, bufferize for the GPU, map the block forall to workgroup ids.
    Returns the bufferized func."""
    iree_ops.eliminate_empty_tensors(func)
    func = iree_ops.bufferize(func, target_gpu=True)
    # Without this, leftover self-copies keep warp_distribute from distributing anything.
    steps.cleanup(func)
    iree_ops.forall_to_workgroup(func)
    return func


def map_to_threads(func: ir.Value, knobs: SoftmaxGpuKnobs, target: GpuTarget) -> None:
    """Map the row forall to `threadIdx.y` with workgroup size (threads_per_row,
    rows_per_block, 1); each row's body ends up under `scf.if (threadIdx.x < 1)`. Also sets
    translation_info to no_pipeline with that workgroup size and the target's subgroup size."""
    iree_ops.map_nested_forall_to_gpu_threads(func, list(knobs.workgroup_size),
                                              subgroup_size=target.subgroup_size,
                                              sync_after_distribution=False)
    steps.cleanup(func)
    _apply_patterns(func, lambda: iree_ops.upstream_pattern("memref.fold_memref_alias_ops"),
                    tvector.ApplyCastAwayVectorLeadingOneDimPatternsOp,
                    structured.ApplyFoldUnitExtentDimsViaSlicesPatternsOp)
    steps.cleanup(func)


def distribute_to_lanes(func: ir.Value, knobs: SoftmaxGpuKnobs) -> ir.Value:
    """Turn each row body into a `gpu.warp_execute_on_lane_0` over `threads_per_row` lanes and
    distribute it (vector_width elements per lane, shuffle reductions). Multi-reductions and
    broadcasts are lowered first so that the row's max and sum are scalars: a `vector<1xf32>`
    escaping into a loop cannot be distributed and would stop distribution silently. Returns
    the warp ops."""
    inner = tvector.VectorMultiReductionLowering.InnerReduction
    _apply_patterns(func,
                    lambda: tvector.ApplyReorderMultiReductionPatternsOp(lowering_strategy=inner),
                    lambda: tvector.ApplyMultiReductionFlatteningPatternsOp(
                        lowering_strategy=inner),
                    lambda: tvector.ApplyMultiReductionUnrollingPatternsOp(
                        lowering_strategy=inner))
    _apply_patterns(func, tvector.ApplyLowerBroadcastPatternsOp)
    steps.cleanup(func)
    ifs = structured.MatchOp.match_op_names(func, ["scf.if"]).result
    warps = iree_ops.vector_to_warp_execute_on_lane_0(ifs, knobs.threads_per_row)
    iree_ops.vector_warp_distribute(func)
    steps.cleanup(func)
    return warps


def expect_distributed(func: ir.Value, knobs: SoftmaxGpuKnobs, target: GpuTarget) -> None:
    """Fail the compile where distribution left work to lane 0: that path goes through a
    shared-memory buffer all rows of a block would share. With one subgroup per row nothing
    may allocate shared memory at all."""
    if knobs.threads_per_row == target.subgroup_size:
        allocs = structured.MatchOp.match_op_names(func, ["memref.alloc"]).result
        steps.expect_count(allocs, 0)


def set_fastmath(func: ir.Value) -> None:
    """`arcp` on the divisions by the row sum: one reciprocal per row and a multiply per
    element instead of a full-precision division each."""
    ops = structured.MatchOp.match_op_names(func, ["arith.divf"]).result
    iree_ops.annotate(ops, "fastmath", ir.Attribute.parse("#arith.fastmath<arcp>"))


def build_codegen_spec(name: str, knobs: SoftmaxGpuKnobs, *, rank: int,
                       target: GpuTarget | str, dtype: str = "f32") -> transform.NamedSequenceOp:
    """Emit `transform.named_sequence @name(%variant: !transform.any_op {transform.readonly})`
    lowering one fused softmax dispatch of `rank` (2-4) over its last dim, element type
    `dtype`, for `target`, at the current insertion point (inside a module with
    `transform.with_named_sequence`). Needs an active context."""
    t = parse_target(target)
    knobs.check(target=t)
    require(2 <= rank <= 4, f"softmax_gpu supports rank 2 to 4, got rank {rank}")
    require(dtype in DTYPES, f"softmax_gpu supports {', '.join(DTYPES)}, got {dtype!r}")
    seq = transform.NamedSequenceOp(name, [_any()], [],
                                    arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        h = match_dispatch(seq.bodyTarget)
        h, _blocks = tile_to_blocks(h, knobs, rank)
        h, _rows = tile_rows_to_threads(h, rank)
        parts = split_rows(h, rank, knobs.chunk)
        tile_chunks(parts, rank, knobs.chunk)
        pad_reduction_tails(parts, rank, knobs.chunk, dtype)
        steps.cleanup(h.func)
        func = vectorize(h.func, rank, knobs.chunk)
        set_fastmath(func)
        func = bufferize(func)
        map_to_threads(func, knobs, t)
        distribute_to_lanes(func, knobs)
        expect_distributed(func, knobs, t)
        transform.YieldOp()
    return seq


# --- Library entries ---------------------------------------------------------------------------

def spec_name(*, rank: int, dim: int, dtype: str, rows_per_block: int | None = None) -> str:
    """`tdkit_softmax_gpu_r<rank>_d<dim>_<dtype>`, with `_rows1` for the one-row fallback."""
    suffix = "_rows1" if rows_per_block == 1 else ""
    return f"tdkit_softmax_gpu_r{rank}_d{dim}_{dtype}{suffix}"


def build_matcher(name: str, knobs: SoftmaxGpuKnobs, *, rank: int, dim: int, dtype: str,
                  shape: tuple[int, ...] | None = None) -> transform.NamedSequenceOp:
    """The CPU family's fused-softmax matcher (`tdkit.matchers.softmax`; GPU codegen sees the
    same ops), plus: the input's element type is `dtype` (the spec's padding is typed), and,
    without an exact `shape`, the rows dim is a multiple of `rows_per_block` and rows hold at
    least one chunk (other shapes keep IREE's default pipeline or the next entry)."""
    from iree.compiler.dialects import preprocessing_transform as pre

    from tdkit.matchers.softmax import FUSED, build_codegen_matcher

    seq = build_codegen_matcher(name, rank=rank, dim=dim, form=FUSED, shape=shape)
    terminator = list(seq.body.operations)[-1]
    with ir.InsertionPoint(terminator):
        root = transform.GetProducerOfOperand(_any(), seq.bodyTarget, 0).result
        x = transform.GetOperandOp(transform.AnyValueType.get(), root, [0]).result
        dyn = ir.ShapedType.get_dynamic_size()
        pre.MatchCastCompatibleTypesOp(
            x, ir.RankedTensorType.get([dyn] * rank, _ELEMENT_TYPES[dtype].get()))
        if shape is None:
            if knobs.rows_per_block > 1:
                pre.MatchDimIsMultipleOfOp(x, rank - 2, knobs.rows_per_block)
            pre.MatchDimBoundsOp(x, rank - 1, lower_bound=knobs.chunk)
    return seq


def library_entry(knobs: SoftmaxGpuKnobs, *, rank: int, dim: int, target: GpuTarget | str,
                  dtype: str, shape: tuple[int, ...] | None = None,
                  name: str | None = None) -> LibraryEntry:
    """The spec and matcher for the fused softmax dispatch of `rank` over `dim` in `dtype`."""
    t = parse_target(target)
    knobs.check(shape, t, dim)
    require(dtype in DTYPES, f"softmax_gpu supports {', '.join(DTYPES)}, got {dtype!r}")
    return LibraryEntry(
        strategy="softmax_gpu",
        spec_name=name or spec_name(rank=rank, dim=dim, dtype=dtype),
        build_matcher=lambda n: build_matcher(n, knobs, rank=rank, dim=dim, dtype=dtype,
                                              shape=shape),
        build_spec=lambda n: build_codegen_spec(n, knobs, rank=rank, target=t, dtype=dtype),
        config=(knobs, t.name, dtype),
    )


def library_entries(knobs: SoftmaxGpuKnobs, *, rank: int, dim: int, target: GpuTarget | str,
                    shape: tuple[int, ...] | None = None,
                    dtype: str | None = None) -> list[LibraryEntry]:
    """Entries lowering the fused softmax dispatch of `rank` over `dim` on `target`: one per
    element type (`dtype`, or all of f32, f16, bf16). With `shape`, matching only that exact
    shape (the knobs are checked against it). Without, a dispatch whose rows are not a
    multiple of `rows_per_block` falls to a one-row-per-block entry (`_rows1`); rows shorter
    than one chunk match nothing and keep IREE's default pipeline."""
    t = parse_target(target)
    require(2 <= rank <= 4, f"softmax_gpu supports rank 2 to 4, got rank {rank}")
    require(dim % rank == rank - 1,
            f"softmax_gpu only reduces the innermost dim, got dim {dim % rank} of rank {rank}")
    dim %= rank
    if shape is not None:
        require(len(shape) == rank, f"shape {shape} does not have rank {rank}")
    entries = []
    for dt in (dtype,) if dtype else DTYPES:
        entries.append(library_entry(knobs, rank=rank, dim=dim, target=t, dtype=dt,
                                     shape=shape))
        if shape is None and knobs.rows_per_block > 1:
            one = replace(knobs, rows_per_block=1)
            entries.append(library_entry(one, rank=rank, dim=dim, target=t, dtype=dt,
                                         name=spec_name(rank=rank, dim=dim, dtype=dt,
                                                        rows_per_block=1)))
    return entries
