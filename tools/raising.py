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

from tdkit.matchers.attention import (
    CODEGEN_MASK_BOOL,
    CODEGEN_MASK_FLOAT,
    CODEGEN_MASK_KEYS,
    CODEGEN_MASK_NONE,
)
from tdkit.matchers.attention_problem import Attention
from tdkit.matchers.frontend import (
    MASK_ADD,
    MASK_KEEP,
    MASK_NONE,
    AttentionChain,
    NearMiss,
    SoftmaxChain,
    find_attention,
    find_softmax,
)
from tdkit.strategies.base import KnobError
from tdkit.strategies.library import renamed
from tdkit.strategies.raising import build_raising_spec
from tdkit.tools.errors import NotAppliedError
from tdkit.tools.toolchain import compile_module

PREPROCESSING = "preprocessing"


@dataclass
class RaisePlan:
    """What raising found in a module and the spec that raises it (None: nothing to raise)."""

    raised: list[str] = field(default_factory=list)  # labels of the chains the spec raises
    not_raised: list[NearMiss] = field(default_factory=list)
    spec: str | None = None
    # per raised chain: the Attention problem it computes and its codegen mask kind
    problems: list[tuple[Any, str]] = field(default_factory=list)

    def entries(self, families: list[Any], target: str = "cpu") -> list[Any]:
        """Library entries with knobs fitted to each raised chain (head dims past the
        problem-free entries' 64, a key-padding mask), for the families that can lower it
        on `target`."""
        out = []
        for i, (problem, mask) in enumerate(self.problems):
            for family in families:
                if family.masked_entries is None or problem.kind not in family.kinds or \
                        not family.supports(target):
                    continue
                knobs = family.parse_knobs({}, problem, target)
                try:
                    family.check(problem, knobs)
                except KnobError:
                    continue
                out += [renamed(e, f"_r{i}") for e in family.masked_entries(problem, knobs, mask)]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"raised": self.raised,
                "not_raised": [{"where": m.where, "reason": m.reason} for m in self.not_raised]}

    @property
    def attention_count(self) -> int:
        return len(self.problems)

    def check_applied(self, infos: list[Any]) -> None:
        """NotAppliedError unless the compile holds at least one attention dispatch per raised
        chain: a preprocessing spec whose matcher finds nothing changes nothing, silently."""
        found = sum(1 for d in infos if "iree_linalg_ext.online_attention" in d.source)
        if found < self.attention_count:
            raise NotAppliedError(f"raising did not apply: {self.attention_count} attention "
                                  f"chain(s) recognized, {found} attention dispatch(es) formed")

    def notes(self) -> list[str]:
        out = [f"raised {label} (one {label.split()[0]} op)" for label in self.raised]
        out += [f"not raised: {m.where}: {m.reason}" for m in self.not_raised]
        return out


def find_chains(module: ir.Module
                ) -> tuple[list[AttentionChain], list[NearMiss], list[SoftmaxChain]]:
    """Attention chains, near misses, and decomposed softmaxes outside those chains."""
    chains: list[AttentionChain] = []
    misses: list[NearMiss] = []
    softmaxes: list[SoftmaxChain] = []
    for op in module.body.operations:
        if op.operation.name == "util.func" and op.operation.regions[0].blocks:
            found, missed = find_attention(op.operation)
            chains += found
            misses += missed
            taken = {o for c in found for o in c.ops}
            softmaxes += find_softmax(op.operation, taken)
    return chains, misses, softmaxes


def plan_raising(text: str, out_dir: Path, cfg: Any) -> RaisePlan:
    """Compile `text` to the preprocessing stage in `out_dir` and plan its raising."""
    opts = replace(cfg.compile, compile_to=PREPROCESSING)
    art = compile_module(text, out_dir, opts, compiler=cfg.compiler)
    plan = RaisePlan()
    with ir.Context(), ir.Location.unknown():
        module = ir.Module.parse(art.vmfb.read_text())
        chains, plan.not_raised, softmaxes = find_chains(module)
        if chains or softmaxes:
            spec = build_raising_spec(chains, softmaxes)
            spec.operation.verify()
            plan.spec = str(spec)
            plan.raised = [c.label for c in chains] + [s.label for s in softmaxes]
            plan.problems = [(chain_problem(c), CODEGEN_MASKS_BY_CHAIN[_mask_key(c)])
                             for c in chains]
    return plan


# (chain mask kind, varies along every scores dim) -> codegen mask kind
CODEGEN_MASKS_BY_CHAIN = {(MASK_NONE, True): CODEGEN_MASK_NONE,
                          (MASK_ADD, True): CODEGEN_MASK_FLOAT,
                          (MASK_ADD, False): CODEGEN_MASK_KEYS,
                          (MASK_KEEP, True): CODEGEN_MASK_BOOL,
                          (MASK_KEEP, False): CODEGEN_MASK_BOOL}


def _mask_key(chain: AttentionChain) -> tuple[str, bool]:
    return chain.mask, None not in chain.mask_dims


def chain_problem(chain: AttentionChain) -> Attention:
    """The Attention problem a chain computes (its mask aside: see the codegen mask kind)."""
    return Attention(batch=chain.batch, m=chain.m, k2=chain.k2, d=chain.d, n=chain.n,
                     dtype=chain.dtype, scale=chain.scale)
