"""Fixtures for sweep tests: fault-injecting tool shims and a small tune command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


def _shim(path: Path, role: str, real: str) -> Path:
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fault_tool.py"}" {role} '
                    f'"{real}" "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def fault_env(tmp_path: Path) -> dict[str, str]:
    """Environment with iree-compile and iree-run-module replaced by fault-injecting shims."""
    env = dict(os.environ)
    env["TDKIT_IREE_COMPILE"] = str(_shim(tmp_path / "iree-compile", "compile",
                                          str(BIN / "iree-compile")))
    env["TDKIT_IREE_RUN_MODULE"] = str(_shim(tmp_path / "iree-run-module", "run",
                                             str(BIN / "iree-run-module")))
    env["TDKIT_NO_PROGRESS"] = "1"
    return env
