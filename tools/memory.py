"""Peak-memory benchmark of one attention call: tdkit's flash strategy against IREE's default
build of the plain linalg chain (matmul -> softmax -> matmul), each minus a baseline module that
takes the same inputs and returns an output of the same size without computing attention."""

from __future__ import annotations

from typing import Any

from iree.compiler import ir

from tdkit.matchers.payload import negate_first_module, tensor_type
from tdkit.strategies import registry
from tdkit.tools.errors import BadInputError
from tdkit.tools.harness import HarnessConfig, build, compile_default, payload_text, run_root
from tdkit.tools.toolchain import peak_rss_module

MB = 1 << 20


def baseline_payload(problem: Any) -> str:
    """`@main(q, k, v[, mask]) -> -q`: the runtime, the inputs and an output of the attention's
    size (needs N == D), and no attention."""
    if problem.value_dim != problem.d:
        raise BadInputError("the memory baseline needs value dim N == head dim D")
    with ir.Context(), ir.Location.unknown():
        arg_types = [tensor_type(shape, dt.mlir_type()) for shape, dt in problem.input_specs()]
        return str(negate_first_module(arg_types))


def memory_bench(problem: Any, strategy: str, cfg: HarnessConfig) -> dict[str, Any]:
    """Peak resident memory of one call for `strategy` (attention form), IREE's default on the
    plain chain, and the baseline; `added_mb` is each minus the baseline."""
    root = run_root(problem, "memory", cfg)
    inputs = problem.make_inputs(cfg.seed)
    base_art, _ = compile_default(baseline_payload(problem), root / "baseline", cfg)
    builds = {
        strategy: build(problem, "attention", strategy, None, root / strategy, cfg),
        "default (chain)": build(problem, "chain", registry.DEFAULT, None, root / "chain", cfg,
                                 payload_text(problem, "chain")),
    }
    base = peak_rss_module(base_art.vmfb, inputs, root / "baseline" / "rss")
    rows: dict[str, Any] = {"baseline": {"peak_mb": base / MB, "added_mb": 0.0}}
    for name, b in builds.items():
        peak = peak_rss_module(b.artifact.vmfb, inputs, b.artifact.dir / "rss")
        rows[name] = {"peak_mb": peak / MB, "added_mb": (peak - base) / MB,
                      "dispatches": [d.as_dict() for d in b.dispatches]}
    io_mb = problem.bytes / MB
    return {"ok": True, "problem": problem.label, "inputs_outputs_mb": io_mb, "builds": rows}


def memory_table(record: dict[str, Any]) -> str:
    lines = [f"{record['problem']}  (inputs + output: {record['inputs_outputs_mb']:.1f} MB)",
             f"{'build':<20} {'peak RSS MB':>12} {'added MB':>10}"]
    for name, r in record["builds"].items():
        lines.append(f"{name:<20} {r['peak_mb']:>12.1f} {r['added_mb']:>10.1f}")
    return "\n".join(lines)
