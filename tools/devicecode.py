"""Read what a GPU compile produced: the device code (CUDA PTX, ROCm ISA) of each dispatch and
the facts a strategy promises about it (threads per block, shared memory, warp shuffles,
barriers, matrix instructions, vector loads), so GPU strategies can be checked on a machine
without the GPU.

`tools.toolchain.compile_module` dumps the device code of GPU compiles into the artifact
directory (`binaries/*.ptx` for CUDA; `intermediates/*.rocmasm` for ROCm).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from tdkit.tools.toolchain import Artifact

# PTX: `.shared .align 4 .b8 __shared_memory__[4096];`
_PTX_SHARED = re.compile(r"^\s*\.shared\s+(?:\.align\s+\d+\s+)?\.b(\d+)\s+[\w$.]+\[(\d+)\]",
                         re.MULTILINE)
_PTX_DYNAMIC_SHARED = re.compile(r"^\s*\.extern\s+\.shared\b", re.MULTILINE)
_PTX_ENTRY = re.compile(r"\.entry\s+([\w$.]+)")
_PTX_THREADS = re.compile(r"\.(?:reqntid|maxntid)\s+(\d+)(?:,\s*(\d+))?(?:,\s*(\d+))?")
_ROCM_KERNEL = re.compile(r"^\s*\.amdhsa_kernel\s+([\w$.]+)", re.MULTILINE)
_ROCM_LDS = re.compile(r"\.amdhsa_group_segment_fixed_size\s+(\d+)")
_ROCM_THREADS = re.compile(r"\.max_flat_workgroup_size:\s+(\d+)")

# (fact, regex) per backend: counted occurrences in the device code.
_COUNTS: dict[str, dict[str, re.Pattern[str]]] = {
    "cuda": {
        "mma": re.compile(r"\b(?:mma\.sync|wgmma\.mma_async)\S*"),
        "shuffles": re.compile(r"\bshfl\.sync\S*"),
        "barriers": re.compile(r"\b(?:bar\.sync|barrier\.sync)\b"),
        "vector_loads": re.compile(r"\bld\.global(?:\.nc)?\.v[248]\.\S+"),
        "shared_accesses": re.compile(r"\b(?:ld|st)\.shared\S*|\bldmatrix\S*"),
    },
    "rocm": {
        "mma": re.compile(r"\bv_mfma\w*"),
        "shuffles": re.compile(r"\b(?:ds_swizzle\w*|ds_bpermute\w*|v_\w+_dpp)\b|row_shr|"
                               r"row_bcast|quad_perm"),
        "barriers": re.compile(r"\bs_barrier\b"),
        "vector_loads": re.compile(r"\b(?:global|buffer)_load_dwordx[234]\b"),
        "shared_accesses": re.compile(r"\bds_(?:read|write|load|store)\w*"),
    },
}


@dataclass(frozen=True)
class DeviceCode:
    """Facts about the device code of one GPU compile (all dispatches together).

    Attributes:
      backend: "cuda" or "rocm".
      files: the device-code files read (PTX or ROCm ISA listings).
      kernels: kernel entry names.
      threads_per_block: the largest declared block size (`.reqntid`/`.maxntid` product in PTX,
        `.max_flat_workgroup_size` on ROCm), 0 if none is declared.
      shared_bytes: the largest static shared memory (LDS) one kernel declares.
      dynamic_shared: the PTX declares dynamically sized shared memory (IREE's CUDA backend
        sizes it at launch; the lowered IR's `#gpu.address_space<workgroup>` buffers say how
        much).
      mma, shuffles, barriers, vector_loads, shared_accesses: instruction counts (matrix
        instructions: `mma.sync`/`wgmma` or `v_mfma`; warp shuffles: `shfl.sync` or
        `ds_swizzle`/`ds_bpermute`/DPP; `bar.sync` or `s_barrier`; 2-8 wide global loads;
        shared memory loads and stores)."""

    backend: str
    files: tuple[str, ...]
    kernels: tuple[str, ...]
    threads_per_block: int
    shared_bytes: int
    dynamic_shared: bool
    mma: int
    shuffles: int
    barriers: int
    vector_loads: int
    shared_accesses: int
    text: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("text")
        return d

    def mma_instructions(self) -> list[str]:
        """The distinct matrix instructions, e.g. ['mma.sync.aligned.m16n8k16.row.col...']."""
        return sorted(set(_COUNTS[self.backend]["mma"].findall(self.text)))


def device_code(art: Artifact, backend: str) -> DeviceCode:
    """The device code facts of a GPU compile's artifact (`backend` "cuda" or "rocm");
    ValueError if the compile left no device code (not a GPU compile, or it failed)."""
    if backend == "cuda":
        files = sorted((art.dir / "binaries").glob("*.ptx"))
    elif backend == "rocm":
        files = sorted((art.dir / "intermediates").glob("*.rocmasm"))
    else:
        raise ValueError(f"no device code for backend {backend!r}")
    if not files:
        raise ValueError(f"no {backend} device code in {art.dir} (was it compiled for a GPU?)")
    texts = [f.read_text(errors="replace") for f in files]
    text = "\n".join(texts)
    counts = {name: len(rx.findall(text)) for name, rx in _COUNTS[backend].items()}
    if backend == "cuda":
        kernels = tuple(_PTX_ENTRY.findall(text))
        threads = max((_product(m) for m in _PTX_THREADS.findall(text)), default=0)
        shared = max((_ptx_shared(t) for t in texts), default=0)
        dynamic = bool(_PTX_DYNAMIC_SHARED.search(text))
    else:
        dynamic = False
        kernels = tuple(_ROCM_KERNEL.findall(text))
        threads = max((int(n) for n in _ROCM_THREADS.findall(text)), default=0)
        shared = max((int(n) for n in _ROCM_LDS.findall(text)), default=0)
    return DeviceCode(backend, tuple(str(f) for f in files), kernels, threads, shared, dynamic,
                      text=text, **counts)


def _product(groups: tuple[str, ...]) -> int:
    n = 1
    for g in groups:
        if g:
            n *= int(g)
    return n


def _ptx_shared(text: str) -> int:
    """Bytes of static shared memory one PTX module declares."""
    return sum(int(bits) // 8 * int(count) for bits, count in _PTX_SHARED.findall(text))


def memref_shapes(ir_text: str) -> list[tuple[int, ...]]:
    """Every static memref/vector shape written in `ir_text` (`memref<64x128xf16, ...>`,
    `vector<4x8xf32>`), for checks such as "no M x K2 buffer"."""
    shapes = []
    for m in re.finditer(r"\b(?:memref|vector|tensor)<((?:\d+x)+)[a-z]", ir_text):
        shapes.append(tuple(int(d) for d in m.group(1).rstrip("x").split("x")))
    return shapes
