"""Reference points a benchmark compares against, timed in this process: a memory copy (the
bandwidth ceiling), an OpenBLAS SGEMM (the compute ceiling), numpy attention, and torch's
`scaled_dot_product_attention` when torch is installed (the optional `bench` extra). A thread
count, when given, limits the BLAS peers (threadpoolctl) and torch alike."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from tdkit.tools.toolchain import Timing

SGEMM_N = 2048
TORCH_THREADS = 2


def time_callable(fn: Callable[[], object], *, repeats: int = 5, min_time_s: float = 0.05,
                  warmup: int = 1) -> Timing:
    """Per-call wall time of `fn` in ms: `repeats` samples, each the mean over enough calls to
    last `min_time_s`."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    calls = max(1, int(min_time_s / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / calls)
    return Timing(tuple(samples))


def copy_timing(nbytes: int, repeats: int = 5) -> Timing:
    """numpy copying nbytes/2 bytes into another buffer (reads + writes = nbytes): the ceiling
    for a kernel that must read its input and write its output once."""
    src = np.ones(max(1, nbytes // 2), dtype=np.uint8)
    dst = np.empty_like(src)
    return time_callable(lambda: np.copyto(dst, src), repeats=repeats)


@contextlib.contextmanager
def blas_threads(threads: int | None) -> Iterator[None]:
    """Limit numpy's BLAS (OpenBLAS) to `threads` threads inside the block; None: no limit."""
    if threads is None:
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def sgemm_timing(n: int = SGEMM_N, repeats: int = 5, threads: int | None = None
                 ) -> tuple[Timing, float]:
    """OpenBLAS (numpy) f32 n^3 matmul: the machine's practical compute ceiling (with
    `threads` BLAS threads, or BLAS's default). Returns the timing and the FLOPs of one call."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with blas_threads(threads):
        timing = time_callable(lambda: a @ b, repeats=repeats, min_time_s=0.2)
    return timing, 2.0 * n ** 3


def _attention_arrays(problem: Any, seed: int) -> tuple[np.ndarray, ...]:
    q, k, v, *rest = problem.make_inputs(seed)
    return tuple(x.astype(np.float32) for x in (q, k, v, *rest))


def numpy_attention_timing(problem: Any, seed: int = 0, repeats: int = 3,
                           threads: int | None = None) -> Timing:
    """Plain numpy f32 attention (materializes the M x K2 scores), with `threads` BLAS
    threads (or BLAS's default)."""
    q, k, v, *rest = _attention_arrays(problem, seed)
    mask = rest[0] if rest else None
    scale = np.float32(problem.effective_scale)
    causal = None
    if problem.causal:
        causal = np.tril(np.ones((problem.m, problem.k2), dtype=bool))

    def run() -> np.ndarray:
        s = (q @ np.swapaxes(k, -1, -2)) * scale
        if mask is not None:
            s = s + mask
        if causal is not None:
            s = np.where(causal, s, -np.inf)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        return s @ v

    with blas_threads(threads):
        return time_callable(run, repeats=repeats)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_sdpa_timing(problem: Any, seed: int = 0, repeats: int = 5,
                      threads: int | None = None) -> Timing | None:
    """torch `scaled_dot_product_attention` on 4-D (B, H, S, D) inputs (torch picks its flash
    kernel only for 4-D inputs) with `threads` threads (default `TORCH_THREADS` = 2, the
    cores of tdkit's benchmark machines); None when torch is not installed."""
    if not torch_available():
        return None
    import torch
    import torch.nn.functional as F
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[str(problem.dtype)]
    batch = problem.batch
    b, h = (1, batch[0]) if len(batch) == 1 else (math.prod(batch[:-1]), batch[-1])
    arrays = _attention_arrays(problem, seed)

    def as4d(x: np.ndarray) -> Any:
        return torch.from_numpy(x.reshape(b, h, *x.shape[-2:])).to(dtype)

    q, k, v = (as4d(x) for x in arrays[:3])
    mask = as4d(arrays[3]) if problem.mask else None
    if mask is not None and problem.causal:
        keep = torch.ones(problem.m, problem.k2, dtype=torch.bool).tril()
        mask = mask.masked_fill(~keep, float("-inf"))
    scale = problem.effective_scale

    def run() -> Any:
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                  is_causal=problem.causal and mask is None,
                                                  scale=scale)

    before = torch.get_num_threads()
    torch.set_num_threads(threads or TORCH_THREADS)
    try:
        return time_callable(run, repeats=repeats)
    finally:
        torch.set_num_threads(before)
