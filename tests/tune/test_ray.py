"""A sweep through a real Ray cluster on loopback matches the same sweep run locally."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tdkit.tools import tunedb

from .test_sweep import FIXED, rows, tune

# Keeps Ray's node on 127.0.0.1 (otherwise it swaps in the machine's routable address);
# read by `ray start` and by the driver at import time.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """`ray start --head` on 127.0.0.1 as a child process; yields its address."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="tdr", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, **LOOPBACK_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
         "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
         "--object-store-memory=268435456", "--log-style=record"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    started = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ray runtime started" in line:
                started.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert started.wait(120), "ray start did not come up:\n" + "".join(lines[-20:])
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_ray_sweep_matches_local_sweep(tmp_path: Path, ray_cluster: str,
                                       fault_env: dict) -> None:
    faults = {"compile_crash": {"rows_per_workgroup": 1, "reduction_tile": 16},
              "miscompile": {"rows_per_workgroup": 4, "reduction_tile": 16}}
    env = {**fault_env, **LOOPBACK_ENV, "TDKIT_FAULTS": json.dumps(faults)}
    args = ["--search", "grid", "--space", "rows_per_workgroup=1,2,4,8", *FIXED]
    start = time.monotonic()
    rc, local, err = tune(tmp_path / "local", *args, env=env)
    assert rc == 0, err
    rc, remote, err = tune(tmp_path / "ray", *args, "--executor", "ray", "--address",
                           ray_cluster, env=env)
    assert rc == 0, err
    assert time.monotonic() - start < 400
    local_rows = {c.knobs: c.status for c in rows(tmp_path / "local" / "t.db")}
    ray_rows = {c.knobs: c.status for c in rows(tmp_path / "ray" / "t.db")}
    assert len(ray_rows) == len(local_rows) == 5
    assert ray_rows == local_rows
    statuses = sorted(local_rows.values())
    assert statuses == sorted([tunedb.COMPILE_CRASH, tunedb.MISCOMPILE, tunedb.OK, tunedb.OK,
                               tunedb.OK])
    ray_timed = [c for c in rows(tmp_path / "ray" / "t.db") if c.status == tunedb.OK]
    assert all(c.time_ms > 0 and c.binary_hash for c in ray_timed)
    assert remote["sweeps"][0]["best_ms"] > 0
