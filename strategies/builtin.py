"""Registers tdkit's built-in strategy families with the registry."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from tdkit.strategies import (
    attention_config,
    attention_flash,
    attention_gpu,
    softmax_cpu,
    softmax_gpu,
)
from tdkit.strategies.base import KnobError
from tdkit.strategies.library import LibraryEntry
from tdkit.strategies.registry import Family, register

MAX_RANK = 4
_MAX = re.compile(r"arith\.max(imum|num)f")


def _softmax_entries(problem: Any, knobs: softmax_cpu.SoftmaxCpuKnobs) -> list[LibraryEntry]:
    if problem is not None:
        return softmax_cpu.library_entries(knobs, rank=problem.rank, dim=problem.axis)
    return [e for rank in range(1, MAX_RANK + 1) for dim in range(rank)
            for e in softmax_cpu.library_entries(knobs, rank=rank, dim=dim)]


# A workgroup should own at least this many elements: with 2 rows of 1024 (the measured best
# for 512x1024) it does; with short rows, more rows per workgroup amortize its overhead
# (2x3x17x129: 2 rows per workgroup ran 1.17x the default, 32 rows 1.97x, one interleaved run).
MIN_WORKGROUP_ELEMENTS = 2048


def _softmax_fit(problem: Any, knobs: softmax_cpu.SoftmaxCpuKnobs) -> softmax_cpu.SoftmaxCpuKnobs:
    """Fit the default tiles of an innermost-dim softmax to its rows: narrower vectors and
    reduction tiles for short rows, more rows per workgroup (keeping at least two workgroups)
    when rows are short."""
    if problem.axis != problem.rank - 1:
        return knobs
    row = problem.shape[problem.axis]
    rows = math.prod(problem.shape[:-1])
    width = knobs.vector_width
    while width > row:
        width //= 2
    tile = min(knobs.reduction_tile, row) // width * width
    per_wg = knobs.rows_per_workgroup
    while per_wg * row < MIN_WORKGROUP_ELEMENTS and per_wg * 4 <= rows:
        per_wg *= 2
    return dataclasses.replace(knobs, vector_width=width, reduction_tile=tile,
                               rows_per_workgroup=per_wg)


def _softmax_check(problem: Any, knobs: softmax_cpu.SoftmaxCpuKnobs) -> None:
    if problem is None:
        knobs.check()
    else:
        knobs.check(problem.shape, problem.axis)


def _softmax_space(problem: Any) -> dict[str, tuple[Any, ...]]:
    """Without a problem (a payload file): the knobs of a softmax over the innermost dim,
    the form frontends write."""
    if problem is None:
        return softmax_cpu.space((1, 1), -1)
    return softmax_cpu.space(problem.shape, problem.axis)


def is_softmax_dispatch(dispatch: Any) -> bool:
    """A dispatch computing (part of) a softmax: a max reduction and an exp, and not an
    attention op (whose region also exponentiates)."""
    src = dispatch.source
    return bool(_MAX.search(src)) and "math.exp" in src and "iree_linalg_ext" not in src


SOFTMAX_CPU = register(Family(
    name="softmax_cpu",
    kinds=("softmax",),
    knobs=softmax_cpu.SoftmaxCpuKnobs,
    entries=_softmax_entries,
    targets=is_softmax_dispatch,
    check=_softmax_check,
    fit=_softmax_fit,
    space=_softmax_space,
    exact_entries=lambda problem, knobs: softmax_cpu.library_entries(
        knobs, rank=problem.rank, dim=problem.axis, shape=problem.shape),
    description="softmax on CPU: rows to workgroups, fused reductions, vectorized, no_pipeline",
))


def _softmax_gpu_entries(problem: Any, knobs: softmax_gpu.SoftmaxGpuKnobs, *,
                         exact: bool = False) -> list[LibraryEntry]:
    if problem is not None:
        return softmax_gpu.library_entries(
            knobs, rank=problem.rank, dim=problem.axis, target=knobs.target,
            dtype=str(problem.dtype), shape=problem.shape if exact else None)
    return [e for rank in range(2, MAX_RANK + 1)
            for e in softmax_gpu.library_entries(knobs, rank=rank, dim=rank - 1,
                                                 target=knobs.target)]


def _softmax_gpu_fit(problem: Any, knobs: softmax_gpu.SoftmaxGpuKnobs
                     ) -> softmax_gpu.SoftmaxGpuKnobs:
    """Per-target defaults for the problem's rows (`softmax_gpu.default_knobs`); knobs
    unchanged for a problem the family cannot take (its `check` then says why)."""
    try:
        return softmax_gpu.default_knobs(problem.shape, knobs.target, str(problem.dtype))
    except KnobError:
        return knobs


def _softmax_gpu_check(problem: Any, knobs: softmax_gpu.SoftmaxGpuKnobs) -> None:
    if problem is None:
        knobs.check()
        return
    if str(problem.dtype) not in softmax_gpu.DTYPES:
        raise KnobError(f"softmax_gpu supports {', '.join(softmax_gpu.DTYPES)}, "
                        f"got {problem.dtype}")
    knobs.check(problem.shape, dim=problem.axis)


def _softmax_gpu_space(problem: Any, target: str) -> dict[str, tuple[Any, ...]]:
    shape = (64, 1024) if problem is None else problem.shape
    dim = -1 if problem is None else problem.axis
    return softmax_gpu.space(shape, dim, target)


SOFTMAX_GPU = register(Family(
    name="softmax_gpu",
    kinds=("softmax",),
    knobs=softmax_gpu.SoftmaxGpuKnobs,
    entries=_softmax_gpu_entries,
    targets=is_softmax_dispatch,
    check=_softmax_gpu_check,
    fit=_softmax_gpu_fit,
    space=_softmax_gpu_space,
    exact_entries=lambda problem, knobs: _softmax_gpu_entries(problem, knobs, exact=True),
    device="gpu",
    description="softmax on CUDA/ROCm: rows to blocks, lanes of a subgroup per row, "
                "vectorized loads, shuffle reductions, no_pipeline",
))


def is_attention_dispatch(dispatch: Any) -> bool:
    """A dispatch holding IREE's codegen form of attention (`online_attention`)."""
    return "iree_linalg_ext.online_attention" in dispatch.source


def _attention_family(module: Any, knobs: type, description: str, *,
                      configures: bool = False) -> Family:
    """Register an attention family from its module (`FAMILY`, `library_entries`, `fit`,
    `space`): both attention families expose the same functions."""
    entries = module.library_entries
    return register(Family(
        name=module.FAMILY,
        kinds=("attention",),
        knobs=knobs,
        entries=lambda problem, k: entries(problem, k),
        targets=is_attention_dispatch,
        check=lambda problem, k: k.check(problem),
        fit=module.fit,
        space=module.space,
        exact_entries=lambda problem, k: entries(problem, k, exact=True),
        masked_entries=lambda problem, k, mask: entries(problem, k, mask=mask),
        configures=configures,
        description=description,
    ))


FLASH = _attention_family(
    attention_flash, attention_flash.FlashKnobs,
    "attention on CPU: query rows to workgroups, online-softmax key loop, decomposed, "
    "vectorized, no_pipeline")
CONFIG = _attention_family(
    attention_config, attention_config.ConfigKnobs,
    "attention on CPU: tile sizes for IREE's LinalgExtTileAndVectorize pipeline",
    configures=True)


@dataclasses.dataclass(frozen=True)
class FlashGpuKnobs(attention_gpu.GpuAttentionKnobs):
    """`attention_gpu.GpuAttentionKnobs` plus the target they are for (set from `--target`)."""

    target: str = "cuda:sm_80"

    def check(self, problem: Any = None, target: Any = None) -> None:
        super().check(problem, self.target if target is None else target)


def _flash_gpu_fit(problem: Any, knobs: FlashGpuKnobs) -> FlashGpuKnobs:
    return attention_gpu.fit(problem, knobs, knobs.target)


FLASH_GPU = register(Family(
    name="flash_gpu",
    kinds=("attention",),
    knobs=FlashGpuKnobs,
    entries=lambda problem, k: attention_gpu.library_entries(problem, k, k.target),
    targets=is_attention_dispatch,
    check=lambda problem, k: k.check(problem),
    fit=_flash_gpu_fit,
    space=attention_gpu.space,
    exact_entries=lambda problem, k: attention_gpu.library_entries(problem, k, k.target,
                                                                   exact=True),
    masked_entries=lambda problem, k, mask: attention_gpu.library_entries(problem, k, k.target,
                                                                          mask=mask),
    configures=True,
    device="gpu",
    description="flash attention on CUDA/ROCm: query tiles to blocks, warps over rows, K/V "
                "tiles in shared memory, online-softmax key loop, mma.sync/MFMA (IREE's "
                "VectorDistribute pipeline, configured)",
))
