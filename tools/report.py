"""`tdkit report`: a markdown summary and PNG plots of a results database.

Per sweep (problem x strategy x tool versions): counts by status, the best verified candidate
against IREE's default and the untuned defaults, the ten fastest, failures with an example
reason; plots of best-so-far time over trials, time per knob value, failures by reason.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdkit.tools import tunedb
from tdkit.tools.errors import BadInputError


@dataclass
class SweepReport:
    problem: str
    strategy: str
    tool_versions: str
    rows: list[tunedb.Candidate]
    baselines: list[dict[str, Any]]
    plots: list[Path] = field(default_factory=list)

    @property
    def verified(self) -> list[tunedb.Candidate]:
        return [r for r in self.rows if r.verified]

    @property
    def best(self) -> tunedb.Candidate | None:
        """As `TuneDB.best`: the confirmed finalists first, then the sweep's own times."""
        return min(self.verified, default=None,
                   key=lambda r: (r.confirmed_ms is None, r.confirmed_ms or 0, r.time_ms, r.id))

    @property
    def default_ms(self) -> float | None:
        times = [b["time_ms"] for b in self.baselines]
        return statistics.median(times) if times else None

    @property
    def slug(self) -> str:
        text = f"{self.problem}_{self.strategy}"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")[:80]


def load(db_path: Path) -> list[SweepReport]:
    if not Path(db_path).exists():
        raise BadInputError(f"no such results database: {db_path}")
    with tunedb.TuneDB(db_path) as db:
        rows = db.candidates()
        sweeps: dict[tuple[str, str, str], list[tunedb.Candidate]] = {}
        for r in rows:
            sweeps.setdefault((r.problem, r.strategy, r.tool_versions), []).append(r)
        return [SweepReport(p, s, t, rs, db.baselines(p, t))
                for (p, s, t), rs in sweeps.items()]


def _plots(rep: SweepReport, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    evaluated = [r for r in rep.rows if r.status != tunedb.PRUNED]
    # best-so-far over trials
    fig, ax = plt.subplots(figsize=(6, 3.5))
    best, xs, ys, pts = None, [], [], []
    for i, r in enumerate(evaluated, 1):
        if r.verified:
            pts.append((i, r.time_ms))
            best = r.time_ms if best is None else min(best, r.time_ms)
        if best is not None:
            xs.append(i)
            ys.append(best)
    if pts:
        ax.scatter(*zip(*pts, strict=True), s=10, alpha=0.4, label="verified candidate")
    if xs:
        ax.step(xs, ys, where="post", label="best so far")
    if rep.default_ms:
        ax.axhline(rep.default_ms, color="gray", linestyle="--", label="IREE default")
        ax.set_yscale("log")
    ax.set_xlabel("candidate")
    ax.set_ylabel("ms (median)")
    ax.set_title(f"{rep.strategy}: {rep.problem.split(' form=')[0]}", fontsize=9)
    if pts or rep.default_ms:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / f"{rep.slug}_best.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    # time per knob value (knobs that vary among verified candidates)
    verified = rep.verified
    knobs = _varying(verified)
    if knobs:
        fig, axes = plt.subplots(1, len(knobs), figsize=(2.6 * len(knobs), 3), squeeze=False)
        for ax, knob in zip(axes[0], knobs, strict=True):
            values = sorted({r.knob_values[knob] for r in verified},
                            key=lambda v: (type(v).__name__, v))
            pos = {repr(v): i for i, v in enumerate(values)}
            ax.scatter([pos[repr(r.knob_values[knob])] for r in verified],
                       [r.time_ms for r in verified], s=10, alpha=0.6)
            ax.set_xticks(range(len(values)), [str(v) for v in values], fontsize=7,
                          rotation=45)
            ax.set_title(knob, fontsize=8)
        axes[0][0].set_ylabel("ms (median)")
        fig.tight_layout()
        paths.append(out / f"{rep.slug}_knobs.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    # failures by reason
    counts = _counts(rep.rows)
    fails = {s: counts[s] for s in tunedb.FAILURES + (tunedb.PRUNED,) if counts.get(s)}
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(fails) or ["none"], list(fails.values()) or [0])
    ax.set_ylabel("candidates")
    ax.set_title("failures and pruned candidates by reason", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    paths.append(out / f"{rep.slug}_failures.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _varying(rows: list[tunedb.Candidate]) -> list[str]:
    """Knobs whose value differs between candidates (the searched ones)."""
    if not rows:
        return []
    return [k for k in rows[0].knob_values
            if len({repr(r.knob_values.get(k)) for r in rows}) > 1]


def _counts(rows: list[tunedb.Candidate]) -> dict[str, int]:
    return dict(Counter(r.status for r in rows))


def _markdown(reports: list[SweepReport], db_path: Path, out: Path) -> str:
    lines = [f"# tdkit tuning report: `{db_path}`", ""]
    for rep in reports:
        counts = _counts(rep.rows)
        best = rep.best
        lines += [f"## {rep.problem} — `{rep.strategy}`", "", f"Tools: {rep.tool_versions}", ""]
        lines += ["| status | candidates |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(counts.items())]
        lines.append("")
        untuned = next((r for r in rep.rows if r.untuned and r.verified), None)
        if rep.default_ms:
            lines.append(f"IREE default: {rep.default_ms:.4f} ms (median of "
                         f"{len(rep.baselines)} measurements during the sweep)  ")
        if best:
            if best.confirmed_ms:
                finalists = ", ".join(f"{r.id}: {r.confirmed_ms:.4f} ms"
                                      for r in rep.verified if r.confirmed_ms)
                lines.append(f"Finalists re-timed side by side at the end: {finalists}  ")
            lines.append(f"Best: candidate {best.id}, {best.time_ms:.4f} ms"
                         + (f", {rep.default_ms / best.time_ms:.2f}x IREE default"
                            if rep.default_ms else "")
                         + (f", {untuned.time_ms / best.time_ms:.2f}x the untuned defaults "
                            f"(candidate {untuned.id})" if untuned else "") + "  ")
            lines.append(f"Knobs: `{best.knobs}`")
        elif any(r.status == tunedb.COMPILED for r in rep.rows):
            compiled = sum(r.status == tunedb.COMPILED for r in rep.rows)
            lines.append(f"No timed candidate: {compiled} compiled and applied, but this "
                         "target's device was not on the machine that ran the sweep; timing needs "
                         "a sweep run where it is.")
        else:
            lines.append("No verified candidate.")
        lines += ["", "### Fastest verified candidates", "",
                  "| id | ms | min ms | speedup | max err | knobs |", "|---|---|---|---|---|---|"]
        varying = _varying(rep.rows)
        for r in sorted(rep.verified, key=lambda r: (r.time_ms, r.id))[:10]:
            speed = f"{r.speedup:.2f}x" if r.speedup else ""
            shown = ", ".join(f"{k}={r.knob_values.get(k)}" for k in varying)
            lines.append(f"| {r.id} | {r.time_ms:.4f} | {r.min_ms or 0:.4f} | {speed} | "
                         f"{r.max_abs_err or 0:.2g} | {shown} |")
        failures = [r for r in rep.rows if r.status in tunedb.FAILURES]
        if failures:
            lines += ["", "### Failures", "", "| status | count | example |", "|---|---|---|"]
            for status in tunedb.FAILURES:
                group = [r for r in failures if r.status == status]
                if group:
                    reason = group[0].reason.replace("|", "/").replace("\n", " ")[:160]
                    lines.append(f"| {status} | {len(group)} | candidate {group[0].id}: "
                                 f"{reason} |")
        lines.append("")
        for p in rep.plots:
            lines.append(f"![{p.stem}]({p.relative_to(out)})")
        lines.append("")
    return "\n".join(lines)


def write_report(db_path: Path, out: Path) -> dict[str, Any]:
    """Write `summary.md` and the plots to `out`; return what was written."""
    reports = load(db_path)
    if not reports:
        raise BadInputError(f"{db_path} holds no candidates")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInputError("tdkit report needs matplotlib: pip install 'tdkit[report]'") \
            from None
    out.mkdir(parents=True, exist_ok=True)
    for rep in reports:
        rep.plots = _plots(rep, out)
    summary = out / "summary.md"
    summary.write_text(_markdown(reports, db_path, out))
    return {"ok": True, "summary": str(summary),
            "plots": [str(p) for rep in reports for p in rep.plots],
            "sweeps": [{"problem": r.problem, "strategy": r.strategy,
                        "candidates": len(r.rows), "best_ms": r.best.time_ms if r.best else None}
                       for r in reports]}
