"""On a machine with the GPU: run the GPU strategies, verify them against the float64 reference,
and benchmark them against IREE's default GPU pipeline in one run. Elsewhere every test here is
skipped with the reason (no such device)."""

from __future__ import annotations

import json

import pytest

from tdkit.tools.cli import main

from .conftest import GPU_TARGETS, require_device

pytestmark = pytest.mark.gpu

CASES = [
    ("softmax", "softmax_gpu", ["--shape", "333x1000"], "f32"),
    ("softmax", "softmax_gpu", ["--shape", "4x8x128x256"], "f16"),
    ("attention", "flash_gpu", ["--shape", "2x4x256x256x64"], "f16"),
    ("attention", "flash_gpu", ["--shape", "1x4x197x197x64", "--causal"], "bf16"),
]


@pytest.mark.parametrize("target", GPU_TARGETS)
@pytest.mark.parametrize(("kind", "strategy", "shape", "dtype"), CASES)
def test_run_verifies_on_device(target: str, kind: str, strategy: str, shape: list[str],
                                dtype: str, capsys: pytest.CaptureFixture[str]) -> None:
    require_device(target)
    rc = main(["run", kind, *shape, "--dtype", dtype, "--strategy", strategy, "--target",
               target, "--compare-default", "--json", "--rounds", "2"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["verified"] and out["applied"], out
    assert out["max_abs_err"] <= out["tolerance"]
    assert out["speedup"] > 0


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_bench_against_default_on_device(target: str, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    require_device(target)
    rc = main(["bench", "attention", "--shape", "2x8x1024x1024x64", "--dtype", "f16",
               "--strategy", "flash_gpu", "--target", target, "--json", "--rounds", "3"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"], out
    assert set(out["builds"]) == {"flash_gpu", "default"}
    assert out["default_time_ms"] > 0 and out["time_ms"] > 0
