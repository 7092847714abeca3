"""The `flash` attention family: a full transform-dialect strategy for one CPU attention dispatch.

What it lowers (IREE 3.13, llvm-cpu; see `tdkit.matchers.attention`): three `linalg.fill`s, an
`iree_linalg_ext.online_attention` with loops `(b, m, k1, k2, n)` (or `(m, k1, k2, n)` when the
batch is 1) and a normalize `linalg.generic`. The strategy, one small function per step, each
returning the handles it made:

1. `distribute`: annotate the online_attention with a distribution `lowering_config`
   (`[1, rows, 0, 0, 0]`) and its `decomposition_config`, and run IREE's
   `tile-and-distribute-to-workgroups-using-forall-op` pass, which tiles it to `rows` query
   rows per workgroup, fuses the fills and the normalize generic, and maps the loop to
   workgroups;
2. `pad_rows`: pad the workgroup tile to a multiple of `rows` (padding values equal to the
   fills, so the padded fills fold; padded query rows are computed and never stored), and
   `pad_normalize` the fused normalize generic to `rows` rows (static, so it vectorizes);
3. `tile_keys`: tile the key dim by `key_tile` with `scf.for` (the loop carries the
   accumulator, the running max and the running sum: online softmax); `peel` the last partial
   key tile, so every tile is static and no key needs masking;
4. `decompose`: every online_attention into Q·Kᵀ, max/exp/sum pieces, rescale and P·V, and
   `interchange` the pieces' loops for the chosen `layout` (below); with "mlanes",
   `split_maxima` splits the running-max reduction into `max_split` partial maxima (a shorter
   dependency chain between Q·Kᵀ and the exp) and `tile_values` splits the rescale and P·V
   into `value_tile`-column tiles (N);
5. `vectorize`; 6. `bufferize` (eliminate empty tensors first) and hoist loop-invariant
   transfers; 7. `lower_vectors`; annotate `no_pipeline`.

Layouts. "mlanes" (default) puts the query rows on the vector lanes: every decomposed op is
interchanged so that the query-row loop is innermost and reductions are outermost. Q·Kᵀ becomes
FMAs of broadcast K elements with rows of the (once transposed) scaled Q; the running max and
sum are element-wise across vectors; P·V accumulates into an `N x rows` transposed accumulator
with FMAs of broadcast V elements, carried by the key loop as N / value_tile tiles that are
rescaled and accumulated one after the other (so one tile, not the whole accumulator, is live
in registers). No per-step transpose or horizontal reduction remains, and `rows = 16` fills an
AVX-512 register. "rows" keeps IREE's decomposition layout (vectors along
the keys: K is transposed every key step, the softmax reduces horizontally).

Fully masked rows (every visible key masked with `finfo.min`): IREE's decomposition computes
the softmax with `exp2` after multiplying the mask by log2(e), which overflows `finfo.min` to
`-inf` and yields 0/0. The strategy sets `decomposition_config = {use_exp2 = false}` by
default (knob `exp2`), so the masked scores stay finite and such rows become the uniform average
of the visible values, as the float64 reference defines them.

No buffer or vector of size M x K2 exists at any point: per workgroup there is the rows x N
accumulator, two rows-vectors of statistics and a rows x key_tile score tile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from iree.compiler import ir
from iree.compiler.dialects import transform
from iree.compiler.dialects.transform import loop, structured
from iree.compiler.dialects.transform import vector as tvector

from tdkit.matchers.attention import (
    CODEGEN_MASK_BOOL,
    CODEGEN_MASK_FLOAT,
    CODEGEN_MASK_KEYS,
    CODEGEN_MASK_NONE,
    CodegenPredicate,
    build_codegen_matcher,
    codegen_predicates,
    predicate_name,
)
from tdkit.matchers.dtypes import DType
from tdkit.strategies import iree_ops, steps, x86_bf16, x86_helpers
from tdkit.strategies.base import require
from tdkit.strategies.library import LibraryEntry

FAMILY = "flash"
ONLINE_ATTENTION = "iree_linalg_ext.online_attention"
# f32's most negative finite value: the running-max fill IREE uses, and so the max padding.
F32_LOWEST = -3.4028234663852886e38
LAYOUTS = ("mlanes", "rows")
LOWERINGS = ("transform", "iree")
MAX_HEAD_DIM = 256
# IREE's task workers run on 128 KiB stacks (runtime flag --task_worker_stack_size); a kernel
# whose LLVM frame (vector spills) approaches that crashes at run time, e.g. layout "rows" with
# rows=32, key_tile=16 (158 KiB frame) and "mlanes" with rows=32, key_tile=32 (152 KiB).
STACK_BUDGET = 96 * 1024


@dataclass(frozen=True)
class FlashKnobs:
    """Tile sizes and options of the flash strategy.

    Attributes:
      rows: query rows per workgroup; the accumulator tile is rows x N. With the "mlanes"
        layout it is the vector width along the query rows: a power of two, 16 fills an
        AVX-512 register of f32.
      key_tile: keys per step of the key loop (a power of two); the score tile is
        rows x key_tile.
      layout: "mlanes" (query rows on the vector lanes) or "rows" (IREE's layout, vectors
        along the keys); see the module docstring.
      lowering: "transform" lowers vectors with transform-dialect patterns (contractions to
        outer products, multi-reductions element-wise across vectors: `innerparallel`);
        "iree" runs IREE's CPU vector-lowering passes (only with layout "rows": they reduce
        horizontally, which would undo "mlanes").
      exp2: use IREE's exp2 decomposition (mask scaled by log2(e)); False uses exp, which keeps
        `finfo.min` masks finite (fully masked rows stay correct).
      value_tile: with layout "mlanes", split the accumulator rescale and P·V into tiles of
        this many value columns (N), each rescaled and accumulated on its own, so the key
        loop carries N / value_tile `value_tile x rows` vectors and LLVM keeps one tile in
        registers at a time instead of spilling the whole `N x rows` accumulator; 0 = off.
        Applied when it divides N and is smaller than N (`tiles_values`).
      max_split: with layout "mlanes", compute the key step's row maxima as `max_split`
        partial maxima over interleaved key groups, then combine them
        (`transform.structured.split_reduction`): the chain of dependent maxima between the
        last Q·Kᵀ FMA and the first exp shrinks from key_tile to key_tile / max_split +
        max_split steps. 0 = off, else a power of two; a key tile smaller than it is split
        into single keys (`max_split_factor`), and a peeled remainder tile is not split.
      outer_products: with layout "mlanes", emit Q·Kᵀ one head-dim element at a time (packed
        so that Q and the scores are stored `(k, m)`, in a rolled loop: `pack_query_rows`)
        and P·V one key at a time (`unroll_matmuls`), each a rank-1 update of a register
        block, in that order; with rows = 32 each broadcast K / V element then feeds two
        FMAs. The library asks LLVM to keep that order (`KEEP_ORDER_FLAGS`).
      bf16_dot: with bf16 inputs and `outer_products`, compute both matmuls two reduction
        elements at a time (Q·Kᵀ's head dim, P·V's keys) with `vdpbf16ps` (AVX512_BF16;
        `tdkit.strategies.x86_bf16`) instead of widening every element to f32; applied when
        the head dim is even and N known (`uses_bf16_dot`). `fit()` turns it off on a CPU
        without AVX512_BF16.
      vmaxps: with layout "mlanes" and whole 16-lane row vectors, compute the full key tiles'
        row maxima with AVX-512 `vmaxps` (`x86_helpers.build_max_helper`) instead of
        `arith.maximumf`, whose NaN and signed-zero rules cost three more instructions per
        maximum on the chain between Q·Kᵀ and the exp (the running max needs neither); applied
        when the maxima's types fix their reduction dims (`uses_vmaxps`). `fit()` turns it off
        on a CPU without AVX-512.
      fast_exp: with layout "mlanes" and whole 16-lane row vectors, compute the full key
        tiles' exps (probabilities and rescale factors) with `vscalefps` and a degree-6
        polynomial (`x86_helpers.build_exp_helper`, within a few f32 ulps) instead of IREE's
        `math.exp` lowering, about 12 instructions per 16 lanes instead of 20; not with
        `exp2`. `fit()` turns it off on a CPU without AVX-512.
    """

    rows: int = 16
    key_tile: int = 16
    layout: str = "mlanes"
    lowering: str = "transform"
    exp2: bool = False
    value_tile: int = 8
    max_split: int = 4
    outer_products: bool = False
    bf16_dot: bool = True
    vmaxps: bool = True
    fast_exp: bool = True

    def check(self, problem: Any = None) -> None:
        """Raise KnobError with one sentence for knob values, or combinations with the
        problem's sizes, that cannot give a correct kernel (or are known to crash)."""
        for name in ("rows", "key_tile"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    f"{name} must be a positive integer, got {value!r}")
        require(self.layout in LAYOUTS,
                f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        require(self.lowering in LOWERINGS,
                f"lowering must be one of {', '.join(LOWERINGS)}, got {self.lowering!r}")
        require(not (self.layout == "mlanes" and self.lowering == "iree"),
                "layout mlanes needs lowering=transform (IREE's passes reduce horizontally)")
        require(isinstance(self.outer_products, bool),
                f"outer_products must be true or false, got {self.outer_products!r}")
        require(isinstance(self.bf16_dot, bool),
                f"bf16_dot must be true or false, got {self.bf16_dot!r}")
        require(isinstance(self.vmaxps, bool),
                f"vmaxps must be true or false, got {self.vmaxps!r}")
        require(isinstance(self.fast_exp, bool),
                f"fast_exp must be true or false, got {self.fast_exp!r}")
        require(isinstance(self.value_tile, int) and not isinstance(self.value_tile, bool)
                and (self.value_tile == 0 or _is_pow2(self.value_tile)),
                f"value_tile must be 0 (off) or a power of two, got {self.value_tile!r}")
        require(isinstance(self.max_split, int) and not isinstance(self.max_split, bool)
                and (self.max_split == 0 or _is_pow2(self.max_split)),
                f"max_split must be 0 (off) or a power of two, got {self.max_split!r}")
        require(_is_pow2(self.key_tile),
                f"key_tile must be a power of two, got {self.key_tile}")
        require(self.key_tile <= 64, f"key_tile must be at most 64, got {self.key_tile}")
        if self.layout == "mlanes":
            require(_is_pow2(self.rows), f"rows must be a power of two with layout mlanes (it "
                                         f"is the vector width), got {self.rows}")
            require(self.rows <= 32, f"rows must be at most 32 with layout mlanes, got "
                                     f"{self.rows}")
        else:
            require(self.rows <= 64, f"rows must be at most 64, got {self.rows}")
        head = 64 if problem is None else max(problem.d, problem.value_dim)
        require(head <= MAX_HEAD_DIM,
                f"head dims up to {MAX_HEAD_DIM} are supported, got {head}")
        frame = stack_estimate(self, head)
        require(frame <= STACK_BUDGET,
                f"rows={self.rows}, key_tile={self.key_tile} (layout {self.layout}, head dim "
                f"{head}) needs about {frame // 1024} KiB of stack, more than IREE's 128 KiB "
                f"worker stacks allow (it would crash at run time)")
        if problem is None:
            return
        require(self.rows <= problem.m,
                f"rows ({self.rows}) exceeds the query length M = {problem.m}")
        require(self.key_tile <= problem.k2,
                f"key_tile ({self.key_tile}) exceeds the key length K2 = {problem.k2}")
        require(self.value_tile == 0 or self.value_tile >= problem.value_dim
                or problem.value_dim % self.value_tile == 0,
                f"value_tile ({self.value_tile}) must divide the value dim N = "
                f"{problem.value_dim} (partial value tiles are not supported)")


def stack_estimate(knobs: FlashKnobs, head_dim: int) -> int:
    """Bytes of stack LLVM gives the kernel, fitted to frames measured with IREE 3.13
    (`subq $N, %rsp` in the dispatch's assembly) for head dims 64-256."""
    rows, kt, d = knobs.rows, knobs.key_tile, max(head_dim, 64)
    if unrolls_matmuls(knobs):  # the scaled Q tile and the accumulator on the stack
        return 12 * rows * d + 2048
    if knobs.layout == "rows":  # grows with the key tile up to 16, then slowly
        return rows * (d // 64) * (320 * min(kt, 16) + 30 * max(kt - 16, 0))
    if rows == 16:  # one register of query rows: spills grow with the head dim only
        return 12 * 1024 + (6 * d * d) // 10
    per_score = 132 if rows > 16 else 264  # fewer than 16 rows: half-empty registers
    return (d // 64) * (rows * 700 + rows * kt * per_score)


# Scores (batch x M x K2) from which `fit` picks the outer-product blocks even when M is not a
# multiple of 32: 4x1024x1024.
OUTER_PRODUCTS_MIN_SCORES = 1 << 22


def fit(problem: Any, knobs: FlashKnobs) -> FlashKnobs:
    """Fit the default knobs to a problem. M >= 32, K2 >= 8, head dims up to 128, value tiles
    dividing N, and either M a multiple of 32 or at least `OUTER_PRODUCTS_MIN_SCORES` scores:
    32 rows x 8 keys, value tiles of 4 (f32) or 8 (f16, bf16), max_split 2,
    `outer_products`. Otherwise rows and
    key_tile powers of two no larger than M and K2; key_tile 8 for bf16, and for f16 with head
    dims of 128 and more; value_tile 0 when it does not divide N, and for f16."""
    rows, key_tile = knobs.rows, knobs.key_tile
    if knobs.bf16_dot and not x86_bf16.host_supports():
        knobs = replace(knobs, bf16_dot=False)
    if not x86_helpers.host_has(x86_helpers.AVX512_FLAG):  # AVX-512F
        knobs = replace(knobs, vmaxps=False, fast_exp=False)
    if max(problem.d, problem.value_dim) >= 128 and problem.dtype == DType.F16:
        # 16 keys per step: 0.51x at 4x1024x1024x128 f16 (side by side, 5 rounds). f32 keeps
        # 16: with the value tiles carried as vectors it measured 1.018x, 1.012x and 1.045x
        # the old 8 at 4x1024x1024x128 and 1.077x at 2x1024x1024x128 (side by side, 10
        # rounds each; minima 1.04-1.13x), 1.15x at 2x1024x1024x256, and on one core
        # (`bench --threads 1 --variant`, both orders, 6 rounds) 1.082x and 1.088x at
        # 4x1024x1024x128, where two-worker medians are noisier; llvm-mca counts 296
        # stack stores per 16 keys against 2 x 503 (it used to be 79 vs 94 GF/s, before the
        # value tiles). bf16 keeps 8 below (16: 0.885x at D = 128).
        key_tile = min(key_tile, 8)
    if problem.dtype == DType.BF16:
        # mlanes converts every broadcast K / V element bf16 -> f32 on its own (a shift and a
        # broadcast per FMA), "rows" converts whole K / V tiles once: rows 8 x 16 used to win
        # (94 vs 73 GF/s at 8x1024x1024x64). With the split max and vector value tiles,
        # mlanes 16 x 8 x 8 runs 1.13x and 1.14x that rows default (two side-by-side runs,
        # 9 rounds; 16 x 16 x 8: 0.68x, 16 x 4 x 8: 1.08x).
        key_tile = min(key_tile, 8)
    while rows > problem.m and rows > 1:
        rows //= 2
    while key_tile > problem.k2 and key_tile > 1:
        key_tile //= 2
    value_tile = knobs.value_tile
    if value_tile and (problem.value_dim % value_tile or problem.dtype == DType.F16):
        # f16 (one vcvtph2ps per broadcast K / V element) measured slower with value tiles:
        # 95-107 vs 109-119 GF/s at 8x1024x1024x64 (LLVM frame 41 KiB vs 14 KiB); again with
        # the tiles carried as vectors: 0.89x (value_tile 8) and 0.91x (16), side by side.
        value_tile = 0
    # Head dim 128, f32: 32 rows x 4 keys used to beat 16 x 8 (1.17x) while the key loop
    # transposed its non-square accumulator tiles every step; with the tiles carried as
    # vectors (`vectorize_key_loop_generics`), 16 x 8 x 8 matches that old 32 x 4 x 16 (10.7
    # vs 10.8 ms at 4x1024x1024x128, side by side) and 32 x 4 spills the whole accumulator
    # (23-28 ms), so the rows stay at 16.
    # Register blocks of 32 query rows (two vectors per broadcast K / V element) x 8 keys, the
    # matmuls unrolled as rank-1 updates (`outer_products`), max_split 2. f32, value tiles of
    # 4: side by side (5 rounds, two threads) 1.116x, 1.153x and 1.155x the 16 x 16 x 8 blocks
    # at 8x1024x1024x64, 2x4096x4096x64 and 4x1024x1024x128; on one core 1.058x and 1.109x
    # (8x1024x1024x64, 4x1024x1024x128); max_split 2 over 4: 1.01-1.13x. f16 / bf16 convert
    # each broadcast K / V element on their own: value tiles of 8 (1.37x and 1.21x the 16-row
    # defaults at 8x1024x1024x64 bf16 / f16, against 1.28x / 1.03x with 4; 1.59x / 1.37x at
    # 4x1024x1024x128; side by side, 3 rounds, two threads). Since Q·Kᵀ is packed and kept
    # rolled (`pack_query_rows`) they compile as fast as the 16-row blocks (they used to take
    # 20 s instead of 5). Smaller calls, side by side (5 rounds, two threads), old 16 x 16 x 8
    # blocks against these: 0.72x at 2x12x128x128x64 and 8x512x512x64, 0.79x at 4x256x1024x64,
    # 0.91x at 16x192x192x64 and 16x192x197x64; but a partial last row tile costs a 32-row
    # workgroup more: on one core (5 rounds, with `pad_normalize`) the 16-row blocks ran
    # 1.10x at 16x197x197x64 and 16x197x192x64, 1.11x at 1x12x197x197x64, 1.15x at
    # 2x2x77x197x64 causal, 1.00x at 2x100x300x64 with a mask (0.92x at 16x192x192x64). So M
    # must be a multiple of 32, or the call large (the partial tile then is a small share).
    block_values = 4 if problem.dtype == DType.F32 else 8
    rows_fit = (problem.m % 32 == 0
                or problem.batch_size * problem.m * problem.k2 >= OUTER_PRODUCTS_MIN_SCORES)
    if (problem.m >= 32 and problem.k2 >= 8 and problem.value_dim % block_values == 0
            and max(problem.d, problem.value_dim) <= 128 and rows_fit):
        return replace(knobs, rows=32, key_tile=8, value_tile=block_values, max_split=2,
                       outer_products=True)
    return replace(knobs, rows=rows, key_tile=key_tile, value_tile=value_tile)


def space(problem: Any) -> dict[str, tuple[Any, ...]]:
    """The knob ranges `tdkit tune` searches for `problem` (`check` prunes what cannot work:
    mlanes with IREE's lowering, mlanes rows above 32, frames over the stack budget, tiles
    larger than M or K2, value tiles that do not divide N)."""
    # rows 64 and key_tile 64 are left out: over 233 verified candidates of 4x1024x1024x64
    # (four sweeps) their best was 29.5 and 9.1 ms against 5.5 ms, and they compile slowest
    # (4.0-4.2 s median, up to 20 s); `--space` puts them back.
    del problem  # the same ranges for every problem; `check` removes what does not fit
    return {
        "rows": (4, 8, 16, 32),
        "key_tile": (4, 8, 16, 32),
        "layout": LAYOUTS,
        "lowering": LOWERINGS,
        "exp2": (False, True),
        "value_tile": (0, 8, 16, 32),
        "max_split": (0, 2, 4),
        "outer_products": (False, True),
    }


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


def pad_normalize(padded: ir.Value, dims: Dims, knobs: FlashKnobs, pred: CodegenPredicate
                  ) -> None:
    """Pad the normalize generic that IREE fused into the workgroup (the consumer, through a
    `tensor.extract_slice`, of the padded attention's accumulator) to exactly `rows` query
    rows, so that it is static and vectorizes. When `rows` does not divide M its row count is
    dynamic in every workgroup, and IREE lowered it to scalar code (one `divf` per output
    element); padded, 16x197x192x64 ran 1.75 instead of 1.86 ms on one core (32-row blocks,
    three interleaved runs). Padded rows divide by a padded sum of 1 and are never stored.
    Nothing to do when the rows divide M (no slice between the two ops)."""
    seq = transform.SequenceOp(transform.FailurePropagationMode.Suppress, [], padded)
    with ir.InsertionPoint(seq.body):
        acc_slice = transform.GetConsumersOfResult(_any(), seq.bodyTarget, 0).result
        transform.MatchOperationNameOp(acc_slice, ["tensor.extract_slice"])
        normalize = transform.GetConsumersOfResult(_any(), acc_slice, 0).result
        transform.MatchOperationNameOp(normalize, ["linalg.generic"])
        f32 = ir.F32Type.get()
        out = (pred.dtype or DType.F32).mlir_type()
        # Loops (b, m, n) or (m, n); operands (sum, acc, out). Exactly `rows` rows (not a
        # multiple of it: a multiple of a dynamic size stays dynamic, and bufferization then
        # wants an unbounded stack allocation).
        sizes = ([1] if dims.rank == 5 else []) + [knobs.rows, 0]
        structured.PadTilingInterfaceOp(
            _any(), _any(), normalize, [], static_padding_sizes=sizes,
            padding_values=[ir.FloatAttr.get(f32, 1.0), ir.FloatAttr.get(f32, 0.0),
                            ir.FloatAttr.get(out, 0.0)], pad_to_multiple_of=False)
        transform.YieldOp()


def fuse_mask_padding(func: ir.Value, pred: CodegenPredicate) -> None:
    """Fuse the mask's `tensor.pad` into each key loop (the full tiles and the peeled
    remainder), so each step pads a `rows x key_tile` slice instead of the workgroup padding
    (and allocating) its whole `rows x K2` mask slice up front (72 KiB for K2 = 1000 f32, over
    IREE's 32 KiB stack-allocation limit). Nothing to do when the rows divide M (no pad).

    A mask computed in the dispatch (a causal mask from `linalg.index`, which IREE clones into
    the attention dispatch with `AGGRESSIVE_FUSION`) is fused into each key loop too, so each
    step computes its `rows x key_tile` tile: no mask tensor exists anywhere."""
    if not pred.masked:
        return
    found = structured.MatchOp.match_op_names(func, [ONLINE_ATTENTION]).result
    each = transform.ForeachOp([], [found])
    with ir.InsertionPoint(each.body):
        attention = each.body.arguments[0]
        key_loop = transform.GetParentOp(_any(), attention, op_name="scf.for").result
        with _if_mask_source(attention, 1, "tensor.pad") as pad:
            structured.FuseIntoContainingOp(pad, key_loop)
        # The generator behind the (now in-loop) pad's slice, or behind the mask's slice.
        for depth in (2, 1):
            with _if_mask_source(attention, depth, "linalg.generic") as generator:
                fused = structured.FuseIntoContainingOp(generator, key_loop).fused_op
                # Vectorized right away (its tile is static): the decomposition steps then
                # find exactly the generics the online_attention decomposes into.
                structured.VectorizeOp(fused)
        transform.YieldOp()


@contextlib.contextmanager
def _if_mask_source(attention: ir.Value, depth: int, op_name: str) -> Iterator[ir.Value]:
    """Inside `transform.sequence failures(suppress)`: yields the op `depth` producers behind
    the attention's mask operand (through operand 0 of each), if it is an `op_name`; the
    steps emitted in the `with` block are skipped otherwise."""
    seq = transform.SequenceOp(transform.FailurePropagationMode.Suppress, [], attention)
    with ir.InsertionPoint(seq.body):
        value = transform.GetProducerOfOperand(_any(), seq.bodyTarget, 4).result
        for _ in range(depth):
            value = transform.GetProducerOfOperand(_any(), value, 0).result
        transform.MatchOperationNameOp(value, [op_name])
        yield value
        transform.YieldOp()


def tile_keys(attention: ir.Value, dims: Dims, knobs: FlashKnobs) -> tuple[ir.Value, ir.Value]:
    """Tile the key loop by `key_tile`; returns (tiled online_attention, scf.for)."""
    sizes = [0] * dims.rank
    sizes[dims.k2] = knobs.key_tile
    tiled = structured.TileUsingForOp(attention, sizes=sizes)
    return tiled.tiled_linalg_op, tiled.loops[0]


def decompose(func: ir.Value, pred: CodegenPredicate, knobs: FlashKnobs) -> None:
    """Decompose every online_attention of the func (full key tiles and the peeled remainder,
    each in its own `scf.for`) and, for the "mlanes" layout, interchange the pieces' loops
    (`interchange_mlanes`)."""
    found = structured.MatchOp.match_op_names(func, [ONLINE_ATTENTION]).result
    each = transform.ForeachOp([], [found])
    with ir.InsertionPoint(each.body):
        attention = each.body.arguments[0]
        key_loop = transform.GetParentOp(_any(), attention, op_name="scf.for").result
        iree_ops.decompose_aggregate_op(attention)
        if knobs.layout == "mlanes":
            pieces = interchange_mlanes(key_loop, pred)
            if splits_max(knobs):
                mark_max(pieces["max"])
            if unrolls_matmuls(knobs):
                qk = pack_query_rows(pieces["qk"], pred, knobs)
                iree_ops.annotate(qk, ROLLED_QK_ATTR, ir.UnitAttr.get())
                iree_ops.annotate(pieces["pv"], OUTER_PRODUCTS_ATTR, ir.UnitAttr.get())
            if tiles_values(pred, knobs):
                tile_values(pieces["pv"], pred, knobs)
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


def mlanes_interchanges(pred: CodegenPredicate) -> dict[str, list[int]]:
    """Loop interchanges (new loop i = old loop perm[i]) that put the query-row loop
    innermost and reductions outermost: Q scaling `(b, k1, m)`, Q·Kᵀ `(b, k1, k2, m)`,
    softmax `(b, k2, m)`, accumulator rescale `(b, n, m)`, P·V `(b, k2, n, m)`. The two
    `(b, m)` statistics ops need none."""
    b = [0] if pred.batched else []
    o = len(b)  # first non-batch loop
    swap = b + [o + 1, o]                    # (b, m, x) -> (b, x, m)
    rotate = b + [o + 1, o + 2, o]           # (b, m, r, x) -> (b, r, x, m)
    perms = {"scale_q": swap, "qk": rotate, "scale_acc": swap, "pv": rotate}
    for name in ("qk_elementwise", "mask", "max", "p", "sum", "truncate_p"):
        perms[name] = swap
    return perms


def interchange_mlanes(key_loop: ir.Value, pred: CodegenPredicate) -> dict[str, ir.Value]:
    """Interchange the decomposed generics inside `key_loop` (see `mlanes_interchanges`), so
    that vectorization puts the query rows on the lanes: both matmuls become multiply +
    outer-dim reduction, i.e. FMAs of broadcast K / V elements with vectors of query rows,
    and the softmax reductions become element-wise across vectors. Fails unless the loop
    holds exactly the generics `decomposed_generics` lists. Returns the interchanged ops by
    their `decomposed_generics` name."""
    names = decomposed_generics(pred)
    found = structured.MatchOp.match_op_names(key_loop, ["linalg.generic"]).result
    generics = transform.SplitHandleOp([_any()] * len(names), found,
                                       pass_through_empty_handle=False).results
    perms = mlanes_interchanges(pred)
    return {name: structured.InterchangeOp(g, iterator_interchange=perms[name]).result
            for name, g in zip(names, generics, strict=True) if name in perms}


SPLIT_MAX_ATTR = "tdkit.split_max"
OUTER_PRODUCTS_ATTR = "tdkit.outer_products"
ROLLED_QK_ATTR = "tdkit.rolled_qk"
# Head-dim steps per iteration of the rolled Q·Kᵀ loop (`unroll_matmuls`). At 4x1024x1024x128
# and 8x1024x1024x64 f32 (one core, two interleaved runs) 2, 4, 8 and a full unroll were
# within 5% of each other; 4 keeps the loop body near 140 instructions.
QK_UNROLL = 4


def unrolls_matmuls(knobs: FlashKnobs) -> bool:
    """Whether the matmuls are unrolled into rank-1 updates: `outer_products` and layout
    "mlanes" (like `value_tile` and `max_split`, the knob does nothing with layout "rows")."""
    return knobs.outer_products and knobs.layout == "mlanes"


def pack_query_rows(qk: ir.Value, pred: CodegenPredicate, knobs: FlashKnobs) -> ir.Value:
    """Pack the interchanged Q·Kᵀ `(b, k1, k2, m)` along the query rows with an inner tile of
    `rows` (`transform.structured.pack`): the scaled Q tile becomes `[1,] 1 x D x rows` and the
    score tile `[1,] 1 x key_tile x rows`, i.e. stored `(k, m)`, so a head-dim column of Q is one
    contiguous row vector instead of a strided gather. The Q pack is loop-invariant (vectorized
    and hoisted, it is one transpose per workgroup); the score tile's unpack meets the
    `(k2, m)`-interchanged softmax pieces and folds away after vectorization. Returns the
    packed generic `(b, k1, k2, m_outer, m)`.

    With `uses_bf16_dot` the head dim is packed by 2 as well and Q's inner tiles transposed
    (`transform.structured.pack_transpose`): Q is stored `[1,] 1 x D/2 x rows x 2`, each
    query row's (Q[m, d], Q[m, d+1]) pair side by side, which is `vdpbf16ps`'s operand layout,
    so the rolled head-dim loop loads it as it is instead of interleaving two Q columns per
    step (1.03x at 8x1024x1024x64, side by side); K's tile is stored `key_tile x D/2 x 2` (a
    copy per key step), each pair one 32-bit broadcast. The packed generic is then
    `(b, k1/2, k2, m_outer, 2, m)`."""
    pair = 2 if uses_bf16_dot(knobs, pred) else 0
    sizes = ([0] if pred.batched else []) + [pair, 0, knobs.rows]
    packed = structured.PackOp(_any(), qk, [], static_packed_sizes=sizes).result
    if pair:
        q_pack = transform.GetProducerOfOperand(_any(), packed, 0).result
        packed = structured.PackTransposeOp(_any(), _any(), _any(), q_pack, packed,
                                            inner_perm=[1, 0]).packed_op
        # K's pack only splits its innermost dim: a reshape of the K slice, not a copy.
        k_pack = transform.CastOp(transform.OperationType.get("linalg.pack"),
                                  transform.GetProducerOfOperand(_any(), packed, 1).result)
        structured.LowerPackOp(*(transform.OperationType.get(n) for n in
                                 ("tensor.pad", "tensor.expand_shape", "linalg.transpose")),
                               k_pack.result)
    return packed


def uses_bf16_dot(knobs: FlashKnobs, pred: CodegenPredicate) -> bool:
    """Whether both matmuls run on `vdpbf16ps` (`FlashKnobs.bf16_dot`): bf16 inputs, the
    packed outer-product kernel, an even head dim, a known N, whole 16-lane row vectors, and
    rows, key_tile and 2 all different (`x86_bf16.build_packed_qk_matcher`)."""
    return (knobs.bf16_dot and unrolls_matmuls(knobs) and pred.dtype == DType.BF16
            and pred.head_dim is not None and pred.head_dim % 2 == 0
            and pred.value_dim is not None and knobs.rows % x86_bf16.LANES == 0
            # the pair-packed Q·Kᵀ matcher tells its operands apart by their sizes
            and len({knobs.rows, knobs.key_tile, 2}) == 3)


def unroll_matmuls(func: ir.Value, pred: CodegenPredicate, step: int = 1) -> None:
    """Unroll the reduction of every marked matmul, Q·Kᵀ `(b, k1, k2, m)` over the head dim
    and P·V `(b, k2, n, m)` over the keys (after the value tiles were split off), into
    rank-1 updates (`tile_using_for` by 1, then a full unroll): the vectorized key step is
    then a sequence of `key_tile x rows` (Q·Kᵀ) and `value_tile x rows` (P·V) register-block
    updates, each a broadcast K / V element times query-row vectors, in reduction order.
    Left whole, each matmul vectorizes to one `D x key_tile x rows` multiply followed by the
    adds, and LLVM's scheduling of that (or, with 32 rows, of the two halves of every
    vector) spilled products and broadcasts: 3994 stack stores per step at rows 32 x 8 keys
    x head dim 128, against 560 unrolled.

    With `step` 2 (`uses_bf16_dot`) every P·V update takes a pair of keys instead, and each
    step of the pair-packed Q·Kᵀ (`pack_query_rows`) a pair of head-dim elements, which
    `x86_bf16.use_dot` turns into `vdpbf16ps`.

    Q·Kᵀ, packed by `pack_query_rows`, keeps its head-dim loop: tiled by 1 and unrolled by
    `QK_UNROLL`, each iteration loads one contiguous Q column pair and updates the score
    block in registers. Fully unrolled, the key step at rows 32 x 8 keys x head dim 128 was
    a 65 KB loop body (11679 instructions, twice the 32 KiB L1 instruction cache: the front
    end fed it at about 70% of the FMA rate in a microbenchmark of that size); with the rolled
    Q·Kᵀ it is 36 KB, and one core ran the call 1.16x as fast (1.05x at head dim 64)."""
    batch = [0] if pred.batched else []
    marked = structured.MatchOp(_any(), func, ops=["linalg.generic"],
                                op_attrs={OUTER_PRODUCTS_ATTR: ir.UnitAttr.get()}).result
    each = transform.ForeachOp([], [marked])
    with ir.InsertionPoint(each.body):
        tiled = structured.TileUsingForOp(each.body.arguments[0], sizes=batch + [step, 0, 0])
        loop.LoopUnrollFullOp(tiled.loops[0])
        transform.YieldOp()
    rolled = structured.MatchOp(_any(), func, ops=["linalg.generic"],
                                op_attrs={ROLLED_QK_ATTR: ir.UnitAttr.get()}).result
    each = transform.ForeachOp([], [rolled])
    with ir.InsertionPoint(each.body):
        # the pair-packed Q·Kᵀ (bf16) steps its outer head-dim loop by 1: a pair per step
        tiled = structured.TileUsingForOp(each.body.arguments[0], sizes=batch + [1, 0, 0, 0])
        loop.LoopUnrollOp(tiled.loops[0], factor=QK_UNROLL)
        transform.YieldOp()


def max_split_factor(knobs: FlashKnobs) -> int:
    """The split factor of the running max: `max_split`, at most the key tile; 0 = none."""
    factor = min(knobs.max_split, knobs.key_tile)
    return factor if factor >= 2 else 0


def splits_max(knobs: FlashKnobs) -> bool:
    """Whether the running max is split (`split_maxima`): layout "mlanes" and a factor."""
    return knobs.layout == "mlanes" and max_split_factor(knobs) > 0


def mark_max(max_op: ir.Value) -> None:
    """Mark the interchanged running-max generic for `split_maxima` (which runs once the
    peeled remainder's key tile has become static)."""
    iree_ops.annotate(max_op, SPLIT_MAX_ATTR, ir.UnitAttr.get())


def split_maxima(func: ir.Value, pred: CodegenPredicate, knobs: FlashKnobs) -> None:
    """Split every marked running-max generic `(b, k2, m)` over a full key tile into
    `max_split` partial maxima over the key tile and a combining max (`split_reduction`: a
    new parallel loop before k2, its partials initialized to -inf); after vectorization the
    partials are independent chains across vectors. The generics are matched by their
    operand types, scores `[1,] rows x key_tile` and maxima `[1,] rows`, so a peeled
    remainder's max (a smaller key tile, which the factor may not divide: `split_reduction`
    then fails definitely) keeps one chain."""
    f32 = ir.F32Type.get()
    lead = [1] if pred.batched else []
    types = [ir.RankedTensorType.get([*lead, knobs.rows, knobs.key_tile], f32),
             ir.RankedTensorType.get([*lead, knobs.rows], f32)]
    full = structured.MatchOp(_any(), func, ops=["linalg.generic"],
                              op_attrs={SPLIT_MAX_ATTR: ir.UnitAttr.get()},
                              filter_operand_types=types).result
    each = transform.ForeachOp([], [full])
    with ir.InsertionPoint(each.body):
        structured.structured_split_reduction(
            _any(), _any(), _any(), _any(), each.body.arguments[0],
            split_factor=max_split_factor(knobs), insert_split_dimension=1 if pred.batched else 0)
        transform.YieldOp()


def tiles_values(pred: CodegenPredicate, knobs: FlashKnobs) -> bool:
    """Whether P·V and the accumulator rescale are split into value-column tiles: layout
    "mlanes", a `value_tile` dividing the predicate's exact N and smaller than it (a library
    for any N, `pred.value_dim is None`, keeps the whole accumulator)."""
    n, tile = pred.value_dim, knobs.value_tile
    return (knobs.layout == "mlanes" and tile > 0 and n is not None and tile < n
            and n % tile == 0)


def tile_values(pv: ir.Value, pred: CodegenPredicate, knobs: FlashKnobs) -> None:
    """Tile P·V along N by `value_tile` and fuse its producers into the tiles, then fully
    unroll the tile loop: each tile rescales its accumulator columns and accumulates P·V into
    them, so the key loop carries N / value_tile accumulator vectors, one live at a time.

    `transform.structured.fuse` is the one route found that fuses the rescale, which produces
    P·V's *destination* (`fuse_into_containing_op` refuses it in an `scf.for`: "producer op use
    by containing op cannot be fused by cloning"; fused into an `scf.forall`, `forall_to_for`
    fails: "unsupported shared outputs"). Without `apply_cleanup` it also fuses (clones) the
    score and softmax chain into every tile; CSE merges the copies after the unroll (measured:
    same FMA count as without tiling). With `apply_cleanup = true` P·V's destination is not
    rewired to the fused rescale (the rescale is dropped: wrong results)."""
    sizes = ([0] if pred.batched else []) + [0, knobs.value_tile, 0]
    fused = structured.FuseOp([_any()], pv, tile_sizes=sizes, apply_cleanup=False)
    loop.LoopUnrollFullOp(fused.loops[0])


def vectorize_key_loop_generics(func: ir.Value) -> None:
    """Vectorize the generics of the key loops on their own, then hoist the accumulator
    tiles' `tensor.extract_slice` / `tensor.insert_slice` pairs out of every key loop, which
    then carries each `rows x value_tile` tile as a tensor of its own; the later subset
    hoisting turns the tiles' transposing read / write pairs into `value_tile x rows` vector
    iter_args. Left in the loop, the insert_slices either become a `vector.transpose` +
    identity write (vectorized by `vectorize_children_and_apply_patterns`; paired by the
    subset hoisting with the transposing read of a square tile: a wrong result), or, folded
    into the transposing `transfer_write`s (`fold_tensor_subset_ops_into_vector_transfers`),
    fold only for square tiles (rows = value_tile): a non-square tile was transposed twice
    per key step."""
    loops = structured.MatchOp.match_op_names(func, ["scf.for"]).result
    each = transform.ForeachOp([], [loops])
    with ir.InsertionPoint(each.body):
        generics = structured.MatchOp.match_op_names(each.body.arguments[0],
                                                     ["linalg.generic"]).result
        structured.VectorizeOp(generics)
        transform.YieldOp()
    hoist_subsets(func)


def hoist_subsets(func: ir.Value) -> None:
    """`hoist_loop_invariant_subsets` on every `scf.for` of the func."""
    loops = structured.MatchOp.match_op_names(func, ["scf.for"]).result
    each = transform.ForeachOp([], [loops])
    with ir.InsertionPoint(each.body):
        loop.HoistLoopInvariantSubsetsOp(each.body.arguments[0])
        transform.YieldOp()


def vectorize(func: ir.Value, knobs: FlashKnobs, value_tiles: bool = False) -> ir.Value:
    """Vectorize every static linalg op of the func; returns the func handle.

    "mlanes": the vectorizer must keep each op in its interchanged iteration order, so its
    transfer-permutation lowering and multi-reduction-to-contraction patterns are off; the
    accumulator's (transposing) read/write pair is hoisted out of every key loop, which then
    carries it as an `N x rows` vector; only then are permuted transfers lowered and the
    loop-invariant parts (Q scaled and transposed) hoisted."""
    mlanes = knobs.layout == "mlanes"
    if value_tiles:
        vectorize_key_loop_generics(func)
    vectorized = structured.VectorizeChildrenAndApplyPatternsOp(
        func, disable_transfer_permutation_map_lowering_patterns=mlanes,
        disable_multi_reduction_to_contract_patterns=mlanes, vectorize_padding=True).result
    with ir.InsertionPoint(transform.ApplyPatternsOp(vectorized).patterns):
        transform.ApplyCanonicalizationPatternsOp()
    if mlanes:
        hoist_subsets(vectorized)
        with ir.InsertionPoint(transform.ApplyPatternsOp(vectorized).patterns):
            tvector.ApplyTransferPermutationPatternsOp()
        with ir.InsertionPoint(transform.ApplyPatternsOp(vectorized).patterns):
            transform.ApplyCanonicalizationPatternsOp()
        iree_ops.apply_licm(vectorized)
    transform.ApplyCommonSubexpressionEliminationOp(vectorized)
    return vectorized


def bufferize(func: ir.Value) -> ir.Value:
    """Eliminate empty tensors, bufferize, hoist loop-invariant vector transfers; returns the
    bufferized func handle."""
    iree_ops.eliminate_empty_tensors(func)
    with ir.InsertionPoint(transform.ApplyPatternsOp(func).patterns):
        structured.ApplyEraseUnnecessaryInputsPatternsOp()
    memref_func = iree_ops.bufferize(func)
    steps.cleanup(memref_func)
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
        if i == 2:  # hoist what the contraction lowering made loop-invariant
            iree_ops.apply_licm(func)
    transform.ApplyCommonSubexpressionEliminationOp(func)


def padding_values(pred: CodegenPredicate) -> list[ir.Attribute]:
    """One padding value per online_attention operand, equal to the fill of each init (so
    pad(fill) folds): Q, K, V, scale, [mask], acc = 0, max = f32 lowest, sum = 0."""
    elem = (pred.dtype or DType.F32).mlir_type()
    f32 = ir.F32Type.get()
    zero = ir.FloatAttr.get(elem, 0.0)
    values = [zero, zero, zero, zero]
    if pred.mask in (CODEGEN_MASK_FLOAT, CODEGEN_MASK_KEYS):
        values.append(zero)
    elif pred.mask == CODEGEN_MASK_BOOL:  # padded rows see every key: no 0/0 in them
        values.append(ir.IntegerAttr.get(ir.IntegerType.get_signless(8), 1))
    values += [ir.FloatAttr.get(f32, 0.0), ir.FloatAttr.get(f32, F32_LOWEST),
               ir.FloatAttr.get(f32, 0.0)]
    return values


def row_maxima(knobs: FlashKnobs) -> list[tuple[tuple[int, ...], int]]:
    """The full key tile's row-maximum reductions after vectorization, as (source shape
    without the batch dim, reduced dim): with `max_split` S the partial maxima `(S, key_tile /
    S, rows)` over dim 1 and their combination `(S, rows)` over dim 0, else `(key_tile,
    rows)` over dim 0."""
    rows, kt, split = knobs.rows, knobs.key_tile, max_split_factor(knobs)
    if splits_max(knobs):
        return [((split, kt // split, rows), 1), ((split, rows), 0)]
    return [((kt, rows), 0)]


def exp_shapes(knobs: FlashKnobs) -> list[tuple[int, ...]]:
    """The full key tile's exps after vectorization, without the batch dim: the
    probabilities `(key_tile, rows)` and the accumulator's rescale factors `(rows,)`."""
    return [(knobs.key_tile, knobs.rows), (knobs.rows,)]


def uses_fast_exp(knobs: FlashKnobs) -> bool:
    """Whether the key step's exps run on `x86_helpers.build_exp_helper`
    (`FlashKnobs.fast_exp`): layout "mlanes", whole 16-lane row vectors, and `math.exp`
    (with `exp2` the decomposition emits `math.exp2`)."""
    return (knobs.fast_exp and not knobs.exp2 and knobs.layout == "mlanes"
            and knobs.rows % x86_helpers.LANES == 0)


def uses_vmaxps(knobs: FlashKnobs) -> bool:
    """Whether the row maxima run on `vmaxps` (`FlashKnobs.vmaxps`): layout "mlanes", whole
    16-lane row vectors, and maxima whose types fix their reduction dims, each over at least
    two elements (a split into single keys, key_tile 4 with max_split 4, leaves partial
    "maxima" of one key that canonicalization folds away)."""
    return (knobs.vmaxps and knobs.layout == "mlanes" and knobs.rows % x86_helpers.LANES == 0
            and all(x86_helpers.maxima_forced(src, dim) and src[dim] > 1
                    for src, dim in row_maxima(knobs)))


def build_codegen_spec(name: str, knobs: FlashKnobs, pred: CodegenPredicate
                       ) -> transform.NamedSequenceOp:
    """Emit `@name(%variant {transform.readonly})` lowering one attention dispatch that
    satisfies `pred` (rank, mask kind, dtype) with `knobs`, at the current insertion point
    (inside a module with `transform.with_named_sequence`)."""
    knobs.check()
    dims = Dims(pred.rank)
    bf16_dot = uses_bf16_dot(knobs, pred)
    helpers: list[x86_helpers.Helper] = []  # module-level helpers, matchers and actions
    if bf16_dot:
        value_tile = knobs.value_tile if tiles_values(pred, knobs) else pred.value_dim
        helpers += x86_bf16.emit(name, pred.batched, [("pv", (value_tile,))], knobs.rows,
                                 trunc_keys=knobs.key_tile, packed_qk=knobs.key_tile)
    if uses_vmaxps(knobs):
        helpers += x86_helpers.emit_maxima(name, pred.batched, row_maxima(knobs))
    if uses_fast_exp(knobs):
        helpers += x86_helpers.emit_exps(name, pred.batched, exp_shapes(knobs))
    seq = transform.NamedSequenceOp(name, [_any()], [],
                                    arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        func = match_one(seq.bodyTarget, "func.func")
        attention = match_one(func, ONLINE_ATTENTION)
        func, attention = distribute(func, attention, dims, knobs)
        attention = pad_rows(attention, dims, knobs, padding_values(pred))
        pad_normalize(attention, dims, knobs, pred)
        attention, key_loop = tile_keys(attention, dims, knobs)
        steps.peel_last_iteration(key_loop)
        fuse_mask_padding(func, pred)
        decompose(func, pred, knobs)
        steps.cleanup(func)
        if splits_max(knobs):
            split_maxima(func, pred, knobs)
        if unrolls_matmuls(knobs):
            unroll_matmuls(func, pred, step=2 if bf16_dot else 1)
        func = vectorize(func, knobs, tiles_values(pred, knobs))
        if helpers:
            func = x86_helpers.apply_helpers(func, helpers)
        func = bufferize(func)
        if bf16_dot:  # the packed Q pairs' rows x 2 reads become one contiguous load
            with ir.InsertionPoint(transform.ApplyPatternsOp(func).patterns):
                tvector.ApplyFlattenVectorTransferOpsPatternsOp()
        func = lower_vectors(func, knobs)
        iree_ops.annotate(func, "translation_info", iree_ops.translation_info_no_pipeline())
        if helpers:
            x86_helpers.drop_helpers(func)
        transform.YieldOp()
    return seq


# --- Library entries ---------------------------------------------------------------------------

# With it, IREE clones an attention mask's generator into the attention dispatch
# (`isAttentionMaskGenerator` in IREE's dispatch formation); at its default -O0 it does not.
AGGRESSIVE_FUSION = ("--iree-dispatch-creation-enable-aggressive-fusion",)
# LLVM's machine scheduler, given a key step of unrolled rank-1 updates (`outer_products`),
# regroups them by accumulator across the whole step and spills: with rows 32 x 8 keys x
# value_tile 4 at 4x1024x1024x128 f32 the step ran 0.24x as fast as with the scheduler off.
KEEP_ORDER_FLAGS = ("--enable-misched=false",)
# IREE's default limit on a dispatch's static stack allocations (`memref.alloca`), bytes.
IREE_STACK_ALLOCATION_LIMIT = 32 * 1024


def stack_allocations(knobs: FlashKnobs, head_dim: int, value_dim: int) -> int:
    """Bytes of `memref.alloca` an `outer_products` kernel asks for, roughly: the scaled query
    tile and the accumulator tile (rows x (D + N) f32), plus the statistics."""
    return knobs.rows * (head_dim + value_dim) * 4 + 4096


def llvm_flags(knobs: FlashKnobs, pred: CodegenPredicate) -> tuple[str, ...]:
    """iree-compile flags an `outer_products` kernel needs: `KEEP_ORDER_FLAGS`, and a higher
    stack-allocation limit when its tiles need more than IREE's default (rows 32 at head dim
    128: 33920 bytes); none otherwise."""
    if not unrolls_matmuls(knobs):
        return ()
    flags = KEEP_ORDER_FLAGS
    need = stack_allocations(knobs, pred.head_dim or 64, pred.value_dim or pred.head_dim or 64)
    if need > IREE_STACK_ALLOCATION_LIMIT:
        limit = 1 << (need - 1).bit_length()  # IREE takes powers of two only
        flags += (f"--iree-llvmcpu-stack-allocation-limit={limit}",)
    return flags


def spec_name(pred: CodegenPredicate) -> str:
    return f"tdkit_attention_flash_{predicate_name(pred)}"


def library_entry(knobs: FlashKnobs, pred: CodegenPredicate,
                  compile_flags: tuple[str, ...] = ()) -> LibraryEntry:
    """The flash spec for dispatches satisfying `pred`, and its matcher."""
    knobs.check()
    return LibraryEntry(
        strategy=FAMILY,
        spec_name=spec_name(pred),
        build_matcher=lambda n: build_codegen_matcher(n, pred),
        build_spec=lambda n: build_codegen_spec(n, knobs, pred),
        config=(knobs, pred),
        compile_flags=compile_flags,
    )


def predicates_for(problem: Any, *, exact: bool = False,
                   mask: str | None = None) -> list[CodegenPredicate]:
    """The codegen predicate a problem's dispatch satisfies (batched iff the batch size is
    not 1; see `problem_mask`; with `exact`, also its M, K2 and batch size), or, for None,
    every variant with head dims up to 64 (the size `check()` validates the knobs for
    without a problem). `mask` overrides the codegen mask kind (a raised chain's mask, e.g. a
    key-padding mask the problem itself cannot express)."""
    if problem is None:
        return codegen_predicates(max_head_dim=64)
    batched = problem.batch_size != 1
    sizes = dict(m=problem.m, k2=problem.k2,
                 batch=problem.batch_size if batched else None) if exact else {}
    return [CodegenPredicate(batched=batched, mask=mask or problem_mask(problem),
                             dtype=problem.dtype,
                             head_dim=problem.d, value_dim=problem.value_dim, **sizes)]


def problem_mask(problem: Any) -> str:
    """The codegen mask kind of an Attention problem's dispatch: a user mask (with causal
    folded in) is float; causal alone is a boolean (m, k2) mask."""
    if problem.mask:
        return CODEGEN_MASK_FLOAT
    return CODEGEN_MASK_BOOL if problem.causal else CODEGEN_MASK_NONE


def library_entries(problem: Any, knobs: FlashKnobs, *, exact: bool = False,
                    mask: str | None = None) -> list[LibraryEntry]:
    """Entries for `problem`'s attention dispatch (or any attention dispatch for None); with
    `exact`, matching only its exact sizes (exported tuned strategies).

    A causal-only problem's entry asks for `AGGRESSIVE_FUSION`: IREE then clones the causal
    mask's generator into the attention dispatch instead of writing an M x K2 mask to memory
    in a dispatch of its own, and `fuse_mask_padding` computes it tile by tile."""
    flags = AGGRESSIVE_FUSION if (problem is not None and mask is None
                                  and problem_mask(problem) == CODEGEN_MASK_BOOL) else ()
    return [library_entry(knobs, p, flags + llvm_flags(knobs, p))
            for p in predicates_for(problem, exact=exact, mask=mask)]


__all__: Sequence[str] = ["FlashKnobs", "build_codegen_spec", "library_entries"]
