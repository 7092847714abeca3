"""Shared test helpers: FileCheck on printed IR, the tdkit CLI in-process, skip-free markers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FILECHECK = shutil.which("filecheck", path=str(Path(sys.executable).parent)) or "filecheck"


def run_filecheck(text: str, checks: str, tmp_path: Path) -> None:
    """Assert that `text` satisfies the FileCheck directives in `checks`."""
    check_file = tmp_path / "checks.txt"
    check_file.write_text(checks)
    proc = subprocess.run([FILECHECK, str(check_file)], input=text, text=True,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, f"FileCheck failed:\n{proc.stderr}\n--- input ---\n{text[:4000]}"


@pytest.fixture
def filecheck(tmp_path: Path):
    def check(text: str, checks: str) -> None:
        run_filecheck(text, checks, tmp_path)

    return check
