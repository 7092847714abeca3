"""The tuning results database: one SQLite file, one row per candidate, written as it finishes.

Every candidate a sweep looks at is a row of `candidates` (problem, strategy, knobs, strategy
hash, status, compile time, timings, error, binary hash, tool versions), committed the moment
its outcome is known, so a sweep killed at any point loses nothing it finished and a rerun of
the same command skips it. IREE's default pipeline, measured at the start of a sweep and again
periodically, goes to `baselines`. Rows are keyed by (problem, strategy, knobs, tool versions):
results from another compiler are kept but never reused.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tdkit.tools.errors import BadInputError

SCHEMA_VERSION = 1

# Candidate statuses. OK and DUPLICATE rows carry verified timings; the others say why not.
OK = "ok"
DUPLICATE = "duplicate"  # same strategy text or same binary as an earlier row: not re-measured
PRUNED = "pruned"  # rejected by the knobs' check() before compiling
MISCOMPILE = "miscompile"  # ran, but the output differs from the float64 reference
NOT_APPLIED = "not_applied"
COMPILE_FAILED = "compile_failed"
COMPILE_CRASH = "compile_crash"
COMPILE_TIMEOUT = "compile_timeout"
RUN_FAILED = "run_failed"
RUN_CRASH = "run_crash"
RUN_TIMEOUT = "run_timeout"
# Compiled and applied, not run: the target's device is not on this machine (GPU targets).
COMPILED = "compiled"
FAILURES = (MISCOMPILE, NOT_APPLIED, COMPILE_FAILED, COMPILE_CRASH, COMPILE_TIMEOUT,
            RUN_FAILED, RUN_CRASH, RUN_TIMEOUT)
VERIFIED = (OK, DUPLICATE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    problem TEXT NOT NULL,          -- problem key: label, form, target cpu
    problem_json TEXT NOT NULL,     -- enough to rebuild the problem (kind, fields, form)
    strategy TEXT NOT NULL,         -- family name
    knobs TEXT NOT NULL,            -- canonical JSON of every knob
    strategy_hash TEXT,             -- sha256 of the transform library text
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    compile_s REAL,
    time_ms REAL,                   -- median of the timing samples
    min_ms REAL,
    samples TEXT,                   -- JSON list of ms
    baseline_ms REAL,               -- IREE default, latest measurement before this one
    speedup REAL,                   -- baseline_ms / time_ms
    confirmed_ms REAL,              -- re-timed side by side with the sweep's other finalists
    max_abs_err REAL,
    tolerance REAL,
    binary_hash TEXT,               -- sha256 of the .vmfb
    duplicate_of INTEGER,
    tool_versions TEXT NOT NULL,
    trial INTEGER,                  -- order within its problem/strategy
    untuned INTEGER NOT NULL DEFAULT 0,  -- 1: the strategy's default knobs (fitted)
    session TEXT,
    artifacts TEXT,
    created REAL NOT NULL,
    UNIQUE (problem, strategy, knobs, tool_versions)
);
CREATE TABLE IF NOT EXISTS baselines (
    id INTEGER PRIMARY KEY,
    problem TEXT NOT NULL,
    tool_versions TEXT NOT NULL,
    time_ms REAL NOT NULL,
    min_ms REAL,
    samples TEXT,
    compile_s REAL,
    ok INTEGER,
    session TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS candidates_problem ON candidates (problem, strategy, tool_versions);
"""


@dataclass
class Candidate:
    """One row of `candidates`."""

    problem: str
    problem_json: str
    strategy: str
    knobs: str
    status: str
    tool_versions: str
    reason: str = ""
    strategy_hash: str | None = None
    compile_s: float | None = None
    time_ms: float | None = None
    min_ms: float | None = None
    samples: str | None = None
    baseline_ms: float | None = None
    speedup: float | None = None
    confirmed_ms: float | None = None
    max_abs_err: float | None = None
    tolerance: float | None = None
    binary_hash: str | None = None
    duplicate_of: int | None = None
    trial: int | None = None
    untuned: int = 0
    session: str | None = None
    artifacts: str | None = None
    created: float = field(default_factory=time.time)
    id: int | None = None

    @property
    def knob_values(self) -> dict[str, Any]:
        return json.loads(self.knobs)

    @property
    def verified(self) -> bool:
        return self.status in VERIFIED and self.time_ms is not None


_COLUMNS = [f.name for f in fields(Candidate) if f.name != "id"]


def canonical_knobs(values: dict[str, Any]) -> str:
    """The JSON text that identifies a knob setting (sorted keys, no spaces)."""
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


class TuneDB:
    """A sweep's results file. Every write commits at once (WAL journal: readers such as
    `tdkit report` can open it while a sweep is running)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(_SCHEMA)
            version = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if version is None:
                self.conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(version[0]) != SCHEMA_VERSION:
                raise BadInputError(f"{self.path}: results database schema {version[0]}, this "
                                    f"tdkit reads schema {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as err:
            raise BadInputError(f"{self.path}: not a tdkit results database ({err})") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> TuneDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ candidates

    def add(self, cand: Candidate) -> tuple[Candidate, bool]:
        """Insert one finished candidate (committed immediately); return it with its id and
        True, or the row already present with the same key and False (a concurrent or earlier
        sweep did it first: that row wins)."""
        values = [getattr(cand, c) for c in _COLUMNS]
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO candidates ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in _COLUMNS)})", values)
        if cur.rowcount == 0:
            existing = self.find(cand.problem, cand.strategy, cand.knobs, cand.tool_versions)
            assert existing is not None
            return existing, False
        cand.id = cur.lastrowid
        return cand, True

    def find(self, problem: str, strategy: str, knobs: str,
             tool_versions: str) -> Candidate | None:
        row = self.conn.execute(
            "SELECT * FROM candidates WHERE problem=? AND strategy=? AND knobs=? AND "
            "tool_versions=?", (problem, strategy, knobs, tool_versions)).fetchone()
        return _candidate(row) if row else None

    def candidates(self, problem: str | None = None, strategy: str | None = None,
                   tool_versions: str | None = None) -> list[Candidate]:
        """Rows in insertion order, optionally filtered."""
        where, args = _where(problem=problem, strategy=strategy, tool_versions=tool_versions)
        rows = self.conn.execute(f"SELECT * FROM candidates {where} ORDER BY id", args)
        return [_candidate(r) for r in rows]

    def problems(self) -> list[tuple[str, str, str]]:
        """(problem, strategy, tool_versions) of every sweep in the file."""
        rows = self.conn.execute("SELECT DISTINCT problem, strategy, tool_versions FROM "
                                 "candidates ORDER BY MIN(id) OVER (PARTITION BY problem)")
        return [(r[0], r[1], r[2]) for r in rows]

    def best(self, problem: str, strategy: str | None = None,
             tool_versions: str | None = None) -> Candidate | None:
        """The fastest verified candidate of a problem (never a failed or miscompiled one):
        by confirmed time among the finalists re-timed side by side, if any, else by the
        sweep's own time."""
        where, args = _where(problem=problem, strategy=strategy, tool_versions=tool_versions)
        status = ", ".join(f"'{s}'" for s in VERIFIED)
        row = self.conn.execute(
            f"SELECT * FROM candidates {where} AND status IN ({status}) AND time_ms IS NOT NULL "
            f"ORDER BY confirmed_ms IS NULL, confirmed_ms, time_ms, id LIMIT 1", args).fetchone()
        return _candidate(row) if row else None

    def set_confirmed(self, problem: str, strategy: str, tool_versions: str,
                      times: dict[int, float]) -> None:
        """Record side-by-side times of a sweep's finalists (clearing its earlier ones)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("UPDATE candidates SET confirmed_ms=NULL WHERE problem=? AND "
                              "strategy=? AND tool_versions=?", (problem, strategy, tool_versions))
            self.conn.executemany("UPDATE candidates SET confirmed_ms=? WHERE id=?",
                                  [(ms, cid) for cid, ms in times.items()])
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ baselines

    def add_baseline(self, problem: str, tool_versions: str, samples: list[float],
                     compile_s: float | None, ok: bool, session: str) -> float:
        median = statistics.median(samples)
        self.conn.execute(
            "INSERT INTO baselines (problem, tool_versions, time_ms, min_ms, samples, compile_s,"
            " ok, session, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (problem, tool_versions, median, min(samples), json.dumps(samples), compile_s,
             int(ok), session, time.time()))
        return median

    def baselines(self, problem: str, tool_versions: str | None = None) -> list[dict[str, Any]]:
        where, args = _where(problem=problem, tool_versions=tool_versions)
        rows = self.conn.execute(f"SELECT * FROM baselines {where} ORDER BY id", args)
        return [dict(r) for r in rows]

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.candidates())


def _where(**filters: Any) -> tuple[str, list[Any]]:
    parts = [f"{k}=?" for k, v in filters.items() if v is not None]
    args = [v for v in filters.values() if v is not None]
    return "WHERE " + (" AND ".join(parts) if parts else "1=1"), args


def _candidate(row: sqlite3.Row) -> Candidate:
    return Candidate(**{k: row[k] for k in row.keys()})  # noqa: SIM118
