"""Run a sweep's compiles and benchmarks on a Ray cluster (the optional `ray` extra).

Compiles (with their verification run) are Ray tasks spread over every CPU of the cluster; each
returns its binary's bytes, which the driver keeps in its artifact directory. Benchmarks go to
one actor pinned to one node (`max_concurrency=1`), so they run one at a time and are timed on
the same machine as the baseline, whichever node compiled them. Workers get the driver's
`TDKIT_*` environment (tool overrides) through the job's runtime environment.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tdkit.tools.errors import BadInputError, TdkitError
from tdkit.tools.tune_tasks import (
    BuildJob,
    BuildOutcome,
    MeasureOutcome,
    SweepContext,
    build_candidate,
    measure_candidate,
)

OBJECT_STORE_BYTES = 256 * 1024 * 1024  # inputs and binaries are small; keep /dev/shm free


def _build_remote(ctx: SweepContext, job: BuildJob) -> BuildOutcome:
    return build_candidate(ctx, job, keep_bytes=True)


class _Bench:
    """Times binaries on one node, one at a time."""

    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx
        self.dir = Path(tempfile.mkdtemp(prefix="tdkit-bench-"))

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def measure(self, key: str, name: str, data: bytes) -> MeasureOutcome:
        where = self.dir / name
        where.mkdir(parents=True, exist_ok=True)
        vmfb = where / "module.vmfb"
        vmfb.write_bytes(data)
        return measure_candidate(self.ctx, key, vmfb)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """BadInputError unless something listens at HOST:PORT (ray.init would retry for
    minutes against a wrong address)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BadInputError(f"--address {address!r}: expected HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise BadInputError(f"no Ray cluster at {address}: {err}") from None


class RayExecutor:
    """Compiles on every CPU of a Ray cluster; benchmarks on one node, one at a time."""

    name = "ray"

    def __init__(self, ctx: SweepContext, *, jobs: int | None = None,
                 address: str | None = None, workdir: Path | None = None) -> None:
        try:
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        except ImportError:
            raise BadInputError("--executor ray needs Ray: pip install 'tdkit[ray]'") from None
        self.ray = ray
        env = {k: v for k, v in os.environ.items() if k.startswith("TDKIT_")}
        kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING,
                                      runtime_env={"env_vars": env} if env else None)
        if address:
            _check_reachable(address)
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=jobs or os.cpu_count(), include_dashboard=False,
                         object_store_memory=OBJECT_STORE_BYTES, **kwargs)
        except Exception as err:  # noqa: BLE001  (Ray raises many types; one line for users)
            raise BadInputError(f"cannot start or reach the Ray cluster"
                                f"{' at ' + address if address else ''}: {err}") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, min(jobs, cpus) if jobs else cpus)
        self.nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        self._ctx = ray.put(ctx)
        self._build = ray.remote(num_cpus=1, max_retries=0)(_build_remote)
        bench_cls = ray.remote(num_cpus=0, max_concurrency=1)(_Bench)
        pin = NodeAffinitySchedulingStrategy(self.nodes[0], soft=False)
        self._bench = bench_cls.options(scheduling_strategy=pin).remote(self._ctx)
        self._count = 0

    def build(self, jobs: list[BuildJob], refill: Callable[[], BuildJob | None] | None = None
              ) -> Iterator[BuildOutcome]:
        ray = self.ray
        pending = {self._build.remote(self._ctx, job): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            while refill is not None and pending and len(pending) < self.workers:
                more = refill()
                if more is None:
                    refill = None
                else:
                    pending[self._build.remote(self._ctx, more)] = more
            try:
                out: BuildOutcome = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                if isinstance(err.cause, TdkitError):
                    raise err.cause from None  # a setup error (missing tool), as locally
                yield BuildOutcome(job.key, "compile_crash", f"Ray task failed: {err}"[:2000])
                continue
            except ray.exceptions.RayError as err:
                # a worker died (e.g. its node went away): record it, go on
                yield BuildOutcome(job.key, "compile_crash", f"Ray worker failed: {err}"[:2000])
                continue
            if out.vmfb_bytes is not None:
                job.out_dir.mkdir(parents=True, exist_ok=True)
                local = job.out_dir / "module.vmfb"
                if not local.exists() or local.read_bytes() != out.vmfb_bytes:
                    local.write_bytes(out.vmfb_bytes)
                out.vmfb, out.vmfb_bytes = local, None
            yield out

    def measure(self, key: str, vmfb: Path) -> MeasureOutcome:
        self._count += 1
        ref = self._bench.measure.remote(key, f"m{self._count}", vmfb.read_bytes())
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as err:
            return MeasureOutcome(key, "run_crash", f"Ray benchmark actor failed: {err}"[:2000])

    def close(self, abort: bool = False) -> None:
        del abort  # ray.shutdown() cancels the driver's pending tasks either way
        try:
            self.ray.kill(self._bench)
        finally:
            self.ray.shutdown()
