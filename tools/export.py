"""`tdkit export`: the best verified candidate of every problem in a results database, as one
transform library stock `iree-compile` takes with its own flags.

Each problem's tuned entries match only that problem's exact sizes (so two shapes tuned to
different knobs live side by side), named `<entry>_t<N>`. The library is used as
`--iree-codegen-transform-dialect-library=best.mlir@__kernel_config`. The best candidates of
families that only configure IREE's own pipeline (`config`) are also written as an IREE tuning
spec, used as `--iree-codegen-tuning-spec-path=best.tuning-spec.mlir`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iree.compiler import ir

from tdkit.strategies import registry
from tdkit.strategies.library import build_library, renamed
from tdkit.tools import tunedb
from tdkit.tools.errors import BadInputError
from tdkit.tools.tune import problem_from_record


@dataclass
class Exported:
    """What an export wrote."""

    library: Path | None = None
    tuning_spec: Path | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.library is not None, "library": str(self.library or ""),
                "tuning_spec": str(self.tuning_spec or ""), "problems": self.problems}


def _knobs(family: registry.Family, row: tunedb.Candidate) -> Any:
    values = row.knob_values
    names = {f.name for f in dataclasses.fields(family.knobs)}
    return family.knobs(**{k: v for k, v in values.items() if k in names})


def _entries(row: tunedb.Candidate, index: int) -> tuple[list[Any], registry.Family]:
    family = registry.get(row.strategy)
    if family.exact_entries is None:
        raise BadInputError(f"strategy {row.strategy} cannot export shape-exact entries")
    record = json.loads(row.problem_json)
    knobs = _knobs(family, row)
    if record["kind"] == "file":
        # a module's sweep tuned one setting for all of its dispatches of this family: the
        # family's general entries (any shape), after the shape-exact ones of other problems
        family.check(None, knobs)
        return [renamed(e, f"_t{index}") for e in family.entries(None, knobs)], family
    problem, _ = problem_from_record(record)
    family.check(problem, knobs)
    return [renamed(e, f"_t{index}") for e in family.exact_entries(problem, knobs)], family


def _text(entries: list[Any], tuning_spec: bool) -> str:
    with ir.Context(), ir.Location.unknown():
        module = build_library(entries, tuning_spec=tuning_spec)
        module.operation.verify()
        return str(module)


def export(db_path: Path, output: Path, *, tuning_spec: Path | None = None,
           tool_versions: str | None = None) -> Exported:
    """Write the best verified candidate of every problem in `db_path` to `output` (and the
    best configuring candidates to `tuning_spec`, default `<output stem>.tuning-spec.mlir`)."""
    if not Path(db_path).exists():
        raise BadInputError(f"no such results database: {db_path}")
    done = Exported()
    library: list[Any] = []
    spec: list[Any] = []
    with tunedb.TuneDB(db_path) as db:
        # shape-exact problems first, files (general entries) last: first match wins
        keys = sorted({row.problem for row in db.candidates()},
                      key=lambda k: (k.startswith("file "), k))
        for index, key in enumerate(keys):
            best = db.best(key, tool_versions=tool_versions)
            if best is None:
                done.problems.append({"problem": key, "exported": False,
                                      "reason": "no verified candidate"})
                continue
            if json.loads(best.problem_json).get("raised"):
                # its candidates ran on the raised module: without tdkit's raising spec
                # (generated per module) stock iree-compile would not form that dispatch
                done.problems.append({"problem": key, "exported": False,
                                      "reason": "tuned after raising attention; compile it "
                                                "with 'tdkit run' (raising spec per module)"})
                continue
            entries, family = _entries(best, index)
            library += entries
            item = {"problem": key, "exported": True, "strategy": best.strategy,
                    "candidate": best.id, "time_ms": best.time_ms, "speedup": best.speedup,
                    "knobs": best.knob_values, "entries": [e.spec_name for e in entries]}
            configs = [r for r in db.candidates(key, tool_versions=tool_versions)
                       if r.verified and registry.get(r.strategy).configures]
            if configs:
                fastest = min(configs, key=lambda r: (r.time_ms, r.id))
                spec += _entries(fastest, index)[0] if fastest.id != best.id else entries
                item["tuning_spec_candidate"] = fastest.id
            done.problems.append(item)
    if not library:
        raise BadInputError(f"{db_path} holds no verified candidate to export")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(_text(library, tuning_spec=False))
    done.library = output
    if spec:
        target = tuning_spec or output.with_name(output.stem + ".tuning-spec.mlir")
        target.write_text(_text(spec, tuning_spec=True))
        done.tuning_spec = target
    return done


def export_table(done: Exported) -> str:
    lines = []
    for p in done.problems:
        if not p["exported"]:
            lines.append(f"{p['problem']}: not exported ({p['reason']})")
            continue
        speed = f", {p['speedup']:.2f}x IREE default" if p.get("speedup") else ""
        lines.append(f"{p['problem']}: {p['strategy']} candidate {p['candidate']} "
                     f"({p['time_ms']:.4f} ms{speed}) -> {', '.join(p['entries'])}")
    lines.append(f"library: {done.library}  (iree-compile "
                 f"--iree-codegen-transform-dialect-library={done.library}@__kernel_config)")
    if done.tuning_spec:
        lines.append(f"tuning spec: {done.tuning_spec}  (iree-compile "
                     f"--iree-codegen-tuning-spec-path={done.tuning_spec})")
    return "\n".join(lines)
