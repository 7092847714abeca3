"""The `flash_gpu` attention family: configure IREE's GPU attention pipeline (VectorDistribute).

One job: a kernel-config library entry (no codegen spec) that finds an attention dispatch's
`iree_linalg_ext.online_attention` (`tdkit.matchers.attention`) and annotates it so IREE's own
`VectorDistribute` pipeline builds a flash-attention kernel for a CUDA (sm_80, sm_90) or ROCm
(gfx942) target with the tile sizes of `GpuAttentionKnobs`:

    compilation_info = #iree_codegen.compilation_info<
      lowering_config = #iree_gpu.lowering_config<{workgroup = [1, BM, 0, 0, VT],
        reduction = [0, 0, 0, KT, 0], promote_operands = [0, 1, 2], promotion_types = [...]}>,
      translation_info = #iree_codegen.translation_info<pipeline =
        #iree_gpu.pipeline<VectorDistribute> workgroup_size = [W * S, 1, 1] subgroup_size = S,
        {iree_codegen.denormal_fp_math_f32 = #iree_codegen.denormal_fp_math<"preserve-sign">}>>
    decomposition_config = {qk_attrs = {lowering_config = <Q·Kᵀ config>},
                            pv_attrs = {lowering_config = <P·V config>}}

(loops `(b, m, k1, k2, n)`, the batch entry dropped for rank-4 dispatches), plus the marker
`tdkit.strategy = "<entry>"`. Each workgroup (block) takes BM query rows (and VT value columns,
0 = all of N), its W subgroups (warps) split those rows (`subgroup_basis`), the Q tile and each
K/V tile of KT keys are copied to shared memory (`promote_operands`), and the online-softmax loop
walks K2 in steps of KT (the `reduction` tile). No M x K2 buffer exists: the score tile is
BM x KT, held in registers.

Two contraction routes:
* `use_mma=True`: both contractions on the target's matrix instructions (`mma_kind`, f32
  accumulation): `mma.sync.aligned.m16n8k16` on sm_80/sm_90 (f16, bf16), `v_mfma` on gfx942
  (f16, bf16, f32). IREE 3.13 has no f32 (tf32) mma.sync intrinsic.
* `use_mma=False`: SIMT contractions (`lane_basis`/`thread` tiles, lanes split the key tile
  and the head dim, shuffles reduce), also for f32 on CUDA.

What check() enforces was measured with iree-compile 3.13 (compile only, no GPU; probes under
/work/probes/attention_gpu, about 600 compiles including random knob/shape samples):
* IREE copies each promoted tile with a "derived thread" layout (GPUVectorAlloc.cpp): every
  thread moves a 128-bit vector and the threads must tile the copy exactly, else "failed to
  derive layout for promoted read-like op". This rejects head dims / value tiles that are not
  powers of two times the vector (D = 48, 80, 96, 160; value_tile = 48), warp counts such as
  3 or 6, and e.g. key_tile = 48 with 256 threads (`promoted_copy_ok` reimplements the rule).
* Workgroup memory is Q + K + V tiles at the element size (plus the BM x KT probabilities when
  the Q·Kᵀ result layout cannot feed P·V, as with gfx942's f32 MFMA); IREE pads rows against
  bank conflicts only when that still fits, and rejects kernels above its target's
  `max_workgroup_memory_bytes` (sm_80 163 KiB, sm_90 227 KiB here, gfx942 64 KiB).
* Partial tiles are masked and compile when only M or only K2 is partial. When both are
  (M % BM != 0 and K2 % KT != 0) VectorDistribute fails ("failed to distribute", for every
  warp count, M = K2 in {197, 200, 300, 1000, 1200}) for BM == KT, for BM == 16·KT (MMA rows x
  KT), and with mma.sync also for BM == 2·KT == D; gfx942's f32 MFMA then needs an i1 mask in
  shared memory and fails ("failed to emulate bit width").
* SIMT route: lanes split the key tile first; the rest read D and the value tile in 128-bit
  vectors and must tile them (with a partial key tile, D = 32 read by 8 lanes x 8 f16 failed
  to distribute). Every lane keeps its rows' outputs: more than `SIMT_MAX_ACCUMULATORS` per
  thread spilled on gfx942 and compiled for 6-18 s.
* IREE's own constraint (config_llvm_gpu_vd_attention_constraints.mlir): BM is a multiple of
  warps x MMA rows, KT of the intrinsics' K2 extents, D of Q·Kᵀ's K, the value tile of P·V's N.
* Tiles larger than the problem's dims are refused (a key tile above K2 failed: "tile size
  analysis did not determine a valid value").

Compiled results (no GPU to run them): f16/bf16 use mma.sync (sm_80, sm_90) / v_mfma (gfx942)
with shared memory for 1024 and 197-long sequences, D = 64 and 128, causal or masked; f32 uses
v_mfma on gfx942 and the SIMT route on CUDA. IREE's default pipeline uses no matrix
instruction for 197 (M = 1 per workgroup) nor for f32 on CUDA.

sm_90: IREE 3.13 has no built-in sm_90 target (`--iree-cuda-target=sm_90` fails with "missing
GPU target in #hal.executable.target"); `tdkit.tools.toolchain` describes it on the payload
module (Ampere's mma.sync intrinsics, PTX 8.0, 227 KiB).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

from iree.compiler import ir
from iree.compiler.dialects import transform

from tdkit.matchers.attention import CodegenPredicate, build_codegen_matcher, predicate_name
from tdkit.strategies import iree_ops
from tdkit.strategies.attention_flash import predicates_for
from tdkit.strategies.base import require
from tdkit.strategies.gpu_targets import GpuTarget, parse_target
from tdkit.strategies.library import LibraryEntry, configuring_entry, strategy_marker

FAMILY = "flash_gpu"
PIPELINE = "VectorDistribute"
# Bits each thread moves per promoted copy (IREE's kPreferredCopyNumBits).
COPY_BITS = 128
# The workgroup memory IREE 3.13 assumes per target (`max_workgroup_memory_bytes` of its
# `#iree_gpu.target`) and enforces in GPUCheckResourceUsage. IREE's CUDA backend uses dynamic
# shared memory and its runtime opts in to the maximum, so this exceeds CUDA's 48 KiB static
# budget. sm_90 has no IREE target: the value is the one `tdkit.tools.toolchain` declares for it.
IREE_WORKGROUP_MEMORY_BYTES: dict[str, int] = {
    "sm_80": 163 * 1024, "sm_90": 227 * 1024, "gfx942": 64 * 1024,
}
ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2}
# SIMT route: each lane keeps (rows per warp) x (value columns / lanes along N) f32 outputs.
# gfx942 f16, D = 64 (lanes along N = 1): 1 row per warp used 216 VGPRs, 2 rows 410, 4 rows
# 512 VGPRs plus 281 spilled (and compile time grew from 1 s to 6-18 s).
SIMT_MAX_ACCUMULATORS = 128


# --- Matrix instructions per target ----------------------------------------------------------

@dataclass(frozen=True)
class MmaChoice:
    """The matrix instructions of the two contractions, as IREE 3.13 pairs them.

    Attributes:
      shape: the knob value naming this choice (`GpuAttentionKnobs.mma_shape`).
      qk: intrinsic of Q·Kᵀ (M x K2 x K1); pv: intrinsic of P·V (M x N x K2).
      col_major: IREE's transposed (column-major) layouts, chosen so that the Q·Kᵀ result
        feeds P·V in registers.
      p_in_shared: the BM x KT probabilities go through shared memory (layouts do not match).
    """

    shape: str
    qk: str
    pv: str
    col_major: bool = False
    p_in_shared: bool = False

    @property
    def qk_mnk(self) -> tuple[int, int, int]:
        return intrinsic_shape(self.qk)

    @property
    def pv_mnk(self) -> tuple[int, int, int]:
        return intrinsic_shape(self.pv)

    @property
    def m(self) -> int:
        """Query rows of one instruction (both contractions use the same M)."""
        return self.pv_mnk[0]

    @property
    def key_multiple(self) -> int:
        """key_tile must be a multiple of this: Q·Kᵀ's N and P·V's K."""
        return math.lcm(self.qk_mnk[1], self.pv_mnk[2])


_SHAPE_RE = re.compile(r"_(\d+)x(\d+)x(\d+)_")


def intrinsic_shape(name: str) -> tuple[int, int, int]:
    """(M, N, K) of an IREE intrinsic name, e.g. NV_MMA_SYNC_F32_16x8x16_F16 -> (16, 8, 16)."""
    found = _SHAPE_RE.search(name)
    if found is None:
        raise ValueError(f"no MxNxK shape in intrinsic name {name!r}")
    return int(found.group(1)), int(found.group(2)), int(found.group(3))


# Per (backend, input dtype): the choices, the first is the default. These are the pairs IREE's
# own heuristic (KernelConfig.cpp, deduceAttentionSchedule) picks, plus gfx942's 32x32 family;
# all accumulate in f32. gfx942 f16 uses IREE's virtual VMFMA_*x32/x16 for Q·Kᵀ (two MFMAs
# with interleaved K). NV_WMMA_* intrinsics have no distribution layout, block MFMAs
# (4x4x4x16B, ...) are not used for attention by IREE, and CUDA has no f32 intrinsic.
MMA_CHOICES: dict[tuple[str, str], tuple[MmaChoice, ...]] = {
    ("cuda", "f16"): (MmaChoice("16x8", "NV_MMA_SYNC_F32_16x8x16_F16",
                                "NV_MMA_SYNC_F32_16x8x16_F16"),),
    ("cuda", "bf16"): (MmaChoice("16x8", "NV_MMA_SYNC_F32_16x8x16_BF16",
                                 "NV_MMA_SYNC_F32_16x8x16_BF16"),),
    ("rocm", "f16"): (MmaChoice("16x16", "VMFMA_F32_16x16x32_F16", "MFMA_F32_16x16x16_F16",
                                col_major=True),
                      MmaChoice("32x32", "VMFMA_F32_32x32x16_F16", "MFMA_F32_32x32x8_F16",
                                col_major=True)),
    ("rocm", "bf16"): (MmaChoice("16x16", "MFMA_F32_16x16x16_BF16", "MFMA_F32_16x16x16_BF16",
                                 col_major=True),
                       MmaChoice("32x32", "MFMA_F32_32x32x8_BF16", "MFMA_F32_32x32x8_BF16",
                                 col_major=True)),
    ("rocm", "f32"): (MmaChoice("16x16", "MFMA_F32_16x16x4_F32", "MFMA_F32_16x16x4_F32",
                                p_in_shared=True),),
}


def mma_choices(target: GpuTarget, dtype: str) -> tuple[MmaChoice, ...]:
    """The matrix-instruction choices for `dtype` inputs on `target` (empty: none)."""
    return MMA_CHOICES.get((target.backend, str(dtype)), ())


def mma_shapes(target: GpuTarget) -> tuple[str, ...]:
    """Every `mma_shape` value some dtype accepts on `target`."""
    shapes = {c.shape for (backend, _), cs in MMA_CHOICES.items() if backend == target.backend
              for c in cs}
    return tuple(sorted(shapes))


# --- Targets -------------------------------------------------------------------------------

def resolve_target(target: GpuTarget | str) -> GpuTarget:
    """A GpuTarget, or the one named ("cuda:sm_80", "cuda:sm_90", "rocm:gfx942")."""
    return parse_target(target)


def workgroup_memory_limit(target: GpuTarget) -> int:
    """Bytes of workgroup (shared / LDS) memory IREE's pipelines may use on `target`."""
    return IREE_WORKGROUP_MEMORY_BYTES.get(target.arch, target.max_shared_memory_bytes)


# --- Knobs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuAttentionKnobs:
    """Tile sizes and warp count of the VectorDistribute attention kernel.

    Attributes:
      block_m: query rows per workgroup (the workgroup tile of M).
      key_tile: keys per step of the online-softmax loop (the reduction tile of K2); the K and
        V tiles of that many rows sit in shared memory.
      value_tile: value columns (N) per workgroup; 0 = all of N (each workgroup computes its
        scores once; a smaller tile recomputes Q·Kᵀ for every N tile).
      warps: subgroups per workgroup, splitting the query rows (`subgroup_basis`).
      use_mma: contractions on matrix instructions (mma.sync / MFMA); False = SIMT FMAs.
      mma_shape: the matrix instruction family, "" = the target's default: "16x8"
        (mma.sync m16n8k16, CUDA), "16x16" or "32x32" (MFMA, gfx942).
    """

    block_m: int = 64
    key_tile: int = 64
    value_tile: int = 0
    warps: int = 4
    use_mma: bool = True
    mma_shape: str = ""

    def check(self, problem: Any = None, target: GpuTarget | str | None = None) -> None:
        """Raise KnobError with one sentence for invalid values or combinations; with a target,
        for its thread, instruction and shared-memory limits; with a problem too, for its dims
        and dtype (see the module docstring for where each rule comes from)."""
        for name in ("block_m", "key_tile", "warps"):
            value = getattr(self, name)
            require(_is_int(value) and value > 0,
                    f"{name} must be a positive integer, got {value!r}")
        require(_is_int(self.value_tile) and self.value_tile >= 0,
                f"value_tile must be 0 (all of N) or a positive integer, got "
                f"{self.value_tile!r}")
        require(isinstance(self.use_mma, bool), f"use_mma must be a bool, got {self.use_mma!r}")
        require(isinstance(self.mma_shape, str), f"mma_shape must be a string, got "
                                                 f"{self.mma_shape!r}")
        require(self.use_mma or not self.mma_shape,
                f"mma_shape={self.mma_shape!r} needs use_mma=True")
        require(self.warps <= self.block_m,
                f"warps ({self.warps}) exceeds block_m ({self.block_m}): every warp needs at "
                f"least one query row")
        require(self.block_m % self.warps == 0,
                f"block_m ({self.block_m}) must be a multiple of warps ({self.warps}): the "
                f"warps split the query rows evenly")
        if target is None:
            return
        target = resolve_target(target)
        threads = self.warps * target.subgroup_size
        require(threads <= target.max_threads_per_block,
                f"warps x subgroup size = {self.warps} x {target.subgroup_size} = {threads} "
                f"threads exceeds the {target.max_threads_per_block} per block of {target.name}")
        if self.use_mma:
            shapes = mma_shapes(target)
            require(self.mma_shape in ("", *shapes),
                    f"mma_shape {self.mma_shape!r} is not available on {target.name} (choices: "
                    f"{', '.join(shapes)})")
        if problem is None:
            return
        self._check_problem(problem, target)

    def _check_problem(self, problem: Any, target: GpuTarget) -> None:
        dtype = str(problem.dtype)
        m, k2, d, n = problem.m, problem.k2, problem.d, problem.value_dim
        require(self.block_m <= m, f"block_m ({self.block_m}) exceeds the query length M = {m}")
        require(self.key_tile <= k2, f"key_tile ({self.key_tile}) exceeds the key length "
                                     f"K2 = {k2}")
        require(self.value_tile <= n, f"value_tile ({self.value_tile}) exceeds the value dim "
                                      f"N = {n}")
        vt = self.value_tile or n
        require(n % vt == 0, f"value_tile ({vt}) must divide the value dim N = {n}")
        mma = self.mma(target, dtype)
        if self.use_mma:
            names = ", ".join(c.shape for c in mma_choices(target, dtype))
            which = f"matrix instruction {self.mma_shape}" if self.mma_shape else \
                "matrix instruction"
            require(mma is not None,
                    f"{dtype} inputs have no {which} on {target.name}"
                    + (f" (choices: {names})" if names else "; use use_mma=False"))
            assert mma is not None
            rows = self.warps * mma.m
            require(self.block_m % rows == 0,
                    f"block_m ({self.block_m}) must be a multiple of warps x instruction rows "
                    f"= {self.warps} x {mma.m} = {rows}")
            require(self.key_tile % mma.key_multiple == 0,
                    f"key_tile ({self.key_tile}) must be a multiple of {mma.key_multiple} "
                    f"({mma.qk} N x {mma.pv} K)")
            require(d % mma.qk_mnk[2] == 0,
                    f"the head dim D = {d} must be a multiple of {mma.qk_mnk[2]} "
                    f"({mma.qk} K)")
            require(vt % mma.pv_mnk[1] == 0,
                    f"value_tile ({vt}) must be a multiple of {mma.pv_mnk[1]} ({mma.pv} N)")
        else:
            lanes_k1, lanes_k2, vec = simt_lanes(d, dtype, target, self.key_tile)
            require(self.key_tile % lanes_k2 == 0,
                    f"key_tile ({self.key_tile}) must be a multiple of the {lanes_k2} lanes "
                    f"that split each key tile")
            width = lanes_k1 * vec
            require(d % width == 0 and vt % width == 0,
                    f"the head dim D = {d} and value_tile ({vt}) must be multiples of the "
                    f"{lanes_k1} lanes x {vec}-element vectors that read them (key_tile="
                    f"{self.key_tile} leaves {lanes_k1} of the {target.subgroup_size} lanes "
                    f"for them; a larger key_tile leaves fewer)")
            rows = self.block_m // self.warps
            accumulators = rows * math.ceil(vt / lanes_k1)
            require(accumulators <= SIMT_MAX_ACCUMULATORS,
                    f"block_m / warps x value_tile / lanes = {rows} x {vt} / {lanes_k1} = "
                    f"{accumulators} f32 accumulators per thread, above "
                    f"{SIMT_MAX_ACCUMULATORS}: the SIMT route keeps a row's outputs in each lane "
                    f"(use fewer rows per warp)")
        threads = self.warps * target.subgroup_size
        bits = 8 * ITEMSIZE[dtype]
        for what, shape in (("the Q tile", (self.block_m, d)), ("the K tile", (self.key_tile, d)),
                            ("the V tile", (self.key_tile, vt))):
            require(promoted_copy_ok(shape, threads, bits),
                    f"{what} {shape[0]}x{shape[1]} {dtype} cannot be copied to shared memory "
                    f"by {threads} threads in {COPY_BITS}-bit vectors (IREE: 'failed to derive "
                    f"layout for promoted read-like op')")
        smem = shared_memory_bytes(self, problem, target)
        limit = workgroup_memory_limit(target)
        require(smem <= limit,
                f"the shared-memory tiles need {smem} bytes, above the {limit} bytes IREE "
                f"allows on {target.name} (block_m={self.block_m}, key_tile={self.key_tile}, "
                f"value_tile={self.value_tile}, D={d}, {dtype})")
        if m % self.block_m != 0 and k2 % self.key_tile != 0:
            self._check_both_partial(problem, target, mma)

    def _check_both_partial(self, problem: Any, target: GpuTarget, mma: MmaChoice | None
                            ) -> None:
        """Both the query and the key tiles are partial (masked): the combinations
        VectorDistribute fails on in IREE 3.13 ("failed to distribute", measured with
        M = K2 in {200, 300, 1000, 1200}, every warp count)."""
        m, k2, d = problem.m, problem.k2, problem.d
        where = f"with partial tiles in both M = {m} (block_m={self.block_m}) and K2 = {k2} " \
                f"(key_tile={self.key_tile})"
        require(self.block_m != self.key_tile,
                f"block_m == key_tile {where}: IREE 3.13 fails to distribute the masks")
        if mma is None:
            return
        require(self.block_m != mma.m * self.key_tile,
                f"block_m == {mma.m} x key_tile {where}: IREE 3.13 fails to distribute the "
                f"masks")
        require(not (target.backend == "cuda" and self.block_m == 2 * self.key_tile == d),
                f"block_m == 2 x key_tile == D ({d}) {where}: IREE 3.13 fails to distribute "
                f"the mma.sync masks")
        require(not mma.p_in_shared,
                f"{mma.pv} keeps the probabilities in shared memory and IREE 3.13 cannot "
                f"store their i1 mask there ('failed to emulate bit width') {where}: choose "
                f"block_m dividing M or key_tile dividing K2")

    def mma(self, target: GpuTarget | str, dtype: str) -> MmaChoice | None:
        """The matrix instructions these knobs select for `dtype` on `target` (None: none)."""
        if not self.use_mma:
            return None
        for choice in mma_choices(resolve_target(target), str(dtype)):
            if self.mma_shape in ("", choice.shape):
                return choice
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def simt_lanes(head_dim: int, dtype: str, target: GpuTarget, key_tile: int
               ) -> tuple[int, int, int]:
    """(lanes along K1 and N, lanes along K2, elements per thread vector) of the SIMT route:
    128-bit vectors along the head dim and IREE's own split of a subgroup (KernelConfig.cpp,
    setAttentionReductionConfig: about 8 vectors per lane along K1, the other lanes along K2),
    with no more lanes along K2 than the key tile has keys."""
    vec = COPY_BITS // (8 * ITEMSIZE[str(dtype)])
    vectors = max(1, math.ceil(head_dim / vec))
    lanes_k1 = min(_pow2_ceil(math.ceil(vectors / 8)), target.subgroup_size)
    lanes_k2 = target.subgroup_size // lanes_k1
    while lanes_k2 > 1 and lanes_k2 > key_tile:
        lanes_k2 //= 2
    return target.subgroup_size // lanes_k2, lanes_k2, vec


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def promoted_copy_ok(shape: tuple[int, ...], threads: int, bits: int) -> bool:
    """Whether IREE can copy a `shape` tile of `bits`-bit elements to shared memory with
    `threads` threads: its derived thread layout (DerivedConfigUtils.cpp
    getVectorTileSizesFromLoopRanges + GPUNestedLayoutUtils.cpp getDerivedThreadLayout)."""
    vector = COPY_BITS // bits
    rank = len(shape)
    inner = shape[-1]
    flat = math.prod(shape)
    if flat % threads != 0:
        tiles = [1] * (rank - 1) + [vector if inner >= vector else inner]
    else:
        most = min(vector, flat // threads)
        tiles = [1] * rank
        if inner % most == 0 or most % inner == 0:
            tiles[-1] = min(inner, most)
            if inner < most:
                most //= inner
                for i in range(rank - 2, -1, -1):
                    if most % shape[i] != 0:
                        break
                    tiles[i] = shape[i]
                    most //= shape[i]
    residual = threads
    for size, tile in reversed(list(zip(shape, tiles, strict=True))):
        if size % tile != 0:
            return False
        size //= tile
        if residual % size == 0:
            residual //= size
        elif size % residual == 0:
            residual = 1
        else:
            return False
    return True


def shared_memory_bytes(knobs: GpuAttentionKnobs, problem: Any, target: GpuTarget | str) -> int:
    """Workgroup memory of the promoted tiles (Q: block_m x D, K: key_tile x D, V: key_tile x
    value_tile, and the block_m x key_tile probabilities when `MmaChoice.p_in_shared`) at the
    element size, before IREE's optional bank-conflict padding."""
    dtype = str(problem.dtype)
    size = ITEMSIZE[dtype]
    vt = knobs.value_tile or problem.value_dim
    tiles = knobs.block_m * problem.d + knobs.key_tile * problem.d + knobs.key_tile * vt
    mma = knobs.mma(target, dtype)
    if mma is not None and mma.p_in_shared:
        tiles += knobs.block_m * knobs.key_tile
    return tiles * size


# --- Defaults, fitting and the search space --------------------------------------------------

def default_knobs(target: GpuTarget | str, problem: Any = None) -> GpuAttentionKnobs:
    """The knobs this family starts from on `target` (fitted to `problem` when given): 64
    query rows in 4 warps (one 16-row MMA tile per warp), 64-key steps, all of N per
    workgroup, on the target's default matrix instructions; see `fit` for the SIMT route."""
    knobs = GpuAttentionKnobs()
    return fit(problem, knobs, target) if problem is not None else knobs


def _halvings(value: int, floor: int = 1) -> list[int]:
    out = []
    while value >= floor:
        out.append(value)
        value //= 2
    return out


def fit(problem: Any, knobs: GpuAttentionKnobs, target: GpuTarget | str) -> GpuAttentionKnobs:
    """Adapt the *default* knobs to `problem` on `target`.

    Returns the first candidate `check` accepts, trying the query block as is and then halved,
    within each the key tile as is, doubled, then halved, and then the warp count halved: this
    shrinks tiles to small problems and to shared memory, and steps around the partial-tile
    combinations IREE cannot distribute. Where the dtype has no matrix instruction (f32 on
    CUDA), or no matrix configuration passes, it takes the SIMT route with two query rows per
    warp (`SIMT_MAX_ACCUMULATORS`). If nothing passes, the knobs come back unchanged (`check`
    then says why)."""
    target = resolve_target(target)
    knobs = replace(knobs, value_tile=min(knobs.value_tile, problem.value_dim))
    routes = [knobs] if knobs.use_mma and knobs.mma(target, str(problem.dtype)) else []
    routes.append(replace(knobs, use_mma=False, mma_shape="",
                          block_m=min(knobs.block_m, 2 * knobs.warps)))
    for route in routes:
        key_tiles = [route.key_tile, 2 * route.key_tile] + _halvings(route.key_tile // 2)
        for block_m in _halvings(route.block_m):
            for key_tile in key_tiles:
                for warps in _halvings(min(route.warps, block_m)):
                    candidate = replace(route, key_tile=key_tile, block_m=block_m, warps=warps)
                    try:
                        candidate.check(problem, target)
                    except ValueError:
                        continue
                    return candidate
    return knobs


def space(problem: Any, target: GpuTarget | str) -> dict[str, tuple[Any, ...]]:
    """The knob ranges `tdkit tune` searches on `target` (`check` prunes the combinations IREE
    cannot compile before anything is built)."""
    target = resolve_target(target)
    shapes = mma_choices(target, str(problem.dtype)) if problem is not None else ()
    ranges: dict[str, tuple[Any, ...]] = {
        "block_m": (2, 4, 8, 16, 32, 64, 128, 256),
        "key_tile": (16, 32, 64, 128),
        "value_tile": (0, 32, 64),
        "warps": (1, 2, 4, 8),
        "use_mma": (True, False) if shapes or problem is None else (False,),
    }
    if len(shapes) > 1:
        ranges["mma_shape"] = tuple(c.shape for c in shapes)
    return ranges


# --- The configuration ----------------------------------------------------------------------

def _loops(rank: int) -> tuple[int | None, int, int, int, int]:
    """Positions of (batch, m, k1, k2, n) in a rank-5 or rank-4 online_attention."""
    if rank == 5:
        return 0, 1, 2, 3, 4
    return None, 0, 1, 2, 3


def _without(rank: int, dim: int) -> list[int]:
    return [d for d in range(rank) if d != dim]


def lowering_configs(knobs: GpuAttentionKnobs, rank: int, target: GpuTarget, dtype: str,
                     head_dim: int | None = None
                     ) -> tuple[ir.Attribute, ir.Attribute, ir.Attribute]:
    """(the op's `#iree_gpu.lowering_config`, Q·Kᵀ's, P·V's) for a rank-`rank` online_attention
    with `dtype` inputs (the SIMT route also needs the head dim)."""
    b, m, k1, k2, n = _loops(rank)
    workgroup, reduction = [0] * rank, [0] * rank
    if b is not None:
        workgroup[b] = 1
    workgroup[m] = knobs.block_m
    workgroup[n] = knobs.value_tile
    reduction[k2] = knobs.key_tile
    top = iree_ops.gpu_lowering_config({
        "workgroup": iree_ops.i64_array(workgroup), "reduction": iree_ops.i64_array(reduction),
        **iree_ops.promoted_operands([0, 1, 2])})
    counts = [1] * rank
    counts[m] = knobs.warps
    qk: dict[str, ir.Attribute] = {
        **iree_ops.promoted_operands([0, 1]),
        "subgroup_basis": iree_ops.gpu_basis(counts, _without(rank, n))}
    pv: dict[str, ir.Attribute] = {
        **iree_ops.promoted_operands([1]),
        "subgroup_basis": iree_ops.gpu_basis(counts, _without(rank, k1))}
    mma = knobs.mma(target, dtype)
    if mma is not None:
        qk["mma_kind"] = iree_ops.mma_layout(mma.qk, col_major=mma.col_major)
        pv["mma_kind"] = iree_ops.mma_layout(mma.pv, col_major=mma.col_major)
    else:
        if head_dim is None:
            raise ValueError("the SIMT route needs the head dim")
        lanes_k1, lanes_k2, vec = simt_lanes(head_dim, dtype, target, knobs.key_tile)
        lanes = [1] * rank
        lanes[rank - 2], lanes[rank - 1] = lanes_k1, lanes_k2
        # Lanes along K2 vary fastest; K1 (Q·Kᵀ) and N (P·V) share the other lane dim.
        qk_map = [1, 0, 3, 4] if rank == 5 else [0, 2, 3]
        pv_map = [1, 0, 4, 3] if rank == 5 else [0, 3, 2]
        qk["lane_basis"] = iree_ops.gpu_basis(lanes, qk_map)
        pv["lane_basis"] = iree_ops.gpu_basis(lanes, pv_map)
        qk["thread"] = iree_ops.i64_array([vec if d == k1 else 0 for d in _without(rank, n)])
        pv["thread"] = iree_ops.i64_array([vec if d == n else 0 for d in _without(rank, k1)])
    return (top, iree_ops.gpu_lowering_config(qk), iree_ops.gpu_lowering_config(pv))


def build_config_action(name: str, spec_name: str, knobs: GpuAttentionKnobs,
                        pred: CodegenPredicate, target: GpuTarget
                        ) -> transform.NamedSequenceOp:
    """`@name(%op {transform.readonly})`: annotate the online_attention `%op` with the
    compilation_info, the decomposition_config and the tdkit marker."""
    if pred.dtype is None:
        raise ValueError("the GPU attention configuration needs a predicate with a dtype")
    dtype = str(pred.dtype)
    seq = transform.NamedSequenceOp(name, [transform.AnyOpType.get()], [],
                                    arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        op = seq.bodyTarget
        top, qk, pv = lowering_configs(knobs, pred.rank, target, dtype, pred.head_dim)
        info = iree_ops.compilation_info(top, iree_ops.translation_info_gpu_pipeline(
            PIPELINE, [knobs.warps * target.subgroup_size], target.subgroup_size))
        iree_ops.annotate(op, "compilation_info", info)
        iree_ops.annotate(op, "decomposition_config",
                          iree_ops.attention_decomposition_config(qk, pv))
        strategy_marker(op, spec_name)
        transform.YieldOp()
    return seq


def entry_name(pred: CodegenPredicate, target: GpuTarget) -> str:
    """`tdkit_attention_gpu_<arch>_<predicate>`, e.g. `tdkit_attention_gpu_sm_80_b_f16`."""
    return f"tdkit_attention_gpu_{target.arch}_{predicate_name(pred)}"


def library_entry(knobs: GpuAttentionKnobs, pred: CodegenPredicate, target: GpuTarget | str
                  ) -> LibraryEntry:
    """The matcher and configuring action for dispatches satisfying `pred` (no codegen spec).
    The SIMT route needs `pred.head_dim`."""
    target = resolve_target(target)
    knobs.check(None, target)
    name = entry_name(pred, target)
    return configuring_entry(
        FAMILY, name, lambda n: build_codegen_matcher(n, pred),
        lambda n, entry: build_config_action(n, entry, knobs, pred, target),
        config=(knobs, pred, target.name))


def library_entries(problem: Any, knobs: GpuAttentionKnobs, target: GpuTarget | str, *,
                    exact: bool = False, mask: str | None = None) -> list[LibraryEntry]:
    """Entries configuring `problem`'s attention dispatch on `target` (checked against it);
    with `exact`, matching only its exact sizes. For problem None, entries for every dtype
    this route supports on `target` with head dims up to 64 (use_mma: the dtypes with a
    matrix instruction; SIMT: all, for head dim 64 exactly)."""
    target = resolve_target(target)
    if problem is not None:
        knobs.check(problem, target)
        return [library_entry(knobs, p, target)
                for p in predicates_for(problem, exact=exact, mask=mask)]
    preds = predicates_for(None, exact=exact, mask=mask)
    if knobs.use_mma:
        preds = [p for p in preds if knobs.mma(target, str(p.dtype)) is not None]
    else:
        preds = [replace(p, head_dim=64, value_dim=64, max_head_dim=None) for p in preds]
    return [library_entry(knobs, p, target) for p in preds]
