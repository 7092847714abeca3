"""`tdkit inspect FILE`: the dispatches IREE forms from a payload module or ONNX model and the
strategy each will get (a tdkit spec, or IREE's default pipeline), without compiling code;
before and after raising unfused attention, with what was recognized, raised or left alone."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from tdkit.strategies import registry
from tdkit.tools.applied import dispatches
from tdkit.tools.errors import BadInputError
from tdkit.tools.harness import HarnessConfig
from tdkit.tools.toolchain import compile_module

# Ops that say what a dispatch computes, in the configured executable IR.
_ROOT_OPS = re.compile(r"\b(iree_linalg_ext\.(?!yield)\w+|linalg\.(?!yield|index|fill)\w+)")


def inspect_file(path: Path, *, strategies: list[str] | None, cfg: HarnessConfig,
                 raise_attention: bool = True) -> dict[str, Any]:
    """Configure `path` with every family's library (or the named ones) and describe each
    dispatch: its name, the ops it holds, the family that targets it, the pipeline it gets;
    with `raise_attention`, both as written and after raising (`tdkit.tools.raising`)."""
    if not path.exists():
        raise BadInputError(f"no such file: {path}")
    root = cfg.root() / path.stem / "inspect"
    from tdkit.tools.modules import import_model, payload_entries, read_signature

    if path.suffix == ".onnx":
        path = import_model(path, root, cfg)

    text = path.read_text()
    read_signature(text, None)  # one clear error for malformed modules
    target = cfg.compile.target_name
    fams, entries = payload_entries(strategies, target)
    library = registry.library_text(entries)
    opts = replace(cfg.compile, compile_to="executable-configurations")

    def configure(where: Path, spec: str | None) -> list[dict[str, Any]]:
        art = compile_module(text, where, opts, strategy=library, compiler=cfg.compiler,
                             preprocessing=spec)
        rows = []
        for d in dispatches(art):
            ops = sorted(set(_ROOT_OPS.findall(d.source)))
            family = next((f.name for f in fams if f.targets(d)), None)
            rows.append({"name": d.name, "ops": ops, "targeted_by": family,
                         "strategy": d.strategy, "by_tdkit": d.by_tdkit})
        return rows

    before = configure(root / "as-written", None)
    out: dict[str, Any] = {"module": str(path), "dispatches": before,
                           "artifacts": str(root)}
    rows = before
    if raise_attention:
        from tdkit.tools.raising import plan_raising

        plan = plan_raising(text, root / "preprocessing", cfg)
        out.update(plan.as_dict())
        if plan.spec is not None:
            library = registry.library_text(plan.entries(fams, target) + entries)
            rows = configure(root / "raised", plan.spec)
            out["raised_dispatches"] = rows
    out["ok"] = all(r["by_tdkit"] for r in rows if r["targeted_by"])
    return out


def inspect_table(record: dict[str, Any]) -> str:
    def rows(title: str, items: list[dict[str, Any]]) -> list[str]:
        lines = [f"{title}: {len(items)} dispatch(es)"]
        for r in items:
            target = r["targeted_by"] or "-"
            lines.append(f"  {r['name']}\n      ops: {', '.join(r['ops']) or '-'}\n"
                         f"      tdkit family: {target}   pipeline: {r['strategy']}")
        return lines

    lines = rows(f"{record['module']} as written", record["dispatches"])
    for label in record.get("raised", []):
        lines.append(f"recognized and raised: {label}")
    for miss in record.get("not_raised", []):
        lines.append(f"recognized, not raised: {miss['where']}: {miss['reason']}")
    if "raised_dispatches" in record:
        lines += rows("after raising", record["raised_dispatches"])
    elif "raised" in record:
        lines.append("nothing to raise")
    return "\n".join(lines)
