"""The GPU targets tdkit strategies compile for, and the hardware limits their knobs must respect.

Limits are the ones IREE 3.13 reports in `#iree_gpu.target` (`max_thread_count_per_workgroup`,
`max_workgroup_counts`, subgroup size) and the static shared-memory budget a kernel may use
without opting in to more: 48 KiB per block on CUDA, 64 KiB of LDS per workgroup on gfx942.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdkit.strategies.base import KnobError


@dataclass(frozen=True)
class GpuTarget:
    """One GPU a strategy is compiled for.

    Attributes:
      name: what users type, e.g. "cuda:sm_80".
      backend: "cuda" or "rocm".
      arch: `--iree-cuda-target` / `--iree-rocm-target` value, e.g. "sm_80", "gfx942".
      subgroup_size: threads of a warp (32) or wavefront (64).
      max_threads_per_block: threads of one workgroup.
      max_shared_memory_bytes: static shared memory (LDS) one workgroup may allocate.
      max_grid_yz: workgroups along grid y and z (x allows 2**31 - 1 everywhere); 65535
        unless the target is known to allow more.
    """

    name: str
    backend: str
    arch: str
    subgroup_size: int
    max_threads_per_block: int
    max_shared_memory_bytes: int
    max_grid_yz: int = 65535


TARGETS: dict[str, GpuTarget] = {
    t.name: t for t in (
        GpuTarget("cuda:sm_80", "cuda", "sm_80", 32, 1024, 48 * 1024, 65535),
        GpuTarget("cuda:sm_90", "cuda", "sm_90", 32, 1024, 48 * 1024, 65535),
        GpuTarget("rocm:gfx942", "rocm", "gfx942", 64, 1024, 64 * 1024, 2**31 - 1),
    )
}


def parse_target(text: str | GpuTarget) -> GpuTarget:
    """The GpuTarget named `text` ("cuda:sm_80", "cuda:sm_90" or "rocm:gfx942"); a GpuTarget
    is returned unchanged. KnobError (a ValueError) for any other name."""
    if isinstance(text, GpuTarget):
        return text
    target = TARGETS.get(text)
    if target is None:
        raise KnobError(f"unknown GPU target {text!r}; expected one of {', '.join(TARGETS)}")
    return target
