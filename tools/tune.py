"""`tdkit tune`: search a strategy's knob space for a problem: verified, fault-tolerant, resumable.

A sweep: measure IREE's default pipeline (compile time and run time set the timeouts); then, in
rounds, ask the search for new points, prune the ones the knobs' `check()` rejects, skip the
ones whose strategy text an earlier candidate already had, compile and verify the rest in
parallel, and time the verified ones one at a time (a binary identical to one already timed is
not timed again), re-measuring the default every few benchmarks. Every outcome, failures
included, is a committed database row before the next candidate is timed, so a killed sweep
rerun with the same command picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdkit.matchers.dtypes import TOLERANCES
from tdkit.strategies import registry
from tdkit.strategies.base import KnobError
from tdkit.tools import tunedb
from tdkit.tools.errors import BadInputError
from tdkit.tools.executors import Executor, make_executor
from tdkit.tools.harness import HarnessConfig, device_for, payload_text, resolve_form
from tdkit.tools.search import (
    SEARCHES,
    Point,
    Space,
    in_space,
    make_searcher,
    point_key,
    space_size,
)
from tdkit.tools.toolchain import tool_versions
from tdkit.tools.tune_tasks import (
    BuildJob,
    BuildOutcome,
    SweepContext,
    build_candidate,
    measure_candidate,
)
from tdkit.tools.tunedb import Candidate, TuneDB, canonical_knobs

DEFAULT_BUDGET = 50
# Candidates a round starts with, per worker (TPE learns once per round). While a slow compile
# holds the round, idle workers take more, up to twice as many (see Sweep._evaluate).
BATCH_PER_WORKER = 4


@dataclass(frozen=True)
class TuneConfig:
    """How a sweep searches, measures and where it records.

    Attributes:
      search: "tpe" (optuna, default), "random" or "grid".
      budget: candidates to evaluate (pruned points do not count; earlier rows of the same
        sweep in the database do); None = the whole space for grid, 50 otherwise.
      time_limit_s: stop starting new candidates after this many seconds.
      jobs: parallel compiles (default: the number of cores).
      space: overrides of the declared knob ranges, {knob: values}.
      baseline_every: re-measure IREE's default after this many benchmarks.
      timeout_factor, min_timeout_s: a compile is killed after max(min_timeout_s,
        timeout_factor x the default's compile time); a run or benchmark after
        max(min_timeout_s, timeout_factor x the default's benchmark time).
      confirm_rounds, confirm_top: at the end, rounds timing IREE's default, the untuned
        defaults and the `confirm_top` fastest candidates side by side; the fastest by those
        times is the sweep's best (0 = skip).
      progress: live progress bar (None: when stderr is a terminal).
    """

    search: str = "tpe"
    budget: int | None = None
    time_limit_s: float | None = None
    jobs: int | None = None
    seed: int = 0
    db: Path = Path("tdkit-tune.db")
    executor: str = "local"
    address: str | None = None
    space: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    baseline_every: int = 24
    timeout_factor: float = 10.0
    min_timeout_s: float = 60.0
    repetitions: int = 3
    min_time_s: float = 0.05
    confirm_rounds: int = 3
    confirm_top: int = 3
    progress: bool | None = None


@dataclass
class SweepSummary:
    """What a sweep did, for the table, `--json` and the closing report."""

    problem: str
    strategy: str
    db: Path
    search: str
    space_size: int
    budget: int
    counts: dict[str, int] = field(default_factory=dict)  # this run, by status
    evaluated: int = 0  # candidates of this sweep in the database (all runs)
    new: int = 0  # candidates evaluated by this run
    wall_s: float = 0.0
    default_ms: float | None = None
    default_compile_s: float | None = None
    untuned_ms: float | None = None
    best: Candidate | None = None
    stopped: str = ""
    confirmed: dict[str, float] = field(default_factory=dict)  # ms, timed side by side at the end
    not_run: str = ""  # why candidates were compiled but not run or timed (no device here)

    @property
    def verified_per_minute(self) -> float:
        done = self.counts.get(tunedb.OK, 0) + self.counts.get(tunedb.DUPLICATE, 0)
        return 60.0 * done / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        best = self.best
        failed = sum(self.counts.get(s, 0) for s in tunedb.FAILURES)
        return {
            # compile-only (no device here): ok when candidates compiled and applied
            "ok": best is not None or bool(self.not_run and self.counts.get(tunedb.COMPILED)),
            "problem": self.problem, "strategy": self.strategy,
            "db": str(self.db), "search": self.search, "space_size": self.space_size,
            "budget": self.budget, "evaluated": self.evaluated, "new": self.new,
            "counts": self.counts, "pruned": self.counts.get(tunedb.PRUNED, 0),
            "duplicates": self.counts.get(tunedb.DUPLICATE, 0), "failed": failed,
            "wall_s": self.wall_s, "verified_per_minute": self.verified_per_minute,
            "default_ms": self.default_ms, "untuned_ms": self.untuned_ms,
            "best_ms": best.time_ms if best else None,
            "best_confirmed_ms": best.confirmed_ms if best else None,
            "best_knobs": best.knob_values if best else None,
            "best_id": best.id if best else None,
            "speedup_vs_default": (self.default_ms / best.time_ms
                                   if best and self.default_ms else None),
            "speedup_vs_untuned": (self.untuned_ms / best.time_ms
                                   if best and self.untuned_ms else None),
            "stopped": self.stopped,
            "confirmed_ms": self.confirmed,
            "confirmed_speedup_vs_default": _ratio(self.confirmed, "default", "best"),
            "confirmed_speedup_vs_untuned": _ratio(self.confirmed, "untuned", "best"),
            "compiled": self.counts.get(tunedb.COMPILED, 0),
            "not_run": self.not_run,
        }


def _ratio(ms: dict[str, float], slow: str, fast: str) -> float | None:
    return ms[slow] / ms[fast] if slow in ms and fast in ms else None


# --------------------------------------------------------------------------- problems as rows

def problem_record(problem: Any, form: str) -> dict[str, Any]:
    """Enough to rebuild `problem` (see `problem_from_record`)."""
    fields_ = {f.name: getattr(problem, f.name) for f in dataclasses.fields(problem)}
    fields_["dtype"] = str(problem.dtype)
    return {"kind": problem.kind, "form": form, "fields": fields_}


def problem_from_record(record: dict[str, Any]) -> tuple[Any, str]:
    from tdkit.matchers.attention_problem import Attention
    from tdkit.matchers.problems import Softmax

    kinds = {"softmax": Softmax, "attention": Attention}
    values = dict(record["fields"])
    for name in ("shape", "batch"):
        if name in values:
            values[name] = tuple(values[name])
    return kinds[record["kind"]](**values), record["form"]


def _where(cfg: HarnessConfig) -> str:
    """The device part of a sweep key: `cpu=host`, or `target=cuda:sm_80`."""
    return f"target={cfg.compile.target_name}" if cfg.compile.is_gpu else \
        f"cpu={cfg.compile.cpu}"


def problem_key(problem: Any, form: str, cfg: HarnessConfig) -> str:
    return f"{problem.label} form={form} {_where(cfg)}"


# --------------------------------------------------------------------------- space

def sweep_space(family: registry.Family, problem: Any,
                overrides: dict[str, tuple[Any, ...]], target: str = "cpu") -> Space:
    """The family's declared ranges for `problem` (a GPU family's for `target`), with
    `overrides` (parsed values) replacing or adding knobs."""
    if family.space is None:
        raise BadInputError(f"strategy {family.name} declares no knob space to tune")
    space = dict(family.space(problem, target) if family.device == "gpu"
                 else family.space(problem))
    known = {f.name for f in dataclasses.fields(family.knobs)}
    for name, values in overrides.items():
        if name not in known:
            raise BadInputError(f"unknown knob {name!r} in --space for strategy {family.name}; "
                                f"known knobs: {', '.join(sorted(known))}")
        if not values:
            raise BadInputError(f"--space {name}= lists no values")
        space[name] = tuple(dict.fromkeys(values))
    return space


def parse_space(family: registry.Family, items: list[str]) -> dict[str, tuple[Any, ...]]:
    """`--space rows=8,16,32` items -> {knob: parsed values} (typed like the knob)."""
    out: dict[str, tuple[Any, ...]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise BadInputError(f"bad --space {item!r}: expected KNOB=V1,V2,...")
        name = name.strip()
        try:
            parsed = [getattr(family.parse_knobs({name: v.strip()}), name)
                      for v in text.split(",") if v.strip()]
        except KnobError as err:
            raise BadInputError(f"bad --space {item!r}: {err}") from None
        out[name] = tuple(parsed)
    return out


# --------------------------------------------------------------------------- what is tuned

@dataclass
class TuneTarget:
    """What a sweep tunes: a built-in problem (checked against its float64 reference) or a
    payload module / imported ONNX model (checked against onnxruntime, or else against IREE's
    default build of the same module).

    `problem` is None for files: families then use their problem-free knob space, defaults
    and library entries (every variant they handle), and one knob setting applies to every
    dispatch of the module the family targets."""

    key: str
    record: dict[str, Any]
    problem: Any | None
    payload: str
    inputs: list[Any]
    outputs: tuple[tuple[tuple[int, ...], Any], ...]
    tolerances: tuple[float, ...]
    expected: list[Any] | None = None  # None: IREE's default build's outputs
    function: str = "main"
    reference: str = "float64"
    preprocessing: str | None = None  # files: the spec raising their unfused attention
    # files: the raised attention chain (problem, codegen mask kind) when there is exactly one;
    # attention families then tune for it (its head dim, its mask) instead of any attention
    attention: tuple[Any, str] | None = None
    raised: list[str] = field(default_factory=list)
    scanned: list[Any] | None = None  # its dispatches as IREE configures them (see `_scan`)

    @property
    def kind(self) -> str:
        return self.problem.kind if self.problem is not None else "file"


def problem_target(problem: Any, form: str, cfg: HarnessConfig) -> TuneTarget:
    inputs = problem.make_inputs(cfg.seed)
    shape, dtype = problem.output_spec()
    return TuneTarget(problem_key(problem, form, cfg), problem_record(problem, form), problem,
                      payload_text(problem, form), inputs, ((shape, dtype.numpy),),
                      (TOLERANCES[dtype],), [problem.reference(inputs)])


def file_target(path: Path, cfg: HarnessConfig, inputs: list[str] | None = None,
                function: str | None = None, raise_attention: bool = True) -> TuneTarget:
    """A payload module (`.mlir`, including imported torch-dialect IR) or an ONNX model,
    with its unfused attention raised for the candidates (`tdkit.tools.raising`)."""
    from tdkit.tools.modules import _tolerance, import_model, load_inputs, read_signature

    if not path.exists():
        raise BadInputError(f"no such file: {path}")
    model = path
    if path.suffix == ".onnx":
        path = import_model(model, cfg.root() / "tune" / _slug(model.stem) / "import", cfg)
    try:
        text = path.read_text()
    except OSError as err:
        raise BadInputError(f"cannot read {path}: {err.strerror}") from None
    sig = read_signature(text, function)
    arrays = load_inputs(sig, inputs or [], cfg.seed)
    expected, reference = None, "iree-default"
    if model.suffix == ".onnx":
        expected = _onnxruntime_outputs(model, arrays)
        reference = "onnxruntime" if expected is not None else reference
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    key = f"file {model.name} sha={digest} fn={sig.function} {_where(cfg)}"
    record = {"kind": "file", "path": str(model.resolve()), "function": sig.function,
              "sha": digest}
    target = TuneTarget(key, record, None, text, arrays, sig.outputs,
                        tuple(_tolerance(d) for _, d in sig.outputs), expected, sig.function,
                        reference)
    if raise_attention:
        from tdkit.tools.raising import plan_raising

        plan = plan_raising(text, cfg.root() / "tune" / _slug(key) / "preprocessing", cfg)
        target.preprocessing, target.raised = plan.spec, plan.raised
        if plan.spec is not None:  # raised and as-written sweeps are different sweeps
            target.key += " raised"
            target.record["raised"] = plan.raised
        if len(plan.problems) == 1:
            target.attention = plan.problems[0]
    return target


def _onnxruntime_outputs(model: Path, arrays: list[Any]) -> list[Any] | None:
    try:
        import numpy as np
        import onnxruntime
    except ImportError:
        return None
    from tdkit.tools.modules import _saveable

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {i.name: _saveable(a) for i, a in zip(session.get_inputs(), arrays, strict=True)}
    return [np.asarray(o, dtype=np.float64) for o in session.run(None, feeds)]


# --------------------------------------------------------------------------- the sweep

class Sweep:
    """One problem x one strategy family, searched until the budget, the time limit or the
    space runs out."""

    def __init__(self, target: TuneTarget, strategy: str, cfg: HarnessConfig,
                 tcfg: TuneConfig) -> None:
        if tcfg.search not in SEARCHES:
            raise BadInputError(f"unknown search {tcfg.search!r}; expected one of "
                                f"{', '.join(SEARCHES)}")
        self.target, self.cfg, self.tcfg = target, cfg, tcfg
        self.problem = problem = target.problem
        self.family = registry.get(strategy)
        self.mask: str | None = None
        if problem is None and target.attention is not None and \
                self.family.masked_entries is not None and \
                target.attention[0].kind in self.family.kinds:
            self.problem = problem = target.attention[0]  # tune for the raised chain
            self.mask = target.attention[1]
        if problem is not None and problem.kind not in self.family.kinds:
            raise BadInputError(f"strategy {strategy} does not handle {problem.kind} problems")
        target_name = cfg.compile.target_name
        if not self.family.supports(target_name):
            raise BadInputError(f"strategy {strategy} generates {self.family.device} code, not "
                                f"code for --target {target_name}")
        self.space = sweep_space(self.family, problem, tcfg.space, target_name)
        self.defaults = self.family.parse_knobs({}, problem, target_name)
        self.run_opts, self.not_run = device_for(cfg)
        self.key = target.key
        self.record = json.dumps(target.record, sort_keys=True)
        self.session = uuid.uuid4().hex[:12]
        size = space_size(self.space)
        if tcfg.budget is not None and tcfg.budget <= 0:
            raise BadInputError(f"--budget must be positive, got {tcfg.budget}")
        self.budget = tcfg.budget or (size + 1 if tcfg.search == "grid" else DEFAULT_BUDGET)
        self.summary = SweepSummary(self.key, strategy, tcfg.db, tcfg.search, size, self.budget)
        self.root = cfg.root() / "tune" / _slug(self.key) / strategy
        self._measured = 0
        self._baseline_ms: float | None = None

    # ------------------------------------------------------------------ helpers

    def knobs_for(self, point: Point) -> Any:
        return dataclasses.replace(self.defaults, **point)

    def point_of(self, knobs: Any) -> Point:
        return {k: getattr(knobs, k) for k in self.space}

    def full_key(self, knobs: Any) -> str:
        return canonical_knobs(dataclasses.asdict(knobs))

    def _row(self, knobs: Any, status: str, **kw: Any) -> Candidate:
        return Candidate(problem=self.key, problem_json=self.record,
                         strategy=self.family.name, knobs=self.full_key(knobs), status=status,
                         tool_versions=self.versions, session=self.session,
                         untuned=int(knobs == self.defaults), **kw)

    # ------------------------------------------------------------------ run

    def run(self) -> SweepSummary:
        start = time.monotonic()
        self.versions = tool_versions(self.cfg.compiler)
        t = self.target
        base_ctx = SweepContext(
            payload=t.payload, inputs=t.inputs, expected=t.expected, outputs=t.outputs,
            tolerances=t.tolerances, compile=self.cfg.compile, compiler=self.cfg.compiler,
            family=None, repetitions=self.tcfg.repetitions, min_time_s=self.tcfg.min_time_s,
            function=t.function, device=self.run_opts.device, run=not self.not_run)
        self.summary.not_run = self.not_run
        with TuneDB(self.tcfg.db) as db:
            self.db = db
            baseline = self._build_baseline(base_ctx)
            self._baseline_vmfb = baseline.vmfb
            if base_ctx.expected is None:  # a file without an independent reference
                base_ctx = dataclasses.replace(base_ctx, expected=baseline.outputs)
            self._check_targets()
            if self.not_run:
                self.run_timeout = self._timeout(0.0)  # nothing runs
            else:
                self._measure_baseline(None, base_ctx)
            ctx = dataclasses.replace(
                base_ctx, family=self.family.name, preprocessing=t.preprocessing,
                compile=dataclasses.replace(self.cfg.compile,
                                            timeout_s=self._timeout(baseline.compile_s or 0)),
                run_timeout_s=self.run_timeout)
            executor = make_executor(self.tcfg.executor, ctx, jobs=self.tcfg.jobs,
                                     address=self.tcfg.address, workdir=self.root)
            try:
                self._search(executor, start)
                self.summary.best = db.best(self.key, self.family.name, self.versions)
                self._confirm(executor)
            except BaseException:
                executor.close(abort=True)  # every finished row is already committed
                raise
            executor.close()
            self.summary.evaluated = self._evaluated()
        self.summary.wall_s = time.monotonic() - start
        return self.summary

    def _confirm(self, executor: Executor) -> None:
        """Re-time the `confirm_top` fastest verified candidates, the untuned defaults and
        IREE's default side by side (interleaved rounds). The fastest by these times becomes
        the sweep's best, so a candidate that won on a noisy moment loses here; the times go
        to the rows' `confirmed_ms` (this sweep's earlier confirmations are cleared)."""
        if self.tcfg.confirm_rounds <= 0 or self.tcfg.confirm_top <= 0:
            return
        rows = [r for r in self._rows() if r.status == tunedb.OK and r.time_ms is not None
                and r.artifacts and (Path(r.artifacts) / "module.vmfb").exists()]
        top = sorted(rows, key=lambda r: (r.time_ms, r.id))[:self.tcfg.confirm_top]
        untuned = next((r for r in rows if r.untuned), None)
        if untuned is not None and all(r.id != untuned.id for r in top):
            top.append(untuned)
        if not top:
            return
        builds = {"default": self._baseline_vmfb}
        builds.update({f"c{r.id}": Path(r.artifacts) / "module.vmfb" for r in top})
        samples: dict[str, list[float]] = {k: [] for k in builds}
        for _ in range(self.tcfg.confirm_rounds):
            for name, vmfb in builds.items():
                res = executor.measure(name, vmfb)
                if res.status != tunedb.OK:
                    return  # a kernel that ran before fails now: keep the sweep's ranking
                samples[name].extend(res.samples_ms)
        med = {k: statistics.median(v) for k, v in samples.items()}
        times = {r.id: med[f"c{r.id}"] for r in top}
        self.db.set_confirmed(self.key, self.family.name, self.versions, times)
        winner = min(top, key=lambda r: (times[r.id], r.id))
        self.summary.best = self.db.find(self.key, self.family.name, winner.knobs,
                                         self.versions)
        self.summary.confirmed = {"default": med["default"], "best": times[winner.id]}
        if untuned is not None:
            self.summary.confirmed["untuned"] = times[untuned.id]

    def _check_targets(self) -> None:
        """A file must hold a dispatch this family lowers (seen in the default build)."""
        if self.target.problem is not None:
            return
        from tdkit.tools.applied import dispatches
        from tdkit.tools.toolchain import Artifact

        if self.target.preprocessing is not None:
            found = _scan(self.target, self.cfg)
        else:
            where = self.root / "default"
            art = Artifact(dir=where, vmfb=where / "module.vmfb",
                           payload=where / "payload.mlir", strategy=None, command=[],
                           stderr="", configurations=where / "configurations")
            found = dispatches(art)
        if not any(self.family.targets(d) for d in found):
            raise BadInputError(f"strategy {self.family.name} targets no dispatch of "
                                f"{self.key.split(' sha=')[0].removeprefix('file ')} "
                                f"(dispatches: {', '.join(d.name for d in found) or 'none'})")

    def _timeout(self, seconds: float) -> float:
        return max(self.tcfg.min_timeout_s, self.tcfg.timeout_factor * seconds)

    def _build_baseline(self, ctx: SweepContext) -> BuildOutcome:
        out = build_candidate(ctx, BuildJob("default", {}, None, self.root / "default"))
        if out.vmfb is None and out.status != tunedb.COMPILED:
            raise BadInputError(f"IREE's default pipeline failed on {self.key}, so there is no "
                                f"baseline to tune against: {out.reason}")
        self.summary.default_compile_s = out.compile_s
        self._baseline_ok = out.status == tunedb.OK
        return out

    def _measure_baseline(self, executor: Executor | None, ctx: SweepContext | None = None
                          ) -> None:
        """Time IREE's default build (here, the first time: its time sets the run timeout;
        later on the executor, where candidates are timed) and make it the current baseline."""
        begin = time.monotonic()
        assert self._baseline_vmfb is not None
        if executor is None:
            assert ctx is not None
            res = measure_candidate(ctx, "default", self._baseline_vmfb)
        else:
            res = executor.measure("default", self._baseline_vmfb)
        if res.status != tunedb.OK:
            raise BadInputError(f"timing IREE's default build of {self.key} failed: "
                                f"{res.reason}")
        wall = time.monotonic() - begin
        if self._baseline_ms is None:
            self.run_timeout = self._timeout(wall)
        self._baseline_ms = self.db.add_baseline(self.key, self.versions, list(res.samples_ms),
                                                 self.summary.default_compile_s,
                                                 self._baseline_ok, self.session)
        self.summary.default_ms = self._baseline_ms

    def _evaluated(self, rows: list[Candidate] | None = None) -> int:
        """Candidates of this sweep (same problem, strategy, tools, in the current space and
        fixed knobs) in the database (or in `rows`, this sweep's rows), pruned ones excluded."""
        return sum(1 for row in (self._rows() if rows is None else rows)
                   if row.status != tunedb.PRUNED)

    def _rows(self) -> list[Candidate]:
        rows = self.db.candidates(self.key, self.family.name, self.versions)
        mine = []
        for row in rows:
            values = row.knob_values
            try:
                knobs = self.knobs_for({k: values[k] for k in self.space})
            except (KeyError, TypeError):
                continue
            if self.full_key(knobs) == row.knobs or row.knobs == self.full_key(self.defaults):
                mine.append(row)
        return mine

    def _search(self, executor: Executor, start: float) -> None:
        searcher = make_searcher(self.tcfg.search, self.space, self.tcfg.seed)
        by_key: dict[str, Candidate] = {}
        self._by_strategy: dict[str, Candidate] = {}
        self._by_binary: dict[str, Candidate] = {}
        for row in self.db.candidates(self.key, self.family.name, self.versions):
            by_key[row.knobs] = row
            self._remember(row)
        mine = self._rows()
        for row in mine:
            point = {k: row.knob_values[k] for k in self.space}
            if in_space(point, self.space):
                searcher.observe(point, row.time_ms if row.verified else None)
        self._searcher, self._by_key = searcher, by_key
        self._done = self._evaluated(mine)
        untuned = by_key.get(self.full_key(self.defaults))
        self._bar = _progress(self.budget, self._done, self.family.name, self.tcfg.progress)
        self._queue: list[Any] = [] if untuned else [self.defaults]
        self._deferred: list[Any] = []
        searcher.seen.add(point_key(self.point_of(self.defaults)))
        self._deadline = start + self.tcfg.time_limit_s if self.tcfg.time_limit_s else None
        try:
            while self._done < self.budget:
                if self._past_deadline():
                    break
                self._round: dict[str, tuple[BuildJob, Any]] = {}  # knobs key -> job, knobs
                size = BATCH_PER_WORKER * executor.workers
                first = []
                while len(first) < size and (job := self._next_job()) is not None:
                    first.append(job)
                if not first:
                    if self._done < self.budget and not self._past_deadline():
                        self.summary.stopped = "space exhausted"
                    break
                self._done += self._evaluate(first, executor, 2 * size)
                self._queue[:0] = self._deferred
                self._deferred.clear()
        finally:
            self._bar.close()
            self.summary.untuned_ms = _value(by_key.get(self.full_key(self.defaults)))

    def _past_deadline(self) -> bool:
        if self._deadline and time.monotonic() >= self._deadline:
            self.summary.stopped = "time limit"
            return True
        return False

    def _next_job(self) -> BuildJob | None:
        """The next candidate to compile in this round (recording pruned and duplicate ones
        on the way), or None when the budget, the time or the space runs out."""
        searcher, by_key = self._searcher, self._by_key
        while self._done + len(self._round) < self.budget and not self._past_deadline():
            if self._queue:
                knobs = self._queue.pop(0)
            else:
                point = searcher.ask()
                if point is None:
                    return None
                knobs = self.knobs_for(point)
            key = self.full_key(knobs)
            if key in self._round:
                continue
            if key in by_key:
                searcher.tell(self.point_of(knobs), _value(by_key[key]))
                continue
            job = self._prepare(knobs, key, by_key, searcher)
            if job is None:
                self._done += by_key[key].status != tunedb.PRUNED
                continue
            if any(j.strategy_hash == job.strategy_hash for j, _ in self._round.values()):
                self._deferred.append(knobs)  # same strategy as one in this round: the next
                continue  # round copies that one's result instead of compiling it again
            self._round[key] = (job, knobs)
            return job
        return None

    def _prepare(self, knobs: Any, key: str, by_key: dict[str, Candidate],
                 searcher: Any) -> BuildJob | None:
        """Prune invalid knobs and strategies an earlier candidate had; None if recorded."""
        point = self.point_of(knobs)
        try:
            self.family.check(self.problem, knobs)
            library = registry.library_text(self._entries(knobs))
        except KnobError as err:
            self._record(by_key, self._row(knobs, tunedb.PRUNED, reason=str(err)))
            searcher.tell(point, None)
            return None
        digest = hashlib.sha256(library.encode()).hexdigest()
        same = self._by_strategy.get(digest)
        if same is not None:
            row = self._copy(knobs, same, strategy_hash=digest,
                             reason=f"same strategy text as candidate {same.id}")
            self._record(by_key, row)
            searcher.tell(point, _value(row))
            return None
        return BuildJob(key, dataclasses.asdict(knobs), library,
                        self.root / hashlib.sha1(key.encode()).hexdigest()[:12], digest)

    def _entries(self, knobs: Any) -> list[Any]:
        if self.mask is not None:  # a raised chain: its own mask kind
            return self.family.masked_entries(self.problem, knobs, self.mask)
        return self.family.entries(self.problem, knobs)

    def _evaluate(self, first: list[BuildJob], executor: Executor, cap: int) -> int:
        """Build a round in parallel, then time its verified candidates one at a time.

        The round starts with `first`; while a slow compile still runs and a worker would
        idle, it takes more candidates (up to `cap`), so a straggler does not hold the whole
        machine. Benchmarks start only when every compile of the round is done."""
        searcher, by_key = self._searcher, self._by_key

        def refill() -> BuildJob | None:
            return self._next_job() if len(self._round) < cap else None

        verified: list[BuildOutcome] = []
        for out in executor.build(first, refill):
            job, knobs = self._round[out.key]
            if out.status == tunedb.COMPILED:  # compile-only sweep: nothing to time
                self._record(by_key, self._row(
                    knobs, out.status, reason=out.reason, compile_s=out.compile_s,
                    strategy_hash=job.strategy_hash, binary_hash=out.binary_hash,
                    artifacts=str(job.out_dir)))
                searcher.tell(self.point_of(knobs), None)
            elif out.status != tunedb.OK:
                row = self._row(knobs, out.status, reason=out.reason, compile_s=out.compile_s,
                                strategy_hash=job.strategy_hash, binary_hash=out.binary_hash,
                                max_abs_err=out.max_abs_err, tolerance=self._tolerance(),
                                artifacts=str(job.out_dir))
                self._record(by_key, row)
                searcher.tell(self.point_of(knobs), None)
            else:
                verified.append(out)
        recorded = len(self._round) - len(verified)
        for out in sorted(verified, key=lambda o: o.key):
            job, knobs = self._round[out.key]
            if self._past_deadline():
                continue  # verified but not timed: not recorded, a rerun does it again
            common = dict(compile_s=out.compile_s, strategy_hash=job.strategy_hash,
                          binary_hash=out.binary_hash, max_abs_err=out.max_abs_err,
                          tolerance=self._tolerance(), artifacts=str(job.out_dir))
            same = self._by_binary.get(out.binary_hash or "")
            if same is not None:
                row = self._copy(knobs, same, reason=f"same binary as candidate {same.id}",
                                 **common)
            else:
                if self._measured and self._measured % self.tcfg.baseline_every == 0:
                    self._measure_baseline(executor)
                res = executor.measure(out.key, out.vmfb)
                self._measured += 1
                if res.status != tunedb.OK:
                    row = self._row(knobs, res.status, reason=res.reason, **common)
                else:
                    median = statistics.median(res.samples_ms)
                    row = self._row(knobs, tunedb.OK, time_ms=median,
                                    min_ms=min(res.samples_ms),
                                    samples=json.dumps(list(res.samples_ms)),
                                    baseline_ms=self._baseline_ms,
                                    speedup=self._baseline_ms / median, **common)
            self._record(by_key, row)
            searcher.tell(self.point_of(knobs), _value(row))
            recorded += 1
        return recorded

    def _tolerance(self) -> float:
        return max(self.target.tolerances)

    def _copy(self, knobs: Any, same: Candidate, **kw: Any) -> Candidate:
        """A DUPLICATE row carrying the results of `same` (or its failure)."""
        status = tunedb.DUPLICATE if same.verified else same.status
        keep = {k: getattr(same, k) for k in ("time_ms", "min_ms", "samples", "baseline_ms",
                                              "speedup", "max_abs_err", "tolerance",
                                              "binary_hash", "strategy_hash")}
        keep.update(kw)
        reason = keep.pop("reason", "")
        if not same.verified:
            reason = f"{reason}: {same.reason}"
        return self._row(knobs, status, reason=reason, duplicate_of=same.id, **keep)

    def _remember(self, row: Candidate) -> None:
        if row.strategy_hash and row.status != tunedb.PRUNED and \
                row.strategy_hash not in self._by_strategy:
            self._by_strategy[row.strategy_hash] = row
        if row.binary_hash and row.verified and row.binary_hash not in self._by_binary:
            self._by_binary[row.binary_hash] = row

    def _record(self, by_key: dict[str, Candidate], row: Candidate) -> None:
        row.trial = len(by_key)
        row, inserted = self.db.add(row)
        by_key[row.knobs] = row
        if not inserted:  # another sweep on the same file recorded it first
            return
        self._remember(row)
        counts = self.summary.counts
        counts[row.status] = counts.get(row.status, 0) + 1
        if row.status != tunedb.PRUNED:
            self.summary.new += 1
            self._bar.update(1)
        best = self.db.best(self.key, self.family.name, self.versions)
        failed = sum(counts.get(s, 0) for s in tunedb.FAILURES)
        self._bar.set_postfix_str(
            f"ok={counts.get(tunedb.OK, 0)} dup={counts.get(tunedb.DUPLICATE, 0)} "
            f"fail={failed} pruned={counts.get(tunedb.PRUNED, 0)} best="
            + (f"{self._baseline_ms / best.time_ms:.2f}x" if best and self._baseline_ms
               else "-"))


def _value(row: Candidate | None) -> float | None:
    return row.time_ms if row is not None and row.verified else None


def _slug(text: str) -> str:
    keep = [c if c.isalnum() or c in "-_." else "_" for c in text]
    return "".join(keep).strip("_")[:80]


def _progress(total: int, initial: int, desc: str, enabled: bool | None) -> Any:
    from tqdm import tqdm

    if enabled is None:  # auto: on a terminal, unless $TDKIT_NO_PROGRESS is set
        enabled = sys.stderr.isatty() and not os.environ.get("TDKIT_NO_PROGRESS")
    return tqdm(total=total, initial=min(initial, total), desc=desc, unit="cand",
                file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def tune(problem: Any, strategies: list[str], *, form: str | None = None,
         cfg: HarnessConfig | None = None, tcfg: TuneConfig | None = None
         ) -> list[SweepSummary]:
    """Sweep each strategy's knob space for `problem`, one after the other."""
    cfg = cfg or HarnessConfig()
    tcfg = tcfg or TuneConfig()
    target = problem_target(problem, resolve_form(problem, form), cfg)
    return [Sweep(target, s, cfg, tcfg).run() for s in strategies]


def tune_file(path: Path, strategies: list[str] | None, *, inputs: list[str] | None = None,
              function: str | None = None, cfg: HarnessConfig | None = None,
              tcfg: TuneConfig | None = None, raise_attention: bool = True
              ) -> list[SweepSummary]:
    """Sweep the knobs of the strategies that lower dispatches of a payload module or ONNX
    model (all families whose dispatches it holds, or the named ones)."""
    cfg = cfg or HarnessConfig()
    tcfg = tcfg or TuneConfig()
    target = file_target(path, cfg, inputs, function, raise_attention)
    names = strategies or _families_in(target, cfg)
    return [Sweep(target, s, cfg, tcfg).run() for s in names]


def _scan(target: TuneTarget, cfg: HarnessConfig) -> list[Any]:
    """The dispatches of the module (raised, if it has a raising spec) as IREE configures
    them by default; compiled once per target (every family's sweep asks)."""
    from tdkit.tools.applied import dispatches
    from tdkit.tools.harness import compile_linked

    if target.scanned is None:
        art, _ = compile_linked(target.payload,
                                cfg.root() / "tune" / _slug(target.key) / "scan", cfg,
                                preprocessing=target.preprocessing)
        target.scanned = dispatches(art)
    return target.scanned


def _families_in(target: TuneTarget, cfg: HarnessConfig) -> list[str]:
    """Families with a knob space that target a dispatch of the module (after raising)."""
    found = _scan(target, cfg)
    names = [f.name for f in registry.families().values()
             if f.space is not None and f.supports(cfg.compile.target_name)
             and any(f.targets(d) for d in found)]
    if not names:
        raise BadInputError(f"no dispatch of {target.record.get('path')} is one tdkit has a "
                            f"strategy for (dispatches: {', '.join(d.name for d in found)})")
    return names


def summary_table(summaries: list[SweepSummary]) -> str:
    lines = []
    for s in summaries:
        d = s.as_dict()
        lines.append(f"{d['problem']}  strategy={d['strategy']}  search={d['search']}  "
                     f"space={d['space_size']}  db={d['db']}")
        counts = ", ".join(f"{k}={v}" for k, v in sorted(d["counts"].items())) or "none"
        lines.append(f"  this run: {d['new']} candidates in {d['wall_s']:.1f} s "
                     f"({d['verified_per_minute']:.1f} verified/min); {counts}")
        lines.append(f"  sweep total: {d['evaluated']} of budget {d['budget']} candidates"
                     + (f"; stopped: {d['stopped']}" if d["stopped"] else ""))
        if d["default_ms"]:
            lines.append(f"  IREE default: {d['default_ms']:.4f} ms")
        if d["untuned_ms"]:
            lines.append(f"  untuned {d['strategy']} defaults: {d['untuned_ms']:.4f} ms")
        if d["best_ms"] is not None:
            lines.append(f"  best: {d['best_ms']:.4f} ms (candidate {d['best_id']}) "
                         f"{json.dumps(d['best_knobs'], sort_keys=True)}")
            if d["speedup_vs_default"]:
                lines.append(f"  speedup: {d['speedup_vs_default']:.2f}x over IREE default"
                             + (f", {d['speedup_vs_untuned']:.2f}x over untuned defaults"
                                if d["speedup_vs_untuned"] else ""))
        elif d["not_run"]:
            lines.append(f"  {d['compiled']} candidates compiled and applied; timing them "
                         f"needs the device ({d['not_run']})")
        else:
            lines.append("  no verified candidate")
        conf = d["confirmed_ms"]
        if conf:
            text = ", ".join(f"{k} {v:.4f} ms" for k, v in conf.items())
            lines.append(f"  finalists side by side at the end: {text} -> best is "
                         f"{d['confirmed_speedup_vs_default']:.2f}x IREE default"
                         + (f", {d['confirmed_speedup_vs_untuned']:.2f}x untuned defaults"
                            if d["confirmed_speedup_vs_untuned"] else ""))
    return "\n".join(lines)
