"""Where a sweep's work runs: a local thread pool (default) or a Ray cluster.

An executor builds candidates in parallel (`build`: compile + verify, as many at once as it has
workers) and measures them one at a time per machine (`measure`), so timings never share the
cores with a compile or another benchmark.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

from tdkit.tools.errors import BadInputError
from tdkit.tools.toolchain import kill_running
from tdkit.tools.tune_tasks import (
    BuildJob,
    BuildOutcome,
    MeasureOutcome,
    SweepContext,
    build_candidate,
    measure_candidate,
)

EXECUTORS = ("local", "ray")
Refill = Callable[[], BuildJob | None]


class Executor(Protocol):
    name: str
    workers: int

    def build(self, jobs: list[BuildJob], refill: Refill | None = None
              ) -> Iterator[BuildOutcome]:
        """Build `jobs` in parallel, yielding outcomes as they finish; whenever a worker would
        idle while others still build, take another job from `refill` (None: no more)."""
        ...

    def measure(self, key: str, vmfb: Path) -> MeasureOutcome: ...

    def close(self, abort: bool = False) -> None: ...


class LocalExecutor:
    """Compiles in a pool of `jobs` threads (each waits on its own iree-compile process);
    measures in the calling thread after the pool is idle."""

    name = "local"

    def __init__(self, ctx: SweepContext, jobs: int | None = None) -> None:
        self.ctx = ctx
        self.workers = max(1, jobs or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="tdkit-c")

    def build(self, jobs: list[BuildJob], refill: Refill | None = None
              ) -> Iterator[BuildOutcome]:
        running = {self._pool.submit(build_candidate, self.ctx, job) for job in jobs}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
            while refill is not None and running and len(running) < self.workers:
                job = refill()
                if job is None:
                    refill = None
                else:
                    running.add(self._pool.submit(build_candidate, self.ctx, job))

    def measure(self, key: str, vmfb: Path) -> MeasureOutcome:
        return measure_candidate(self.ctx, key, vmfb)

    def close(self, abort: bool = False) -> None:
        """Wait for running builds; with `abort` (an interrupted sweep), kill them first."""
        if abort:
            self._pool.shutdown(wait=False, cancel_futures=True)
            kill_running()
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_executor(name: str, ctx: SweepContext, *, jobs: int | None = None,
                  address: str | None = None, workdir: Path | None = None) -> Executor:
    if name == "local":
        if address:
            raise BadInputError("--address needs --executor ray")
        return LocalExecutor(ctx, jobs)
    if name == "ray":
        from tdkit.tools.ray_executor import RayExecutor

        return RayExecutor(ctx, jobs=jobs, address=address, workdir=workdir)
    raise BadInputError(f"unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")
