"""`tdkit inspect FILE`: the dispatches IREE forms from a payload module or ONNX model and the
strategy each will get (a tdkit spec, or IREE's default pipeline), without compiling code."""

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


def inspect_file(path: Path, *, strategies: list[str] | None, cfg: HarnessConfig) -> dict[str, Any]:
    """Configure `path` with every family's library (or the named ones) and describe each
    dispatch: its name, the ops it holds, the family that targets it, the pipeline it gets."""
    if not path.exists():
        raise BadInputError(f"no such file: {path}")
    root = cfg.root() / path.stem / "inspect"
    from tdkit.tools.modules import import_model, read_signature

    if path.suffix == ".onnx":
        path = import_model(path, root, cfg)

    text = path.read_text()
    read_signature(text, None)  # one clear error for malformed modules
    fams = ([registry.get(s) for s in strategies] if strategies
            else list(registry.families().values()))
    entries = [e for f in fams for e in f.entries(None, f.parse_knobs())]
    opts = replace(cfg.compile, compile_to="executable-configurations")
    art = compile_module(text, root, opts, strategy=registry.library_text(entries),
                         compiler=cfg.compiler)
    rows = []
    for d in dispatches(art):
        ops = sorted(set(_ROOT_OPS.findall(d.source)))
        family = next((f.name for f in fams if f.targets(d)), None)
        rows.append({"name": d.name, "ops": ops, "targeted_by": family,
                     "strategy": d.strategy, "by_tdkit": d.by_tdkit})
    return {"ok": all(r["by_tdkit"] for r in rows if r["targeted_by"]), "module": str(path),
            "dispatches": rows, "artifacts": str(art.dir)}


def inspect_table(record: dict[str, Any]) -> str:
    lines = [f"{record['module']}: {len(record['dispatches'])} dispatch(es)"]
    for r in record["dispatches"]:
        target = r["targeted_by"] or "-"
        lines.append(f"  {r['name']}\n      ops: {', '.join(r['ops']) or '-'}\n"
                     f"      tdkit family: {target}   pipeline: {r['strategy']}")
    return "\n".join(lines)
