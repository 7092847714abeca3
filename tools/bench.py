"""Side-by-side benchmarks: a strategy, IREE's default pipeline and a memory-copy ceiling, timed
in one interleaved run so machine noise hits all of them alike."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tdkit.tools.harness import HarnessConfig, rates, run_problem
from tdkit.tools.toolchain import Timing


def copy_timing(nbytes: int, repeats: int = 20) -> Timing:
    """Time numpy copying nbytes/2 bytes into another buffer (reads + writes = nbytes), the
    ceiling for a kernel that must read its input and write its output once."""
    n = max(1, nbytes // 2)
    src = np.ones(n, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm-up: fault in both buffers
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(tuple(samples))


def bench(problem: Any, strategy: str, knobs: dict[str, str] | None, *, form: str | None,
          cfg: HarnessConfig) -> dict[str, Any]:
    """Compile, verify and time `strategy` and the default pipeline on `problem`, plus a memory
    copy of the same bytes; returns one flat record."""
    res = run_problem(problem, strategy, knobs=knobs, form=form, compare_default=True,
                      timing=True, cfg=cfg)
    copy = Timing(tuple(s for _ in range(cfg.rounds)
                        for s in copy_timing(problem.bytes).samples_ms))
    out = res.as_dict()
    copy_gbps = problem.bytes / copy.median_ms / 1e6
    out["copy_time_ms"] = copy.median_ms
    out["copy_gbps"] = copy_gbps
    if res.main.timing:
        out["fraction_of_copy"] = out["gbps"] / copy_gbps
    if res.default and res.default.timing:
        d = rates(problem, res.default.timing.median_ms)
        out["default_gflops"] = d["gflops"]
        out["default_gbps"] = d["gbps"]
    out["samples"] = {"strategy": len(res.main.timing.samples_ms) if res.main.timing else 0,
                      "rounds": cfg.rounds, "repetitions": cfg.repetitions}
    return out


def bench_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of bench records."""
    head = (f"{'problem':<34} {'strategy':<12} {'ms':>9} {'min ms':>9} {'GB/s':>7} "
            f"{'GFLOP/s':>8} {'default ms':>10} {'speedup':>8} {'copy GB/s':>9} {'of copy':>7}"
            f"  ok")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['problem']:<34} {r['strategy']:<12} {r.get('time_ms', 0):>9.4f} "
            f"{r.get('min_ms', 0):>9.4f} {r.get('gbps', 0):>7.1f} {r.get('gflops', 0):>8.1f} "
            f"{r.get('default_time_ms') or 0:>10.4f} {r.get('speedup') or 0:>7.2f}x "
            f"{r.get('copy_gbps', 0):>9.1f} {100 * r.get('fraction_of_copy', 0):>6.0f}%"
            f"  {'OK' if r['ok'] else 'FAIL'}")
    return "\n".join(lines)

