"""End-to-end sweeps through `tdkit tune`: faults recorded, resume after SIGKILL, widened spaces,
pruning and deduplication, and the best candidate always a verified one."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tdkit.tools import tunedb

TDKIT = [sys.executable, "-m", "tdkit.tools.cli"]
# 64 rows of 256: compiles in about a second; rows_per_workgroup picks the candidate.
PROBLEM = ["softmax", "--shape", "64x256", "--strategy", "softmax_cpu"]
# whole_row_limit=0 keeps these rows tiled, so reduction_tile and vector_width shape the binary.
FIXED = ["--space", "reduction_tile=16", "--space", "vector_width=16",
         "--space", "whole_row_limit=0"]


def tune(tmp: Path, *extra: str, env: dict[str, str] | None = None,
         timeout: float = 600) -> tuple[int, dict, str]:
    env = env or {**os.environ, "TDKIT_NO_PROGRESS": "1"}
    proc = subprocess.run([*TDKIT, "tune", *PROBLEM, "--db", str(tmp / "t.db"), "--artifacts",
                           str(tmp / "art"), "--json", "--confirm-rounds", "0", *extra],
                          capture_output=True, text=True, env=env, timeout=timeout)
    out = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return proc.returncode, out, proc.stderr


def rows(db: Path) -> list[tunedb.Candidate]:
    with tunedb.TuneDB(db) as d:
        return d.candidates()


def by_rows(cands: list[tunedb.Candidate]) -> dict[tuple[int, int], tunedb.Candidate]:
    return {(c.knob_values["rows_per_workgroup"], c.knob_values["reduction_tile"]): c
            for c in cands}


def test_faults_are_recorded_and_the_sweep_completes(tmp_path: Path, fault_env: dict) -> None:
    faults = {"compile_crash": {"rows_per_workgroup": 1, "reduction_tile": 16},
              "compile_hang": {"rows_per_workgroup": 2, "reduction_tile": 16},
              "run_crash": {"rows_per_workgroup": 4, "reduction_tile": 16},
              "run_hang": {"rows_per_workgroup": 8, "reduction_tile": 16},
              "miscompile": {"rows_per_workgroup": 16, "reduction_tile": 16}}
    env = {**fault_env, "TDKIT_FAULTS": json.dumps(faults)}
    start = time.monotonic()
    rc, out, err = tune(tmp_path, "--search", "grid", "--space",
                        "rows_per_workgroup=1,2,4,8,16,32", *FIXED, "--timeout-factor", "3",
                        "--min-timeout", "4", env=env)
    assert rc == 0, err
    assert time.monotonic() - start < 300
    got = by_rows(rows(tmp_path / "t.db"))
    status = {k[0]: c.status for k, c in got.items() if k[1] == 16}
    assert status == {1: tunedb.COMPILE_CRASH, 2: tunedb.COMPILE_TIMEOUT, 4: tunedb.RUN_CRASH,
                      8: tunedb.RUN_TIMEOUT, 16: tunedb.MISCOMPILE, 32: tunedb.OK}
    assert "SIGSEGV" in got[(1, 16)].reason
    assert "timed out" in got[(2, 16)].reason and "timed out" in got[(8, 16)].reason
    assert "SIGABRT" in got[(4, 16)].reason
    assert got[(16, 16)].max_abs_err > got[(16, 16)].tolerance
    assert got[(16, 16)].time_ms is None  # a miscompile is never timed
    # the untuned defaults (rows 8, reduction tile 64) ran too, unharmed by the rows=8 fault
    defaults = got[(8, 64)]
    assert defaults.status == tunedb.OK and defaults.time_ms > 0
    sweep = out["sweeps"][0]
    assert sweep["failed"] == 5 and sweep["evaluated"] == 7
    best = sweep["best_knobs"]
    assert (best["rows_per_workgroup"], best["reduction_tile"]) in ((32, 16), (8, 64))
    with sqlite3.connect(tmp_path / "t.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM baselines").fetchone()[0] >= 1
    # the report shows the failures by reason, and its plots are real PNGs
    report = subprocess.run([*TDKIT, "report", "--db", str(tmp_path / "t.db"), "-o",
                             str(tmp_path / "rep"), "--json"], capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr
    written = json.loads(report.stdout)
    summary = Path(written["summary"]).read_text()
    for status in (tunedb.COMPILE_CRASH, tunedb.COMPILE_TIMEOUT, tunedb.RUN_CRASH,
                   tunedb.RUN_TIMEOUT, tunedb.MISCOMPILE):
        assert f"| {status} | 1 |" in summary
    assert "IREE default" in summary and "Best: candidate" in summary
    assert len(written["plots"]) == 3
    for plot in written["plots"]:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigkill_then_rerun_resumes_without_redoing(tmp_path: Path) -> None:
    cmd = [*TDKIT, "tune", *PROBLEM, "--db", str(tmp_path / "t.db"), "--artifacts",
           str(tmp_path / "art"), "--search", "grid", "--space",
           "rows_per_workgroup=1,2,4,8,16,32", "--space", "reduction_tile=16,32",
           "--space", "vector_width=16", "--space", "whole_row_limit=0", "--confirm-rounds",
           "0", "--jobs", "1", "--json"]
    env = {**os.environ, "TDKIT_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    done: list[tunedb.Candidate] = []
    while time.monotonic() < deadline:
        if (tmp_path / "t.db").exists():
            done = rows(tmp_path / "t.db")
            if len(done) >= 4:
                break
        assert proc.poll() is None, "the sweep finished before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {c.id: c for c in rows(tmp_path / "t.db")}
    assert 4 <= len(before) < 13
    assert all(c.status == tunedb.OK for c in before.values())

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    sweep = json.loads(rerun.stdout)["sweeps"][0]
    after = {c.id: c for c in rows(tmp_path / "t.db")}
    # every finished row survives untouched; nothing is measured twice
    for cid, old in before.items():
        assert after[cid].time_ms == old.time_ms and after[cid].knobs == old.knobs
    assert len(after) == 13  # 12 grid points + the untuned defaults
    assert len({c.knobs for c in after.values()}) == 13
    assert sweep["new"] == 13 - len(before)


def test_widened_space_evaluates_only_new_points(tmp_path: Path) -> None:
    base = ["--search", "grid", *FIXED, "--space"]
    rc, first, err = tune(tmp_path, *base, "rows_per_workgroup=2,4")
    assert rc == 0, err
    assert first["sweeps"][0]["new"] == 3  # two points + the untuned defaults
    rc, second, err = tune(tmp_path, *base, "rows_per_workgroup=2,4,16,32")
    assert rc == 0, err
    assert second["sweeps"][0]["new"] == 2
    assert second["sweeps"][0]["evaluated"] == 5
    assert len(rows(tmp_path / "t.db")) == 5


def test_pruned_and_identical_strategies_cost_no_compile(tmp_path: Path) -> None:
    # vector_width 32 does not divide reduction_tile 16: pruned by check(). columns_per_workgroup
    # is not read for a softmax over the innermost dim: the same strategy text, deduplicated.
    rc, out, err = tune(tmp_path, "--search", "grid", "--space", "rows_per_workgroup=4",
                        "--space", "reduction_tile=16", "--space", "vector_width=16,32",
                        "--space", "columns_per_workgroup=32,64,128",
                        "--space", "whole_row_limit=0")
    assert rc == 0, err
    cands = rows(tmp_path / "t.db")
    pruned = [c for c in cands if c.status == tunedb.PRUNED]
    dups = [c for c in cands if c.status == tunedb.DUPLICATE]
    assert len(pruned) == 3 and all("vector_width" in c.reason for c in pruned)
    assert len(dups) == 2
    first = next(c for c in cands if c.status == tunedb.OK and
                 c.knob_values["rows_per_workgroup"] == 4)
    assert all(d.duplicate_of == first.id and d.time_ms == first.time_ms for d in dups)
    assert all(d.compile_s is None for d in dups)
    assert out["sweeps"][0]["pruned"] == 3 and out["sweeps"][0]["duplicates"] == 2


def test_random_and_tpe_sweeps_record_their_budget(tmp_path: Path) -> None:
    for search in ("random", "tpe"):
        rc, out, err = tune(tmp_path / search, "--search", search, "--budget", "4",
                            "--space", "rows_per_workgroup=1,2,4,8", *FIXED[:2])
        assert rc == 0, err
        sweep = out["sweeps"][0]
        assert sweep["evaluated"] == 4 and sweep["best_ms"] > 0
        assert sweep["speedup_vs_default"] > 0


def test_bad_tune_arguments_are_one_line_errors(tmp_path: Path) -> None:
    for extra, needle in ((["--space", "bogus=1,2"], "unknown knob"),
                          (["--space", "rows_per_workgroup=x"], "expected a value"),
                          (["--budget", "0"], "--budget must be positive"),
                          (["--jobs", "0"], "--jobs must be positive"),
                          (["--knob", "rows_per_workgroup=2"], "--space"),
                          (["--executor", "ray", "--address", "127.0.0.1:1"],
                           "no Ray cluster at 127.0.0.1:1")):
        rc, _, err = tune(tmp_path, *extra)
        assert rc == 2, (extra, err)
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_interrupt_kills_running_compiles_and_keeps_rows(tmp_path: Path, fault_env: dict) -> None:
    faults = {"compile_hang": {"rows_per_workgroup": 2, "reduction_tile": 16}}
    env = {**fault_env, "TDKIT_FAULTS": json.dumps(faults)}
    cmd = [*TDKIT, "tune", *PROBLEM, "--db", str(tmp_path / "t.db"), "--artifacts",
           str(tmp_path / "art"), "--search", "grid", "--space", "rows_per_workgroup=2",
           *FIXED, "--min-timeout", "600", "--confirm-rounds", "0"]
    # As a foreground command gets Ctrl-C: a shell's background job (e.g. a CI runner started
    # with `&`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=_default_sigint)
    hung = None
    deadline = time.monotonic() + 300
    while hung is None and time.monotonic() < deadline:
        for knobs in (tmp_path / "art").rglob("knobs.json"):
            if json.loads(knobs.read_text()).get("rows_per_workgroup") == 2:
                hung = knobs.parent
        time.sleep(0.2)
    assert hung is not None, "the hanging candidate never started"
    time.sleep(1.0)
    assert _processes_in(hung), "the hanging compile should be running in its directory"
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - start < 30
    assert "interrupted" in err and "Traceback" not in err
    assert _processes_in(hung) == [], "a compile of the interrupted sweep is still running"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _processes_in(directory: Path) -> list[int]:
    """Pids of processes whose working directory is `directory` (compiles run there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == directory.resolve():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_finalists_are_retimed_side_by_side_and_the_best_comes_from_them(tmp_path: Path) -> None:
    rc, out, err = tune(tmp_path, "--search", "grid", "--space", "rows_per_workgroup=1,2,4,8",
                        *FIXED, "--confirm-rounds", "2", "--confirm-top", "2")
    assert rc == 0, err
    sweep = out["sweeps"][0]
    cands = rows(tmp_path / "t.db")
    confirmed = [c for c in cands if c.confirmed_ms is not None]
    # the two fastest by the sweep's own times, plus the untuned defaults if not among them
    fastest = sorted((c for c in cands if c.status == tunedb.OK), key=lambda c: c.time_ms)[:2]
    assert {c.id for c in fastest} <= {c.id for c in confirmed}
    assert 2 <= len(confirmed) <= 3
    winner = min(confirmed, key=lambda c: c.confirmed_ms)
    assert sweep["best_id"] == winner.id
    assert sweep["confirmed_ms"]["best"] == winner.confirmed_ms
    assert sweep["confirmed_ms"]["default"] > 0


def test_time_limit_stops_the_sweep(tmp_path: Path) -> None:
    start = time.monotonic()
    rc, out, err = tune(tmp_path, "--search", "random", "--budget", "100", "--time-limit", "10",
                        *FIXED[:2], "--jobs", "1")
    assert rc == 0, err
    sweep = out["sweeps"][0]
    assert sweep["stopped"] == "time limit" and 1 <= sweep["evaluated"] < 100
    assert time.monotonic() - start < 120


def test_progress_bar_shows_done_failures_and_best(tmp_path: Path, capsys) -> None:
    from tdkit.matchers.problems import Softmax
    from tdkit.tools.harness import HarnessConfig
    from tdkit.tools.tune import TuneConfig
    from tdkit.tools.tune import tune as run_tune

    (summary,) = run_tune(Softmax((64, 256)), ["softmax_cpu"],
                          cfg=HarnessConfig(artifacts=tmp_path / "art"),
                          tcfg=TuneConfig(db=tmp_path / "t.db", budget=3, search="random",
                                          confirm_rounds=0, progress=True))
    assert summary.evaluated == 3
    err = capsys.readouterr().err
    assert "softmax_cpu" in err and "3/3" in err
    assert "fail=0" in err and "best=" in err and "x" in err.split("best=")[-1]
