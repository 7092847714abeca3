"""The two units of work of a tuning sweep, runnable in any worker (thread, process, Ray node).

`build_candidate`: compile one candidate, check its strategy applied, run it once and verify it
against the float64 reference; every failure becomes a status with its reason (a crashing or
hanging compiler or kernel, a miscompile), never an exception. `measure_candidate`: time a
verified binary. Both only touch files under the job's directory.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdkit.tools import tunedb
from tdkit.tools.applied import check_applied
from tdkit.tools.errors import NotAppliedError, ToolError
from tdkit.tools.toolchain import (
    CompileOptions,
    RunOptions,
    benchmark_module,
    compile_module,
    run_module,
)
from tdkit.tools.verify import compare

KNOBS_FILE = "knobs.json"  # beside every candidate's payload and binary (provenance; test hooks)


@dataclass(frozen=True)
class SweepContext:
    """What every candidate of one sweep shares (shipped once to each worker)."""

    payload: str
    inputs: list[np.ndarray]
    expected: list[np.ndarray] | None  # one reference per output; None: run, do not compare
    outputs: tuple[tuple[tuple[int, ...], Any], ...]  # (shape, numpy dtype) per output
    tolerances: tuple[float, ...]
    compile: CompileOptions
    compiler: str | None
    family: str | None  # strategy family (for the applied check); None for IREE's default
    run_timeout_s: float = 300.0
    repetitions: int = 3
    min_time_s: float = 0.05
    function: str = "main"
    preprocessing: str | None = None  # a raising spec for the candidates (not the baseline)
    device: str = "local-task"  # iree-run-module --device
    run: bool = True  # False: compile and check only (no device for the target here)

    def run_options(self) -> RunOptions:
        return RunOptions(device=self.device, function=self.function,
                          timeout_s=self.run_timeout_s)


@dataclass(frozen=True)
class BuildJob:
    key: str  # canonical knobs JSON
    knobs: dict[str, Any]
    library: str | None  # transform library text; None builds IREE's default
    out_dir: Path
    strategy_hash: str | None = None  # sha256 of `library`


@dataclass
class BuildOutcome:
    key: str
    status: str
    reason: str = ""
    compile_s: float | None = None
    binary_hash: str | None = None
    max_abs_err: float | None = None
    vmfb: Path | None = None
    vmfb_bytes: bytes | None = field(default=None, repr=False)  # set by remote executors
    outputs: list[np.ndarray] | None = field(default=None, repr=False)  # when not compared


@dataclass
class MeasureOutcome:
    key: str
    status: str
    reason: str = ""
    samples_ms: tuple[float, ...] = ()


def _tool_status(err: ToolError, phase: str) -> str:
    kind = {"timeout": "timeout", "crash": "crash"}.get(err.kind, "failed")
    return f"{phase}_{kind}"


def build_candidate(ctx: SweepContext, job: BuildJob, *, keep_bytes: bool = False
                    ) -> BuildOutcome:
    """Compile, check applied, run once and verify. Missing tools still raise (every candidate
    would fail the same way: that is a setup error, not a candidate's fault)."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    (job.out_dir / KNOBS_FILE).write_text(json.dumps(job.knobs, sort_keys=True))
    start = time.perf_counter()
    try:
        art = compile_module(ctx.payload, job.out_dir, ctx.compile, strategy=job.library,
                             compiler=ctx.compiler,
                             preprocessing=ctx.preprocessing if job.library else None)
    except ToolError as err:
        if err.kind == "missing":
            raise
        return BuildOutcome(job.key, _tool_status(err, "compile"), err.one_line()[:2000],
                            time.perf_counter() - start)
    compile_s = time.perf_counter() - start
    if ctx.family is not None:
        from tdkit.strategies import registry

        try:
            check_applied(art, registry.get(ctx.family).targets)
        except NotAppliedError as err:
            return BuildOutcome(job.key, tunedb.NOT_APPLIED, str(err), compile_s)
    data = art.vmfb.read_bytes()
    binary_hash = hashlib.sha256(data).hexdigest()
    if not ctx.run:
        return BuildOutcome(job.key, tunedb.COMPILED, "compiled and applied; not run (no "
                            f"device for {ctx.compile.target_name} here)", compile_s,
                            binary_hash, vmfb=art.vmfb)
    try:
        got = run_module(art.vmfb, ctx.inputs, list(ctx.outputs), job.out_dir / "run",
                         ctx.run_options())
    except ToolError as err:
        if err.kind == "missing":
            raise
        return BuildOutcome(job.key, _tool_status(err, "run"), err.one_line()[:2000], compile_s,
                            binary_hash)
    keep = data if keep_bytes else None
    if ctx.expected is None:
        return BuildOutcome(job.key, tunedb.OK, "", compile_s, binary_hash, None, art.vmfb, keep,
                            outputs=got)
    verdicts = [compare(g, e, t) for g, e, t in zip(got, ctx.expected, ctx.tolerances,
                                                     strict=True)]
    bad = next((f"output {i}: {v.reason}" for i, v in enumerate(verdicts) if not v.ok), "")
    status = tunedb.MISCOMPILE if bad else tunedb.OK
    return BuildOutcome(job.key, status, bad, compile_s, binary_hash,
                        max(v.max_abs_err for v in verdicts), art.vmfb, keep)


def measure_candidate(ctx: SweepContext, key: str, vmfb: Path) -> MeasureOutcome:
    """Time one verified binary: warm-up, then `ctx.repetitions` repetitions."""
    try:
        timing = benchmark_module(vmfb, ctx.inputs, vmfb.parent / "bench",
                                  repetitions=ctx.repetitions, min_time_s=ctx.min_time_s,
                                  opts=ctx.run_options())
    except ToolError as err:
        if err.kind == "missing":
            raise
        return MeasureOutcome(key, _tool_status(err, "run"), err.one_line()[:2000])
    return MeasureOutcome(key, tunedb.OK, samples_ms=timing.samples_ms)
