"""The runtime timer: IREE's Python runtime in a child, calls from an idle-priority thread."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tdkit.tools import rtimer
from tdkit.tools.toolchain import RunOptions, benchmark_module, compile_module

PAYLOAD = """
func.func @main(%a: tensor<64x64xbf16>, %m: tensor<64x64xi1>, %b: tensor<64x64xf32>)
    -> tensor<64x64xf32> {
  %e = arith.extf %a : tensor<64x64xbf16> to tensor<64x64xf32>
  %s = arith.select %m, %e, %b : tensor<64x64xi1>, tensor<64x64xf32>
  return %s : tensor<64x64xf32>
}"""


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_module(PAYLOAD, tmp_path_factory.mktemp("rtimer") / "c").vmfb


def inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((64, 64)).astype(ml_dtypes.bfloat16),
            rng.random((64, 64)) < 0.5, rng.standard_normal((64, 64)).astype(np.float32)]


@pytest.mark.parametrize("timer", ["runtime", "benchmark-module"])
def test_both_timers_time_bf16_and_bool_inputs(module: Path, tmp_path: Path, timer: str) -> None:
    t = benchmark_module(module, inputs(), tmp_path, repetitions=2, min_time_s=0.01,
                         warmup_s=0.0, opts=RunOptions(threads=1, timer=timer))
    assert len(t.samples_ms) == 2
    assert all(0 < s < 1000 for s in t.samples_ms)


def test_unknown_timer_is_rejected(module: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown timer"):
        benchmark_module(module, inputs(), tmp_path, opts=RunOptions(timer="stopwatch"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_calls_run_in_an_idle_thread_and_the_caller_keeps_its_policy() -> None:
    seen: list[tuple[int, int]] = []

    def call() -> None:
        seen.append((os.sched_getscheduler(0), os.getpid()))

    samples, idle = rtimer.time_calls(call, repetitions=3, min_time_s=0.0, warmup_s=0.0,
                                      idle=True)
    assert idle and len(samples) == 3
    assert {policy for policy, _ in seen} == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE


def test_a_failing_call_is_raised_in_the_caller() -> None:
    def call() -> None:
        raise RuntimeError("kernel said no")

    with pytest.raises(RuntimeError, match="kernel said no"):
        rtimer.time_calls(call, repetitions=1, min_time_s=0.0, warmup_s=0.0, idle=False)
