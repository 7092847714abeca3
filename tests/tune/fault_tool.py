"""A stand-in for iree-compile / iree-run-module that misbehaves on chosen candidates.

Usage (through a shim): fault_tool.py compile|run REAL_TOOL ARGS...
$TDKIT_FAULTS is JSON {fault: {knob: value, ...}}; a candidate whose knobs.json (beside its
output or module) holds all those pairs gets the fault: compile_crash (SIGSEGV), compile_hang,
run_crash (SIGABRT), run_hang, miscompile (outputs shifted by 0.5 after a real run).
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

ROLE_FAULTS = {"compile": ("compile_crash", "compile_hang"),
               "run": ("run_crash", "run_hang", "miscompile")}


def candidate_dir(role: str, args: list[str]) -> Path | None:
    if role == "compile":
        if "-o" in args:
            return Path(args[args.index("-o") + 1]).parent
        return None
    for arg in args:
        if arg.startswith("--module="):
            return Path(arg.split("=", 1)[1]).parent
    return None


def fault_for(role: str, args: list[str]) -> str | None:
    where = candidate_dir(role, args)
    if where is None or not (where / "knobs.json").exists():
        return None
    knobs = json.loads((where / "knobs.json").read_text())
    mine = ROLE_FAULTS[role]
    for fault, wanted in json.loads(os.environ.get("TDKIT_FAULTS", "{}")).items():
        if fault in mine and all(knobs.get(k) == v for k, v in wanted.items()):
            return fault
    return None


def main() -> int:
    role, real, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    fault = fault_for(role, args)
    if fault in ("compile_crash", "run_crash"):
        os.kill(os.getpid(), signal.SIGSEGV if role == "compile" else signal.SIGABRT)
    if fault in ("compile_hang", "run_hang"):
        time.sleep(3600)
    if fault != "miscompile":
        os.execv(real, [real, *args])
    import subprocess

    rc = subprocess.call([real, *args])
    for arg in args:
        if arg.startswith("--output=@"):
            path = Path(arg.split("@", 1)[1])
            data = np.fromfile(path, dtype=np.float32) + np.float32(0.5)
            data.tofile(path)
    return rc


if __name__ == "__main__":
    sys.exit(main())
