"""Time one compiled module in the IREE Python runtime with the calling thread at idle priority.

Run as a child process by `tdkit.tools.toolchain.benchmark_module` (timer "runtime"), never
imported by tdkit itself: a kernel that crashes or hangs takes only this child down.

Why not `iree-benchmark-module`: in IREE 3.13 the thread that calls a function waits for the
local-task workers in `iree_async_semaphore_multi_wait`, which spins. With one worker per core,
that spinning thread competes with the workers for a core (measured: 1.9 ms of CPU per call of
4x1024x256x128 attention, two workers on two cores; the call took 5.3 ms, and 3.3 ms with the
caller at idle priority). Here the calls are made from a thread that first sets itself to
`SCHED_IDLE` (Linux; only that thread, after the device and its workers exist at normal
priority), so it only runs on a core no worker needs: what is timed is the kernels, the runtime
calls and the hand-offs, not the waiter's competition. Embedders of IREE get the same effect by
waiting at idle priority.

Output (stdout): one JSON object {"samples_ms": [...], "idle_caller": bool}: the mean time per
call of each repetition, as `iree-benchmark-module --benchmark_repetitions` reports them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import numpy as np


def load_inputs(spec_path: str) -> list[np.ndarray]:
    """The inputs listed in a JSON file: [{"path", "shape", "dtype"}], raw little-endian."""
    import ml_dtypes

    with open(spec_path) as f:
        spec = json.load(f)
    arrays = []
    for item in spec:
        dtype = ml_dtypes.bfloat16 if item["dtype"] == "bfloat16" else np.dtype(item["dtype"])
        arrays.append(np.fromfile(item["path"], dtype=dtype).reshape(item["shape"]))
    return arrays


def to_device(rt: Any, device: Any, arr: np.ndarray) -> Any:
    """A device array for `arr`; bf16 goes over as a buffer view of its 16-bit patterns
    tagged BFLOAT_16 (numpy has no bf16 the runtime knows)."""
    if arr.dtype.name == "bfloat16":
        return device.allocator.allocate_buffer_copy(
            memory_type=rt.MemoryType.DEVICE_LOCAL, allowed_usage=rt.BufferUsage.DEFAULT,
            device=device, buffer=np.ascontiguousarray(arr).view(np.uint16),
            element_type=rt.HalElementType.BFLOAT_16)
    return rt.asdevicearray(device, arr)


def set_idle() -> bool:
    """Put the calling thread (only it) in `SCHED_IDLE`; False where that is not possible."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True


def time_calls(call: Any, *, repetitions: int, min_time_s: float, warmup_s: float,
               idle: bool) -> tuple[list[float], bool]:
    """Warm up for `warmup_s`, then time `repetitions` repetitions of at least `min_time_s`
    each from a fresh thread (at idle priority if `idle`); mean ms per call of each."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["idle"] = set_idle() if idle else False
            start = time.perf_counter()
            call()
            while time.perf_counter() - start < warmup_s:
                call()
            samples = []
            for _ in range(repetitions):
                n, start = 0, time.perf_counter()
                while n == 0 or time.perf_counter() - start < min_time_s:
                    call()
                    n += 1
                samples.append((time.perf_counter() - start) / n * 1e3)
            result["samples"] = samples
        except BaseException as err:  # noqa: BLE001  (reported by the main thread)
            result["error"] = err

    worker = threading.Thread(target=run, name="tdkit-timer")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["samples"], result["idle"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tdkit.tools.rtimer")
    p.add_argument("--module", required=True)
    p.add_argument("--function", default="main")
    p.add_argument("--device", default="local-task")
    p.add_argument("--inputs", required=True, help="JSON file listing the raw inputs")
    p.add_argument("--flag", action="append", default=[], help="IREE runtime flag")
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--no-idle", action="store_true", help="call at normal priority")
    args = p.parse_args(argv)

    import iree.runtime as rt

    if args.flag:
        rt.flags.parse_flags(*args.flag)
    config = rt.Config(args.device)
    module = rt.VmModule.mmap(config.vm_instance, args.module)
    ctx = rt.SystemContext(vm_modules=[module], config=config)
    fn = ctx.modules.module[args.function]
    device = ctx.config.device
    inputs = [to_device(rt, device, a) for a in load_inputs(args.inputs)]

    def call() -> None:
        out = fn(*inputs)
        del out

    samples, idle = time_calls(call, repetitions=args.repetitions, min_time_s=args.min_time,
                               warmup_s=args.warmup, idle=not args.no_idle)
    json.dump({"samples_ms": samples, "idle_caller": idle}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
