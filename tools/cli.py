"""The `tdkit` command line: emit, run, apply, bench, tune, smoke, inspect, strategies.

Thin by design: each subcommand parses arguments, calls the harness, prints a table or one
JSON object. Every error is one line on stderr; exit 0 ok, 1 wrong numerics / strategy not
applied / tool failure, 2 bad usage or bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tdkit.matchers.dtypes import parse_dtype
from tdkit.matchers.problems import Softmax, parse_shape
from tdkit.strategies import registry
from tdkit.tools.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    BadInputError,
    TdkitError,
    ToolError,
)
from tdkit.tools.harness import HarnessConfig, library_for, run_problem
from tdkit.tools.toolchain import COMPILER_ENV, TARGETS, TIMERS, CompileOptions, target_options

KINDS = ("softmax", "attention")


def _cpu_threads(text: str) -> int:
    """argparse type: a thread count from 1 to this machine's CPU count."""
    cpus = os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= cpus:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and this machine's "
                                         f"{cpus} CPUs")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"tdkit: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _add_problem_args(p: argparse.ArgumentParser, *, file_ok: bool = False) -> None:
    what = "softmax, attention" + (", a payload FILE.mlir or an ONNX model" if file_ok else "")
    p.add_argument("problem", metavar="KIND" + ("|FILE" if file_ok else ""), help=what)
    p.add_argument("--shape", help="softmax: e.g. 512x1024; attention: [B...]xMxK2xD, "
                   "e.g. 2x12x128x128x64 = batch x heads x M x K2 x D")
    p.add_argument("--dim", type=int, default=-1, help="softmax reduction dim (default -1)")
    p.add_argument("--dtype", default="f32", help="f32, f16 or bf16 (default f32)")
    p.add_argument("--causal", action="store_true", help="attention: causal mask")
    p.add_argument("--mask", action="store_true", help="attention: additive mask input")
    p.add_argument("--scale", type=float, help="attention: softmax scale (default 1/sqrt(D))")
    p.add_argument("--value-dim", type=int, help="attention: value dim N (default D)")
    p.add_argument("--form", help="payload form: softmax|generic|generic_fused (softmax), "
                   "attention|chain (attention); default the first")


def _add_strategy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", help="strategy name, or 'default' for IREE's own pipeline "
                   "(see 'tdkit strategies')")
    p.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="set a strategy knob (repeatable)")


def _add_tool_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compiler", default=os.environ.get(COMPILER_ENV),
                   help=f"iree-compile to use (default ${COMPILER_ENV} or the installed one)")
    p.add_argument("--artifacts", type=Path, help="directory for compile artifacts "
                   "(default: a fresh temporary directory)")
    _add_target_arg(p)
    p.add_argument("--target-cpu", default="host",
                   help="--iree-llvmcpu-target-cpu for every compile (default host)")
    p.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _add_target_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="cpu", metavar="TARGET",
                   help=f"device to generate code for: {', '.join(TARGETS)} (default cpu; GPU "
                   "targets compile anywhere and run only where that GPU exists)")


def _target(args: argparse.Namespace) -> str:
    target = getattr(args, "target", "cpu")
    if target not in TARGETS:
        raise BadInputError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    return target


def _problem(args: argparse.Namespace) -> Any:
    if args.problem not in KINDS:
        raise BadInputError(f"unknown problem {args.problem!r}; expected one of {', '.join(KINDS)}")
    if not args.shape:
        raise BadInputError(f"--shape is required for {args.problem}")
    try:
        shape = parse_shape(args.shape)
        dtype = parse_dtype(args.dtype)
        if args.problem == "softmax":
            return Softmax(shape, args.dim, dtype)
        from tdkit.matchers.attention_problem import Attention

        if len(shape) < 4:
            raise ValueError(f"attention shape {args.shape!r} needs at least 4 dims: "
                             "[batch...]xMxK2xD")
        *batch, m, k2, d = shape
        return Attention(batch=tuple(batch), m=m, k2=k2, d=d, n=args.value_dim, dtype=dtype,
                         scale=args.scale, causal=args.causal, mask=args.mask)
    except ValueError as err:
        raise BadInputError(str(err)) from None


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    """`NAME=VALUE` items as a dict; BadInputError naming `flag` for a malformed one."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise BadInputError(f"bad {flag} {item!r}: expected NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _knobs(args: argparse.Namespace) -> dict[str, str]:
    return _pairs(args.knob, "--knob")


def _variants(args: argparse.Namespace) -> list[dict[str, str]]:
    """`--variant NAME=VALUE[,NAME=VALUE...]` values as knob dicts (each on top of --knob)."""
    return [_pairs(text.split(","), "--variant") for text in getattr(args, "variant", None) or []]


def _strategy(args: argparse.Namespace, kind: str) -> str:
    """The strategy asked for, or the first family for `kind` on the target (or default)."""
    target = _target(args)
    if args.strategy:
        if args.strategy != registry.DEFAULT:
            try:
                family = registry.get(args.strategy)
            except KeyError as err:
                raise BadInputError(str(err.args[0])) from None
            if not family.supports(target):
                others = [f.name for f in registry.for_kind(kind or family.kinds[0], target)]
                raise BadInputError(f"strategy {family.name} generates {family.device} code, "
                                    f"not code for --target {target}"
                                    + (f"; try {', '.join(others)}" if others else ""))
        return args.strategy
    fams = registry.for_kind(kind, target)
    return fams[0].name if fams else registry.DEFAULT


TIMER_HELP = ("how CPU modules are timed: 'runtime' (default: the IREE Python runtime, called "
              "from an idle-priority thread so its spin-wait does not take a core from the "
              "workers) or 'benchmark-module' (iree-benchmark-module)")


def _config(args: argparse.Namespace, **kw: Any) -> HarnessConfig:
    opts = target_options(_target(args), CompileOptions(cpu=getattr(args, "target_cpu", "host")))
    if getattr(args, "timer", None):  # commands without --timer keep HarnessConfig's default
        kw.setdefault("timer", args.timer)
    return HarnessConfig(compiler=args.compiler, artifacts=args.artifacts, seed=args.seed,
                         compile=opts, **kw)


def _emit(out: dict[str, Any], args: argparse.Namespace, human: str) -> int:
    if args.json:
        print(json.dumps(out, default=str))
    else:
        print(human)
    return EXIT_OK if out.get("ok", True) else EXIT_FAILED


def cmd_emit(args: argparse.Namespace) -> int:
    problem = _problem(args)
    strategy = _strategy(args, problem.kind)
    if strategy == registry.DEFAULT:
        raise BadInputError(f"no tdkit strategy for {problem.kind} yet: nothing to emit")
    text = library_for(problem, strategy, _knobs(args), _target(args))
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _run_table(d: dict[str, Any]) -> str:
    lines = [f"{d['problem']}  form={d['form']}  strategy={d['strategy']}  "
             f"target={d['target']}",
             "  dispatches: " + ", ".join(f"{x['name']} [{x['strategy']}]"
                                           for x in d["dispatches"]),
             (f"  applied={d['applied']}  compiled, {d['not_run']}" if d.get("not_run") else
              f"  applied={d['applied']}  max_abs_err={d['max_abs_err']:.3g} "
              f"(tolerance {d['tolerance']:g})  {'OK' if d['ok'] else 'FAIL'}")]
    if d.get("time_ms") is not None:
        lines.append(f"  time {d['time_ms']:.4f} ms median, {d['min_ms']:.4f} ms min  "
                     f"({d['gflops']:.1f} GFLOP/s, {d['gbps']:.1f} GB/s)")
    if d.get("default_time_ms") is not None:
        lines.append(f"  default {d['default_time_ms']:.4f} ms median  "
                     f"speedup {d['speedup']:.2f}x  "
                     f"(default max_abs_err {d['default_max_abs_err']:.3g})")
    for n in d.get("notes", []) + d.get("default_notes", []):
        lines.append(f"  note: {n}")
    if d.get("reason"):
        lines.append(f"  reason: {d['reason']}")
    lines.append(f"  artifacts: {d['artifacts']}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    if Path(args.problem).suffix in (".mlir", ".onnx"):
        return _run_file(args)
    problem = _problem(args)
    if args.input or args.output_dir or args.function or args.no_raise or args.memory:
        raise BadInputError("--input/--output-dir/--function/--no-raise/--memory apply to "
                            "'tdkit run FILE.mlir'")
    strategy = _strategy(args, problem.kind)
    cfg = _config(args, rounds=args.rounds, repetitions=args.repetitions)
    res = run_problem(problem, strategy, knobs=_knobs(args), form=args.form,
                      compare_default=args.compare_default, timing=not args.no_time, cfg=cfg)
    d = res.as_dict()
    return _emit(d, args, _run_table(d))


def _run_file(args: argparse.Namespace) -> int:
    from tdkit.tools.modules import run_file

    path = Path(args.problem)
    if not path.exists():
        raise BadInputError(f"no such file: {path}")
    strategies = [args.strategy] if args.strategy and args.strategy != registry.DEFAULT else None
    if strategies:
        _strategy(args, "")
    cfg = _config(args, rounds=args.rounds, repetitions=args.repetitions)
    if path.suffix == ".onnx":
        from tdkit.tools.modules import run_onnx

        res = run_onnx(path, strategies=strategies, inputs=args.input,
                       output_dir=args.output_dir, cfg=cfg, timing=not args.no_time,
                       raise_attention=not args.no_raise, memory=args.memory)
    else:
        res = run_file(path, strategies=strategies, inputs=args.input, function=args.function,
                       output_dir=args.output_dir, cfg=cfg, timing=not args.no_time,
                       raise_attention=not args.no_raise, memory=args.memory)
    d = res.as_dict()
    human = [f"{path}  strategy={d['strategy']}  targeted dispatches: {d['targeted']}",
             "  dispatches: " + ", ".join(f"{x['name']} [{x['strategy']}]"
                                          for x in d["dispatches"]),
             (f"  compiled for {_target(args)}, {d['not_run']}" if d.get("not_run") else
              f"  vs IREE default build: max_abs_err={d['max_abs_err']:.3g} "
              f"(tolerance {d['tolerance']:g})  {'OK' if d['ok'] else 'FAIL'}")]
    if "onnxruntime_max_abs_err" in d:
        human.append(f"  vs onnxruntime: max_abs_err={d['onnxruntime_max_abs_err']:.3g}  "
                     f"{'OK' if d['onnxruntime_ok'] else 'FAIL'}")
    human.append(f"  IREE default build: {len(d['default_dispatches'])} dispatch(es)")
    if d.get("speedup"):
        human.append(f"  time {d['time_ms']:.4f} ms vs default {d['default_time_ms']:.4f} ms "
                     f"-> {d['speedup']:.2f}x")
    if d.get("peak_mb"):
        human.append(f"  peak memory of one call: {d['peak_mb']['tdkit']:.1f} MB vs default "
                     f"{d['peak_mb']['default']:.1f} MB")
    human += [f"  note: {n}" for n in d["notes"]]
    human.append("  outputs: " + ", ".join(d["outputs"]))
    return _emit(d, args, "\n".join(human))


def cmd_apply(args: argparse.Namespace) -> int:
    from tdkit.tools.inspect import strategy_ir

    problem = _problem(args)
    strategy = _strategy(args, problem.kind)
    if strategy == registry.DEFAULT:
        raise BadInputError(f"no tdkit strategy for {problem.kind} yet: nothing to apply")
    text = strategy_ir(problem, strategy, _knobs(args), form=args.form, cfg=_config(args))
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from tdkit.tools.bench import bench, bench_table

    problem = _problem(args)
    if args.strategy:
        strategies = [_strategy(args, problem.kind)]
    else:
        strategies = [f.name for f in registry.for_kind(problem.kind, _target(args))]
    strategies = [s for s in strategies if s != registry.DEFAULT]
    if not strategies:
        raise BadInputError(f"no tdkit strategy for {problem.kind} to benchmark")
    cfg = _config(args, rounds=args.rounds, repetitions=args.repetitions,
                  threads=args.threads)
    if args.threads is not None and cfg.compile.is_gpu:
        raise BadInputError("--threads sets CPU threads; a GPU target times on the GPU")
    variants = _variants(args)
    if variants and not args.strategy:
        raise BadInputError("--variant sets knobs of one family: name it with --strategy")
    for extra in variants:  # bad knobs fail before anything compiles
        library_for(problem, strategies[0], {**_knobs(args), **extra}, _target(args))
    if args.memory:
        from tdkit.tools.memory import memory_bench, memory_table

        if problem.kind != "attention":
            raise BadInputError("--memory measures attention problems")
        if variants:
            raise BadInputError("--memory measures one build; --variant is for timing")
        m = memory_bench(problem, strategies[0], cfg)
        return _emit(m, args, memory_table(m))
    d = bench(problem, strategies, _knobs(args), form=args.form, cfg=cfg,
              with_peers=not args.no_peers, variants=variants)
    return _emit(d, args, bench_table(d))


def cmd_tune(args: argparse.Namespace) -> int:
    from tdkit.tools.tune import TuneConfig, parse_space, summary_table, tune, tune_file

    is_file = Path(args.problem).suffix in (".mlir", ".onnx")
    problem = None if is_file else _problem(args)
    if args.knob:
        raise BadInputError("tune searches the knobs: give ranges with --space KNOB=V1,V2")
    if not is_file and (args.input or args.function or args.no_raise):
        raise BadInputError("--input/--function/--no-raise apply to "
                            "'tdkit tune FILE.mlir|model.onnx'")
    strategies: list[str] | None
    if args.strategy:
        strategies = [_strategy(args, problem.kind if problem else "")]
        if strategies == [registry.DEFAULT]:
            raise BadInputError("IREE's default pipeline has no knobs to tune")
    else:
        strategies = None if is_file else \
            [f.name for f in registry.for_kind(problem.kind, _target(args))]
    if args.space and (strategies is None or len(strategies) != 1):
        raise BadInputError("--space needs one --strategy (knob names are per strategy)")
    for name, value in (("--jobs", args.jobs), ("--baseline-every", args.baseline_every),
                        ("--repetitions", args.repetitions)):
        if value is not None and value <= 0:
            raise BadInputError(f"{name} must be positive, got {value}")
    if args.time_limit is not None and args.time_limit <= 0:
        raise BadInputError(f"--time-limit must be positive, got {args.time_limit}")
    space = parse_space(registry.get(strategies[0]), args.space) if strategies and args.space \
        else {}
    tcfg = TuneConfig(search=args.search, budget=args.budget, time_limit_s=args.time_limit,
                      jobs=args.jobs, seed=args.seed, db=args.db, executor=args.executor,
                      address=args.address, space=space, baseline_every=args.baseline_every,
                      timeout_factor=args.timeout_factor, min_timeout_s=args.min_timeout,
                      repetitions=args.repetitions, confirm_rounds=args.confirm_rounds,
                      confirm_top=args.confirm_top,
                      progress=False if args.no_progress else None)
    if is_file:
        summaries = tune_file(Path(args.problem), strategies, inputs=args.input,
                              function=args.function, cfg=_config(args), tcfg=tcfg,
                              raise_attention=not args.no_raise)
    else:
        summaries = tune(problem, strategies or [], form=args.form, cfg=_config(args),
                         tcfg=tcfg)
    sweeps = [s.as_dict() for s in summaries]
    out = {"ok": all(d["ok"] for d in sweeps), "sweeps": sweeps}
    return _emit(out, args, summary_table(summaries))


def cmd_export(args: argparse.Namespace) -> int:
    from tdkit.tools.export import export, export_table
    from tdkit.tools.toolchain import tool_versions

    versions = None if args.any_tools else tool_versions(args.compiler)
    done = export(args.db, args.output, tuning_spec=args.tuning_spec, tool_versions=versions)
    return _emit(done.as_dict(), args, export_table(done))


def cmd_report(args: argparse.Namespace) -> int:
    from tdkit.tools.report import write_report

    out = write_report(args.db, args.output)
    return _emit(out, args, f"wrote {out['summary']} and {len(out['plots'])} plots")


def cmd_smoke(args: argparse.Namespace) -> int:
    from tdkit.tools.smoke import run_smoke

    cfg = _config(args, rounds=1, repetitions=2, min_time_s=0.02)
    return run_smoke(level="full" if args.full else "quick", strategies=args.strategy,
                     junit=args.junit, as_json=args.json, cfg=cfg)


def cmd_inspect(args: argparse.Namespace) -> int:
    from tdkit.tools.listing import inspect_file, inspect_table

    strategies = [args.strategy] if args.strategy else None
    if strategies:
        _strategy(args, "")
    d = inspect_file(Path(args.file), strategies=strategies, cfg=_config(args),
                     raise_attention=not args.no_raise)
    return _emit(d, args, inspect_table(d))


def cmd_strategies(args: argparse.Namespace) -> int:
    import dataclasses

    for fam in registry.families().values():
        knobs = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(fam.knobs))
        print(f"{fam.name:<16} {'/'.join(fam.kinds):<10} {fam.description}\n"
              f"{'':<16} knobs: {knobs}")
    print(f"{registry.DEFAULT:<16} {'any':<10} IREE's own codegen pipeline")
    return EXIT_OK


def _problem_command(sub: Any, name: str, help_text: str, *, file_ok: bool = False,
                     output: bool = False) -> argparse.ArgumentParser:
    """A subcommand taking a problem, a strategy with knobs, and the tool options."""
    p = sub.add_parser(name, help=help_text)
    _add_problem_args(p, file_ok=file_ok)
    _add_strategy_args(p)
    _add_tool_args(p)
    if output:
        p.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tdkit", description="Transform-dialect strategies for softmax and "
                     "attention in IREE: emit them, apply them, run, verify and benchmark.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = _problem_command(sub, "emit", "print the transform library for a problem", output=True)
    p.set_defaults(fn=cmd_emit)

    p = _problem_command(sub, "run", "compile, run, verify and time a problem or a payload file",
                         file_ok=True)
    p.add_argument("--compare-default", action="store_true",
                   help="also build, verify and time IREE's default pipeline")
    p.add_argument("--input", action="append", default=[], metavar="@X.npy",
                   help="FILE.mlir: an input .npy, in argument order (repeatable)")
    p.add_argument("--output-dir", type=Path, help="FILE.mlir: where outputs are saved as .npy")
    p.add_argument("--function", help="FILE.mlir: function to run (default @main)")
    p.add_argument("--no-time", action="store_true", help="skip timing")
    p.add_argument("--no-raise", action="store_true", help="FILE: do not raise unfused "
                   "attention chains to one attention op before dispatch formation")
    p.add_argument("--memory", action="store_true", help="FILE: also measure the peak "
                   "resident memory of one call, tdkit's build vs IREE's default")
    p.add_argument("--rounds", type=int, default=2, help="timing rounds (default 2)")
    p.add_argument("--timer", choices=TIMERS, default="runtime", help=TIMER_HELP)
    p.add_argument("--repetitions", type=int, default=3, help="repetitions per round")
    p.set_defaults(fn=cmd_run)

    p = _problem_command(sub, "apply", "show a dispatch's IR right after the strategy ran",
                         output=True)
    p.set_defaults(fn=cmd_apply)

    p = _problem_command(sub, "bench", "time tdkit's strategies, IREE's default and peers "
                         "(memory bandwidth; attention: SGEMM, numpy, torch SDPA) side by side")
    p.add_argument("--no-peers", action="store_true", help="skip copy/SGEMM/numpy/torch")
    p.add_argument("--memory", action="store_true", help="attention: peak resident memory of "
                   "one call, strategy vs IREE's default on the plain linalg chain")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--timer", choices=TIMERS, default="runtime", help=TIMER_HELP)
    p.add_argument("--repetitions", type=int, default=3, help="repetitions per round")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE[,...]",
                   help="also time the strategy with these knobs (on top of --knob), "
                   "verified and interleaved with the others (repeatable)")
    p.add_argument("--threads", type=_cpu_threads, help="CPU threads for every timed kernel: "
                   "IREE's local-task workers, numpy's BLAS and torch (default: each one's "
                   "own, one per core); 1 compares single-core kernels")
    p.set_defaults(fn=cmd_bench)

    p = _problem_command(sub, "tune", "search a strategy's knobs: every candidate verified, "
                         "faults recorded, results in a resumable SQLite database",
                         file_ok=True)
    p.add_argument("--input", action="append", default=[], metavar="@X.npy",
                   help="FILE: an input .npy, in argument order (repeatable)")
    p.add_argument("--function", help="FILE.mlir: function to tune (default @main)")
    p.add_argument("--no-raise", action="store_true", help="FILE: tune the module as written "
                   "(do not raise unfused attention first)")
    p.add_argument("--search", default="tpe", choices=("tpe", "random", "grid"),
                   help="search algorithm (default tpe: optuna's TPE sampler)")
    p.add_argument("--budget", type=int, help="candidates to evaluate, counting earlier runs of "
                   "the same sweep in --db (default: 50; grid: the whole space)")
    p.add_argument("--time-limit", type=float, metavar="S", help="start no candidate after S s")
    p.add_argument("--jobs", type=int, help="parallel compiles (default: number of cores)")
    p.add_argument("--db", type=Path, default=Path("tdkit-tune.db"),
                   help="SQLite results file (default tdkit-tune.db); rerun to resume")
    p.add_argument("--space", action="append", default=[], metavar="KNOB=V1,V2",
                   help="replace a knob's declared range (repeatable)")
    p.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="local process pool (default) or a Ray cluster")
    p.add_argument("--address", help="Ray cluster address HOST:PORT (default: start a local one)")
    p.add_argument("--baseline-every", type=int, default=24,
                   help="re-measure IREE's default after this many benchmarks (default 24)")
    p.add_argument("--timeout-factor", type=float, default=10.0,
                   help="kill a compile/run after this many times the default's (default 10)")
    p.add_argument("--min-timeout", type=float, default=60.0, metavar="S",
                   help="but never before S seconds (default 60)")
    p.add_argument("--repetitions", type=int, default=3, help="benchmark repetitions")
    p.add_argument("--confirm-rounds", type=int, default=3, help="final side-by-side rounds "
                   "of default, untuned defaults and the fastest candidates (0 = skip)")
    p.add_argument("--confirm-top", type=int, default=3, help="how many of the fastest "
                   "candidates the final rounds re-time; the best is chosen from them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_tune)

    p = sub.add_parser("export", help="write the best verified tuned strategy of every problem "
                       "in a results database as one transform library (and a tuning spec)")
    p.add_argument("--db", type=Path, required=True, help="results database of 'tdkit tune'")
    p.add_argument("-o", "--output", type=Path, required=True, help="transform library to write")
    p.add_argument("--tuning-spec", type=Path, help="IREE tuning spec for the configuring "
                   "(config family) candidates (default: <output>.tuning-spec.mlir)")
    p.add_argument("--any-tools", action="store_true", help="also rows measured with other "
                   "compiler/runtime versions (default: only the current tools')")
    p.add_argument("--compiler", default=os.environ.get(COMPILER_ENV), help="iree-compile whose "
                   "version selects the rows")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("report", help="markdown summary and PNG plots of a results database")
    p.add_argument("--db", type=Path, required=True, help="results database of 'tdkit tune'")
    p.add_argument("-o", "--output", type=Path, default=Path("tdkit-report"),
                   help="directory for summary.md and the plots (default tdkit-report)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("smoke", help="run the built-in problem x strategy x dtype matrix")
    level = p.add_mutually_exclusive_group()
    level.add_argument("--quick", action="store_true", help="a few cases per strategy (default)")
    level.add_argument("--full", action="store_true", help="the whole matrix")
    p.add_argument("--strategy", action="append", help="only these strategies (repeatable)")
    p.add_argument("--junit", type=Path, help="write JUnit XML here")
    p.add_argument("--compiler", default=os.environ.get(COMPILER_ENV), help="iree-compile to use")
    p.add_argument("--artifacts", type=Path, help="directory for compile artifacts")
    _add_target_arg(p)
    p.add_argument("--seed", type=int, default=0, help="input seed")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(fn=cmd_smoke)

    p = sub.add_parser("inspect", help="list the dispatches IREE forms from FILE.mlir|.onnx "
                       "and the strategy each will get")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--strategy", help="only this family (default: all)")
    p.add_argument("--no-raise", action="store_true", help="only the dispatches as written "
                   "(skip recognizing and raising unfused attention)")
    _add_tool_args(p)
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("strategies", help="list strategy families and their knobs")
    p.set_defaults(fn=cmd_strategies)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ToolError as err:
        print(f"tdkit: error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except TdkitError as err:
        print(f"tdkit: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("tdkit: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (one line, never a traceback)
        if os.environ.get("TDKIT_DEBUG"):
            raise
        print(f"tdkit: internal error: {type(err).__name__}: {err} "
              "(set TDKIT_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
