"""Side-by-side benchmarks: tdkit's strategies, IREE's default pipeline and the peers (memory
copy, SGEMM, numpy, torch SDPA), timed in one interleaved run so machine noise hits all alike."""

from __future__ import annotations

from typing import Any

from iree.compiler import ir

from tdkit.matchers.payload import stream_module
from tdkit.strategies import registry
from tdkit.tools import peers
from tdkit.tools.applied import dispatches
from tdkit.tools.errors import BadInputError
from tdkit.tools.harness import (
    Build,
    HarnessConfig,
    build,
    compile_default,
    device_for,
    execute,
    payload_text,
    rates,
    resolve_form,
    run_root,
    time_builds,
)
from tdkit.tools.toolchain import Timing


def variant_label(strategy: str, knobs: dict[str, str]) -> str:
    """The row name of a knob variant: `flash[key_tile=8,value_tile=16]`."""
    return f"{strategy}[{','.join(f'{k}={v}' for k, v in knobs.items())}]"


def bench(problem: Any, strategies: list[str], knobs: dict[str, str] | None, *,
          form: str | None, cfg: HarnessConfig, with_peers: bool = True,
          variants: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Compile and verify every strategy in `strategies` and IREE's default on `problem`, time
    them interleaved, then time the peers; returns one record. Top-level `strategy`, `time_ms`,
    `default_time_ms` and `speedup` describe the first strategy. Each of `variants` (knobs on
    top of `knobs`) adds a build of the first strategy, verified and timed in the same rounds;
    its row's `vs_strategy` is the first strategy's time over its own."""
    form = resolve_form(problem, form)
    run_opts, not_run = device_for(cfg)
    if not_run:
        raise BadInputError(f"bench times kernels on a {cfg.compile.driver} device and this "
                            f"machine has none; 'tdkit run --target {cfg.compile.target_name}' "
                            f"compiles and checks without one")
    with_peers = with_peers and not cfg.compile.is_gpu  # the peers are CPU kernels
    root = run_root(problem, form, cfg)
    payload = payload_text(problem, form)
    inputs = problem.make_inputs(cfg.seed)
    expected = problem.reference(inputs)
    names = [*strategies, registry.DEFAULT]

    def checked(name: str, build_knobs: dict[str, str] | None, out_dir: str) -> Build:
        b = build(problem, form, name, build_knobs, root / out_dir, cfg, payload)
        execute(b, problem, inputs, expected, run_opts)
        return b

    builds = [checked(n, knobs if n != registry.DEFAULT else None, n) for n in names]
    default = builds[-1]
    variant_builds = []
    for i, extra in enumerate(variants or []):
        b = checked(names[0], {**(knobs or {}), **extra}, f"{names[0]}-variant{i}")
        b.strategy = variant_label(names[0], extra)
        variant_builds.append(b)
    builds += variant_builds
    timed = list(builds)
    if with_peers and problem.kind == "softmax":
        timed.append(_stream_build(problem, root / "stream", cfg))
    time_builds(timed, inputs, cfg, run_opts)
    rows: dict[str, dict[str, Any]] = {}
    for b in builds:
        t = b.timing
        rows[b.strategy] = {
            "ok": bool(b.verdict and b.verdict.ok), "applied": b.applied,
            "max_abs_err": b.verdict.max_abs_err if b.verdict else None,
            "time_ms": t.median_ms, "min_ms": t.min_ms, **rates(problem, t.median_ms),
            "speedup": default.timing.median_ms / t.median_ms,
            "dispatches": [d.as_dict() for d in b.dispatches], "artifacts": str(b.artifact.dir),
            "notes": b.notes,
        }
    main = rows[names[0]]
    for b in variant_builds:
        rows[b.strategy]["vs_strategy"] = main["time_ms"] / rows[b.strategy]["time_ms"]
    out: dict[str, Any] = {
        "ok": all(r["ok"] and r["applied"] for n, r in rows.items() if n != registry.DEFAULT),
        "problem": problem.label, "kind": problem.kind, "form": form,
        "target": cfg.compile.target_name,
        "strategy": names[0], "applied": main["applied"], "dispatches": main["dispatches"],
        "max_abs_err": main["max_abs_err"], "tolerance": builds[0].verdict.tolerance,
        "time_ms": main["time_ms"], "min_ms": main["min_ms"], "gflops": main["gflops"],
        "gbps": main["gbps"], "default_time_ms": rows[registry.DEFAULT]["time_ms"],
        "speedup": main["speedup"], "builds": rows,
        "timing": {"rounds": cfg.rounds, "repetitions": cfg.repetitions,
                   "threads": cfg.threads},
    }
    if with_peers:
        out["peers"] = _peers(problem, cfg, main)
        if len(timed) > len(builds):
            out["peers"]["stream"] = _peer_row(timed[-1].timing, flops=0, nbytes=problem.bytes,
                                               main_ms=main["time_ms"])
            out["copy_gbps"] = out["peers"]["stream"]["gbps"]
            out["fraction_of_copy"] = main["gbps"] / out["copy_gbps"]
    return out


def _stream_build(problem: Any, out_dir: Any, cfg: HarnessConfig) -> Build:
    """IREE's default build of `-x` over the problem's shape: the same bytes read and written
    once, with the same runtime and threads as the strategy."""
    with ir.Context(), ir.Location.unknown():
        payload = str(stream_module(problem.shape, problem.dtype.mlir_type()))
    art, notes = compile_default(payload, out_dir, cfg)
    return Build("stream", art, dispatches(art), applied=True, notes=notes)


def _peer_row(t: Timing, *, flops: float, nbytes: float, main_ms: float) -> dict[str, float]:
    return {"time_ms": t.median_ms, "min_ms": t.min_ms, "gflops": flops / t.median_ms / 1e6,
            "gbps": nbytes / t.median_ms / 1e6, "ratio_vs_strategy": t.median_ms / main_ms}


def _peers(problem: Any, cfg: HarnessConfig, main: dict[str, Any]) -> dict[str, Any]:
    ms = main["time_ms"]
    out: dict[str, Any] = {}
    if problem.kind == "softmax":
        out["copy"] = _peer_row(peers.copy_timing(problem.bytes), flops=0,
                                nbytes=problem.bytes, main_ms=ms)
        out["copy"]["strategy_fraction"] = main["gbps"] / out["copy"]["gbps"]
    if problem.kind == "attention":
        t, flops = peers.sgemm_timing(threads=cfg.threads)
        out["sgemm_2048"] = _peer_row(t, flops=flops, nbytes=0, main_ms=ms)
        out["sgemm_2048"]["strategy_fraction"] = main["gflops"] / out["sgemm_2048"]["gflops"]
        out["numpy"] = _peer_row(peers.numpy_attention_timing(problem, cfg.seed,
                                                              threads=cfg.threads),
                                 flops=problem.flops, nbytes=problem.bytes, main_ms=ms)
        torch_t = peers.torch_sdpa_timing(problem, cfg.seed, threads=cfg.threads)
        if torch_t is not None:
            out["torch_sdpa"] = _peer_row(torch_t, flops=problem.flops, nbytes=problem.bytes,
                                          main_ms=ms)
        else:
            out["torch_sdpa"] = {"skipped": "torch not installed (pip install '.[bench]')"}
    return out


def bench_table(record: dict[str, Any]) -> str:
    """A fixed-width table of one bench record: builds (and knob variants), then peers."""
    w = max([22, *(len(n) for n in record["builds"])])
    head = (f"{'build':<{w}} {'ms (median)':>11} {'min ms':>9} {'GFLOP/s':>8} {'GB/s':>7} "
            f"{'vs default':>10} {'max err':>9}  ok")
    threads = record.get("timing", {}).get("threads")
    where = (f"  threads: {threads} (IREE workers, BLAS, torch)" if threads
             else "  threads: each runtime's default")
    lines = [record["problem"] + f"  [{record['form']}]" + where, head, "-" * len(head)]
    for name, r in record["builds"].items():
        extra = (f"  {r['vs_strategy']:.3f}x {record['strategy']}'s speed"
                 if "vs_strategy" in r else "")
        lines.append(f"{name:<{w}} {r['time_ms']:>11.4f} {r['min_ms']:>9.4f} {r['gflops']:>8.1f} "
                     f"{r['gbps']:>7.1f} {r['speedup']:>9.2f}x {r['max_abs_err']:>9.2e}  "
                     f"{'OK' if r['ok'] and r['applied'] else 'FAIL'}{extra}")
    for name, r in record.get("peers", {}).items():
        if "skipped" in r:
            lines.append(f"{name:<{w}} skipped: {r['skipped']}")
            continue
        extra = ""
        if name == "stream":
            extra = (f"  strategy = {100 * record['fraction_of_copy']:.0f}% of this bandwidth "
                     "(IREE -x over the same bytes and threads, interleaved)")
        if name == "copy":
            extra = (f"  strategy = {100 * r['strategy_fraction']:.0f}% of this bandwidth "
                     "(numpy memcpy, 1 thread)")
        if name == "sgemm_2048":
            extra = f"  strategy = {100 * r['strategy_fraction']:.0f}% of the SGEMM rate"
        elif name in ("numpy", "torch_sdpa"):
            extra = f"  strategy is {r['ratio_vs_strategy']:.2f}x faster"
        lines.append(f"{name:<{w}} {r['time_ms']:>11.4f} {r['min_ms']:>9.4f} {r['gflops']:>8.1f} "
                     f"{r['gbps']:>7.1f} {'':>10} {'':>9}  {extra}")
    return "\n".join(lines)
