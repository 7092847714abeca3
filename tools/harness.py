"""Compile, run, verify and time one problem with one strategy (and IREE's default, side by side).

This is the loop every front end (CLI run/bench/smoke, tests) goes through:
payload + library -> compile (artifacts in one directory) -> check the strategy applied ->
run on seeded inputs -> compare with the float64 reference -> optionally time it against the
default pipeline, interleaving the two so machine noise hits both alike.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from iree.compiler import ir

from tdkit.matchers.dtypes import TOLERANCES
from tdkit.matchers.problems import Problem
from tdkit.strategies import registry
from tdkit.strategies.base import KnobError
from tdkit.tools.applied import DispatchInfo, check_applied, dispatches
from tdkit.tools.errors import BadInputError, ToolError
from tdkit.tools.toolchain import (
    Artifact,
    CompileOptions,
    RunOptions,
    Timing,
    available_devices,
    benchmark_module,
    compile_module,
    run_module,
)
from tdkit.tools.verify import Verdict, compare

DEFAULT = registry.DEFAULT


@dataclass(frozen=True)
class HarnessConfig:
    """Settings shared by every run of a session."""

    compiler: str | None = None
    artifacts: Path | None = None  # root directory for artifacts; a fresh temp dir if None
    seed: int = 0
    rounds: int = 3  # timing rounds; each round times the strategy then the default
    repetitions: int = 3  # iree-benchmark-module repetitions per round
    min_time_s: float = 0.05
    threads: int | None = None  # CPU threads for timing (IREE workers, peers); None: defaults
    timer: str = "runtime"  # how local-task modules are timed (`RunOptions.timer`)
    compile: CompileOptions = field(default_factory=CompileOptions)

    def root(self) -> Path:
        if self.artifacts is not None:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            return self.artifacts
        return Path(tempfile.mkdtemp(prefix="tdkit-"))


@dataclass
class Build:
    """One compiled variant (a strategy or the default) of a problem, with its checks."""

    strategy: str
    artifact: Artifact
    dispatches: list[DispatchInfo]
    applied: bool
    verdict: Verdict | None = None
    timing: Timing | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """Everything `tdkit run` reports for one problem."""

    problem: Any
    form: str
    main: Build
    default: Build | None = None
    error: str = ""
    target: str = "cpu"
    not_run: str = ""  # why the builds were compiled but not run (no device for the target)

    @property
    def ok(self) -> bool:
        """The requested build applied and is correct (or, for a GPU target on a machine
        without that GPU, applied and compiled; `verified` says which). The default build's
        own verdict is reported beside it (`default_ok`) but does not decide this: IREE's
        default pipeline computes f16 softmax in f16 and can miss the f16 tolerance on long
        rows."""
        m = self.main
        if self.error or not m.applied:
            return False
        if m.verdict is None:
            return bool(self.not_run)
        return m.verdict.ok

    @property
    def speedup(self) -> float | None:
        if self.default and self.main.timing and self.default.timing:
            return self.default.timing.median_ms / self.main.timing.median_ms
        return None

    def as_dict(self) -> dict[str, Any]:
        p = self.problem
        m = self.main
        out: dict[str, Any] = {
            "ok": self.ok,
            "problem": p.label,
            "kind": p.kind,
            "dtype": str(p.dtype),
            "form": self.form,
            "strategy": m.strategy,
            "target": self.target,
            "applied": m.applied,
            "verified": m.verdict is not None,
            "dispatches": [d.as_dict() for d in m.dispatches],
            "max_abs_err": m.verdict.max_abs_err if m.verdict else None,
            "tolerance": m.verdict.tolerance if m.verdict else None,
            "reason": self.error or (m.verdict.reason if m.verdict else ""),
            "artifacts": str(m.artifact.dir),
            "notes": m.notes,
        }
        if self.not_run:
            out["not_run"] = self.not_run
        if m.timing:
            out.update(rates(p, m.timing.median_ms))
            out["time_ms"] = m.timing.median_ms
            out["min_ms"] = m.timing.min_ms
        if self.default:
            d = self.default
            out["default_ok"] = None if d.verdict is None else d.verdict.ok  # None: not run
            out["default_max_abs_err"] = d.verdict.max_abs_err if d.verdict else None
            out["default_notes"] = d.notes
            if d.timing:
                out["default_time_ms"] = d.timing.median_ms
                out["default_min_ms"] = d.timing.min_ms
            out["speedup"] = self.speedup
        return out


def rates(problem: Any, ms: float) -> dict[str, float]:
    """GFLOP/s and GB/s of a problem at `ms` milliseconds per call."""
    return {"gflops": problem.flops / ms / 1e6, "gbps": problem.bytes / ms / 1e6}


def payload_text(problem: Problem, form: str) -> str:
    with ir.Context(), ir.Location.unknown():
        module = problem.build_payload(form)
        module.operation.verify()
        return str(module)


def library_for(problem: Problem, strategy: str, knobs: dict[str, str] | None,
                target: str = "cpu") -> str:
    """The printed transform library for `strategy` on `problem` for `--target target`;
    BadInputError on bad knobs or a strategy that does not generate code for the target."""
    family = registry.get(strategy)
    if problem.kind not in family.kinds:
        raise BadInputError(f"strategy {strategy} does not handle {problem.kind} problems "
                            f"(it handles {', '.join(family.kinds)})")
    try:
        return family.library_text(problem, family.parse_knobs(knobs, problem, target))
    except KnobError as err:
        raise BadInputError(f"invalid knob: {err}") from None


def compile_linked(payload: str, out_dir: Path, cfg: HarnessConfig,
                   strategy: str | None = None, preprocessing: str | None = None
                   ) -> tuple[Artifact, list[str]]:
    """Compile; if embedded linking fails on a libm symbol (IREE 3.13 emits `fmaxf` calls for
    f16 max on CPUs without AVX512-FP16), retry once with the system linker and say so."""
    try:
        art = compile_module(payload, out_dir, cfg.compile, strategy=strategy,
                             compiler=cfg.compiler, preprocessing=preprocessing)
        return art, []
    except ToolError as err:
        if "undefined symbol" not in err.stderr or not cfg.compile.link_embedded:
            raise
        symbol = next((ln.strip() for ln in err.stderr.splitlines()
                       if "undefined symbol" in ln), "undefined symbol")
        opts = replace(cfg.compile, link_embedded=False)
        art = compile_module(payload, out_dir, opts, strategy=strategy, compiler=cfg.compiler,
                             preprocessing=preprocessing)
        return art, [f"embedded link failed ({symbol[:120]}); "
                     "rebuilt with --iree-llvmcpu-link-embedded=false"]


def compile_default(payload: str, out_dir: Path, cfg: HarnessConfig) -> tuple[Artifact, list[str]]:
    """Compile with IREE's default pipeline (see `compile_linked`)."""
    return compile_linked(payload, out_dir, cfg)


def build(problem: Problem, form: str, strategy: str, knobs: dict[str, str] | None,
          out_dir: Path, cfg: HarnessConfig, payload: str | None = None) -> Build:
    """Compile one variant and check that the strategy ran on its dispatch."""
    payload = payload if payload is not None else payload_text(problem, form)
    if strategy == DEFAULT:
        art, notes = compile_default(payload, out_dir, cfg)
        return Build(DEFAULT, art, dispatches(art), applied=True, notes=notes)
    library = library_for(problem, strategy, knobs, cfg.compile.target_name)
    art, notes = compile_linked(payload, out_dir, cfg, strategy=library)
    family = registry.get(strategy)
    infos = check_applied(art, family.targets)
    return Build(strategy, art, infos, applied=True, notes=notes)


def execute(b: Build, problem: Problem, inputs: list[np.ndarray], expected: np.ndarray,
            run_opts: RunOptions | None = None) -> None:
    """Run a build once and record its verdict against the reference."""
    shape, dtype = problem.output_spec()
    (out,) = run_module(b.artifact.vmfb, inputs, [(shape, dtype.numpy)], b.artifact.dir / "run",
                        run_opts or RunOptions())
    b.verdict = compare(out, expected, TOLERANCES[dtype])


def device_for(cfg: HarnessConfig) -> tuple[RunOptions, str]:
    """How to run this target's modules here, and "" or why they cannot run (a GPU target on
    a machine where `iree-run-module` finds no such device)."""
    opts = cfg.compile
    if not opts.is_gpu:
        return RunOptions(threads=cfg.threads, timer=cfg.timer), ""
    found = available_devices(opts.driver)
    if not found:
        return RunOptions(), (f"not run: no {opts.driver} device on this machine "
                              f"(iree-run-module --list_devices lists none); compiled for "
                              f"{opts.target_name} only")
    return RunOptions(device=found[0]), ""


def time_builds(builds: list[Build], inputs: list[np.ndarray], cfg: HarnessConfig,
                run_opts: RunOptions | None = None) -> None:
    """Time builds side by side: `cfg.rounds` rounds, each timing every build in turn."""
    samples: dict[int, list[float]] = {i: [] for i in range(len(builds))}
    for _ in range(cfg.rounds):
        for i, b in enumerate(builds):
            t = benchmark_module(b.artifact.vmfb, inputs, b.artifact.dir / "bench",
                                 repetitions=cfg.repetitions, min_time_s=cfg.min_time_s,
                                 opts=run_opts or RunOptions())
            samples[i].extend(t.samples_ms)
    for i, b in enumerate(builds):
        b.timing = Timing(tuple(samples[i]))


def run_problem(problem: Problem, strategy: str, *, knobs: dict[str, str] | None = None,
                form: str | None = None, compare_default: bool = False, timing: bool = False,
                cfg: HarnessConfig | None = None) -> RunResult:
    """Compile, run and verify `problem` with `strategy`; with `compare_default`, also build,
    verify and (with `timing`) time IREE's default pipeline in the same run.

    Raises TdkitError for bad input, tool failures and strategies that did not apply."""
    cfg = cfg or HarnessConfig()
    form = resolve_form(problem, form)
    root = run_root(problem, form, cfg)
    payload = payload_text(problem, form)
    inputs = problem.make_inputs(cfg.seed)
    expected = problem.reference(inputs)
    run_opts, not_run = device_for(cfg)
    main = build(problem, form, strategy, knobs, root / strategy, cfg, payload)
    result = RunResult(problem, form, main, target=cfg.compile.target_name, not_run=not_run)
    builds = [main]
    if compare_default and strategy != DEFAULT:
        result.default = build(problem, form, DEFAULT, None, root / DEFAULT, cfg, payload)
        builds.append(result.default)
    if not_run:
        return result
    for b in builds:
        execute(b, problem, inputs, expected, run_opts)
    if timing:
        time_builds(builds, inputs, cfg, run_opts)
    return result


def resolve_form(problem: Problem, form: str | None) -> str:
    """`form`, or the problem's first; BadInputError for a form the problem does not have."""
    form = form or problem.forms[0]
    if form not in problem.forms:
        raise BadInputError(f"unknown form {form!r} for {problem.kind}; "
                            f"expected one of {', '.join(problem.forms)}")
    return form


def run_root(problem: Problem, form: str, cfg: HarnessConfig) -> Path:
    """A fresh directory for one run's artifacts."""
    return cfg.root() / _slug(f"{problem.label} {form}") / time.strftime("%Y%m%d-%H%M%S")


def _slug(text: str) -> str:
    keep = [c if c.isalnum() or c in "-_." else "_" for c in text]
    return "".join(keep).strip("_")[:80]

