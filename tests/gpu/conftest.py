"""GPU test helpers: which targets have a device on this machine, and the skip that says so."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tdkit.tools.toolchain import available_devices, target_options

GPU_TARGETS = ("cuda:sm_80", "cuda:sm_90", "rocm:gfx942")


@functools.cache
def device_of(target: str) -> str | None:
    """The first device `iree-run-module` lists for `target`'s driver, or None."""
    found = available_devices(target_options(target).driver)
    return found[0] if found else None


def require_device(target: str) -> str:
    """Skip the calling test, with the reason, unless `target`'s GPU is on this machine."""
    device = device_of(target)
    if device is None:
        driver = target_options(target).driver
        pytest.skip(f"needs a {target} GPU: iree-run-module --list_devices shows no {driver} "
                    f"device on this machine (compile-only checks of {target} still run)")
    return device


def assert_rejected_before_compiling(argv: list[str], knobs: list[str], needle: str,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tdkit argv --knob k ...` exits 2 with one line containing `needle`, and nothing was
    compiled into `tmp_path` (the argv's --artifacts)."""
    from tdkit.tools.cli import main

    for k in knobs:
        argv = [*argv, "--knob", k]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.rglob("*.vmfb")), "nothing may compile"
