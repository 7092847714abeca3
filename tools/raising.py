"""Find unfused attention in a module and write the preprocessing spec that raises it.

`plan_raising(text, ...)` compiles the module up to IREE's preprocessing stage (what a
preprocessing transform spec sees), finds attention chains and near misses there
(`tdkit.matchers.frontend`), and builds the spec (`tdkit.strategies.raising`) that replaces
each chain with one `iree_linalg_ext.attention`, so IREE forms one attention dispatch (which
the flash strategy then compiles) instead of three or more with the score matrix in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from iree.compiler import ir

from tdkit.matchers.frontend import AttentionChain, NearMiss, find_attention
from tdkit.strategies.raising import build_raising_spec
from tdkit.tools.toolchain import compile_module

PREPROCESSING = "preprocessing"


@dataclass
class RaisePlan:
    """What raising found in a module and the spec that raises it (None: nothing to raise)."""

    raised: list[str] = field(default_factory=list)  # labels of the chains the spec raises
    not_raised: list[NearMiss] = field(default_factory=list)
    spec: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"raised": self.raised,
                "not_raised": [{"where": m.where, "reason": m.reason} for m in self.not_raised]}

    def notes(self) -> list[str]:
        out = [f"raised {label} (one attention dispatch)" for label in self.raised]
        out += [f"not raised: {m.where}: {m.reason}" for m in self.not_raised]
        return out


def find_chains(module: ir.Module) -> tuple[list[AttentionChain], list[NearMiss]]:
    chains: list[AttentionChain] = []
    misses: list[NearMiss] = []
    for op in module.body.operations:
        if op.operation.name == "util.func" and op.operation.regions[0].blocks:
            found, missed = find_attention(op.operation)
            chains += found
            misses += missed
    return chains, misses


def plan_raising(text: str, out_dir: Path, cfg: Any) -> RaisePlan:
    """Compile `text` to the preprocessing stage in `out_dir` and plan its raising."""
    opts = replace(cfg.compile, compile_to=PREPROCESSING)
    art = compile_module(text, out_dir, opts, compiler=cfg.compiler)
    plan = RaisePlan()
    with ir.Context(), ir.Location.unknown():
        module = ir.Module.parse(art.vmfb.read_text())
        chains, plan.not_raised = find_chains(module)
        if chains:
            spec = build_raising_spec(chains)
            spec.operation.verify()
            plan.spec = str(spec)
            plan.raised = [c.label for c in chains]
    return plan
