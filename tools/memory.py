"""Peak-memory benchmark of one attention call: tdkit's flash strategy against IREE's default
build of the plain linalg chain (matmul -> softmax -> matmul), each minus a baseline module that
takes the same inputs and returns an output of the same size without computing attention."""

from __future__ import annotations

from typing import Any

from iree.compiler import ir
from iree.compiler.dialects import arith, func

from tdkit.matchers.payload import affine_map, empty, generic, tensor_type
from tdkit.strategies import registry
from tdkit.tools.harness import HarnessConfig, build, payload_text, run_root
from tdkit.tools.toolchain import peak_rss_module

MB = 1 << 20


def baseline_payload(problem: Any) -> str:
    """`@main(q, k, v[, mask]) -> -q`-shaped output (B x M x N, N <= D: a slice of q negated):
    the runtime, the inputs and the output, and no attention."""
    with ir.Context(), ir.Location.unknown():
        elem = problem.dtype.mlir_type()
        arg_types = [tensor_type(shape, dt.mlir_type()) for shape, dt in problem.input_specs()]
        out_shape, _ = problem.output_spec()
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):

            @func.FuncOp.from_py_func(*arg_types, name="main")
            def main(q: ir.Value, *_rest: ir.Value) -> ir.Value:
                rank = len(out_shape)
                ident = affine_map(rank, list(range(rank)))
                (y,) = generic([q], [empty(out_shape, elem)], [ident, ident], ["parallel"] * rank,
                               lambda a, _o: [arith.NegFOp(a).result])
                return y

        if problem.value_dim != problem.d:
            raise ValueError("the memory baseline needs N == D")
        return str(module)


def memory_bench(problem: Any, strategy: str, cfg: HarnessConfig) -> dict[str, Any]:
    """Peak resident memory of one call for `strategy` (attention form), IREE's default on the
    plain chain, and the baseline; `added_mb` is each minus the baseline."""
    from tdkit.tools.harness import compile_default

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
