"""The one door to IREE's command-line tools: every `iree-*` process tdkit starts is started here.

- `CompileOptions` (a frozen dataclass) and `compile_argv` (a pure function) describe a compile;
- `compile_module` writes every artifact of one compile to one directory (payload.mlir,
  strategy.mlir, command.txt, stderr.txt, module.vmfb, configurations/);
- `run_module` and `benchmark_module` execute a compiled module in a child process (an iree-*
  tool, or for timing `python -m tdkit.tools.rtimer`), so a kernel that crashes or hangs
  cannot take tdkit down with it;
- every call has a timeout, and failures raise `ToolError` carrying the command, the stderr
  tail and a one-line repro.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import ml_dtypes
import numpy as np

from tdkit.tools.errors import ToolError

COMPILER_ENV = "TDKIT_IREE_COMPILE"  # == tool_env("iree-compile")
STDERR_TAIL_LINES = 30

# The targets users name with `--target`: (CompileOptions.target, gpu_arch).
TARGETS: dict[str, tuple[str, str | None]] = {
    "cpu": ("llvm-cpu", None),
    "cuda:sm_80": ("cuda", "sm_80"),
    "cuda:sm_90": ("cuda", "sm_90"),
    "rocm:gfx942": ("rocm", "gfx942"),
}
# IREE 3.13 knows no sm_90 by name ("missing GPU target in #hal.executable.target"): for
# `cuda:sm_90` the payload module carries its own device target, Ampere's codegen features
# (mma.sync; IREE has no wgmma) with `arch = "sm_90"`, PTX 8.0 and Hopper's 227 KiB of
# shared memory per block. The PTX then targets sm_90.
_SM90_DEVICE_TARGETS = (
    '[#hal.device.target<"cuda", [#hal.executable.target<"cuda", "cuda-nvptx-fb", '
    '{iree_codegen.target_info = #iree_gpu.target<arch = "sm_90", features = "+ptx80", '
    'wgp = <compute = fp64|fp32|fp16|int64|int32|int16|int8, storage = b64|b32|b16|b8, '
    'subgroup = shuffle|arithmetic, dot = dp4xi8toi32, mma = [<NV_MMA_SYNC_F32_16x8x16_F16>, '
    '<NV_MMA_SYNC_F16_16x8x16_F16>, <NV_MMA_SYNC_F32_16x8x16_BF16>, '
    '<NV_WMMA_F32_16x16x16_F16>, <NV_WMMA_F16_16x16x16_F16>], subgroup_size_choices = [32], '
    'max_workgroup_sizes = [1024, 1024, 1024], max_thread_count_per_workgroup = 1024, '
    'max_workgroup_memory_bytes = 232448, '
    'max_workgroup_counts = [2147483647, 65535, 65535]>>}>]>]')
PAYLOAD_DEVICE_TARGETS = {"cuda:sm_90": _SM90_DEVICE_TARGETS}

# The HAL driver that runs each backend's modules.
DRIVERS = {"llvm-cpu": "local-task", "cuda": "cuda", "rocm": "hip"}

# Flags that select a target device, per target name.
TARGET_FLAGS: dict[str, tuple[str, ...]] = {
    "llvm-cpu": ("--iree-hal-target-device=local",
                 "--iree-hal-local-target-device-backends=llvm-cpu"),
    "cuda": ("--iree-hal-target-device=cuda",),
    "rocm": ("--iree-hal-target-device=hip",),
}


@dataclass(frozen=True)
class CompileOptions:
    """How to compile one payload module.

    Attributes:
      target: "llvm-cpu" (runs here), "cuda" or "rocm" (compile only).
      cpu: `--iree-llvmcpu-target-cpu` for llvm-cpu ("host" = this machine).
      gpu_arch: `--iree-cuda-target` / `--iree-rocm-target` for GPU targets.
      library_entry: the named sequence of a transform library to run (kernel-config entry).
      link_embedded: False links with the system linker (libm available; needed by IREE's
        default pipeline for f16 softmax, which calls `fmaxf`).
      compile_to: stop after this phase (e.g. "executable-configurations").
      extra_flags: anything else, appended verbatim.
      timeout_s: kill iree-compile after this many seconds.
    """

    target: str = "llvm-cpu"
    cpu: str = "host"
    gpu_arch: str | None = None
    library_entry: str = "__kernel_config"
    link_embedded: bool = True
    compile_to: str | None = None
    extra_flags: tuple[str, ...] = ()
    timeout_s: float = 600.0

    @property
    def target_name(self) -> str:
        """The `--target` name of these options: "cpu", "cuda:sm_80", "rocm:gfx942"..."""
        if self.target == "llvm-cpu":
            return "cpu"
        default = "sm_80" if self.target == "cuda" else "gfx942"
        return f"{self.target}:{self.gpu_arch or default}"

    @property
    def is_gpu(self) -> bool:
        return self.target != "llvm-cpu"

    @property
    def driver(self) -> str:
        """The HAL driver (`iree-run-module --device=`) that runs modules for this target."""
        return DRIVERS[self.target]


def target_options(name: str, base: CompileOptions | None = None) -> CompileOptions:
    """`base` (default CompileOptions()) retargeted to `--target name`; ValueError naming the
    known targets for anything else."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}")
    target, arch = TARGETS[name]
    return replace(base or CompileOptions(), target=target, gpu_arch=arch)


# IREE 3.13 deadlocks now and then when it configures two or more executables in parallel
# with a transform library: the pool workers block on the library-loading mutex
# (`IREECodegenDialect::getOrLoadTransformLibraryModule`, from MaterializeUserConfigsPass)
# while the thread that holds it waits on the same 2-thread pool; iree-compile never exits.
# Seen in 2-5% of compiles of a two-dispatch softmax here; never with this flag, which costs
# nothing measurable on these small modules (27.0 s vs 29.2 s for 80 compiles).
NO_THREADING = "--mlir-disable-threading"


_LIBRARY_FLAGS = re.compile(r'^module attributes \{.*?tdkit\.compile_flags = \[([^\]]*)\]',
                            re.MULTILINE)


def library_flags(library: str | None) -> tuple[str, ...]:
    """The iree-compile flags a transform library declares it needs (module attribute
    `tdkit.compile_flags`, see `tdkit.strategies.library.COMPILE_FLAGS_ATTR`)."""
    if not library:
        return ()
    m = _LIBRARY_FLAGS.search(library)
    return tuple(re.findall(r'"([^"]*)"', m.group(1))) if m else ()


def compile_argv(compiler: str, source: Path, output: Path, opts: CompileOptions, *,
                 library: Path | None = None, dump_configurations: Path | None = None,
                 preprocessing: Path | None = None) -> list[str]:
    """The exact iree-compile command line for one compile (pure: no I/O)."""
    if opts.target not in TARGET_FLAGS:
        raise ValueError(f"unknown target {opts.target!r}; expected one of {sorted(TARGET_FLAGS)}")
    argv = [compiler, str(source), *TARGET_FLAGS[opts.target]]
    if opts.target == "llvm-cpu":
        argv.append(f"--iree-llvmcpu-target-cpu={opts.cpu}")
        if not opts.link_embedded:
            argv.append("--iree-llvmcpu-link-embedded=false")
    elif opts.target == "cuda":
        argv.append(f"--iree-cuda-target={opts.gpu_arch or 'sm_80'}")
    elif opts.target == "rocm":
        argv.append(f"--iree-rocm-target={opts.gpu_arch or 'gfx942'}")
    if preprocessing is not None:
        argv.append(f"--iree-preprocessing-transform-spec-filename={preprocessing}")
    if library is not None:
        argv.append(f"--iree-codegen-transform-dialect-library={library}@{opts.library_entry}")
    if (library is not None or preprocessing is not None) \
            and NO_THREADING not in opts.extra_flags:
        argv.append(NO_THREADING)
    if dump_configurations is not None:
        argv.append(f"--iree-hal-dump-executable-configurations-to={dump_configurations}")
    if opts.compile_to:
        argv.append(f"--compile-to={opts.compile_to}")
    if opts.is_gpu and dump_configurations is not None:
        # The device code (PTX; ROCm: the HSACO and its ISA listing), for structural checks.
        argv += ["--iree-hal-dump-executable-binaries-to=binaries",
                 "--iree-hal-dump-executable-intermediates-to=intermediates"]
    argv.extend(opts.extra_flags)
    argv.extend(["-o", str(output)])
    return argv


def tool_env(name: str) -> str:
    """The environment variable that overrides tool `name`: iree-run-module ->
    TDKIT_IREE_RUN_MODULE (iree-compile -> TDKIT_IREE_COMPILE)."""
    return "TDKIT_" + name.upper().replace("-", "_")


def find_tool(name: str, override: str | None = None) -> str:
    """Path of an IREE tool: `override`, then $TDKIT_<NAME> (e.g. $TDKIT_IREE_COMPILE,
    $TDKIT_IREE_BENCHMARK_MODULE: a local IREE build, or a wrapper), then the tool installed
    beside this Python (the venv's bin/), then PATH."""
    if override is None:
        override = os.environ.get(tool_env(name)) or None
    if override:
        found = shutil.which(override)
        if found is None:
            raise ToolError(f"{name} not found at {override!r}", argv=[override], missing=True)
        return found
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"{name} not found (install iree-base-compiler/iree-base-runtime 3.13.0 "
                        f"or pass --compiler)", argv=[name], missing=True)
    return found


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _libc_prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the child, before exec: die with the parent (a killed sweep leaves no orphaned
    iree-compile behind; its own group makes timeouts kill the whole tree)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)  # type: ignore[operator]


_LIVE: set[int] = set()  # process groups of running children (see `kill_running`)


def kill_running() -> int:
    """Kill every iree-* process group tdkit is waiting on (an interrupted sweep stops at
    once instead of waiting for its compiles); returns how many were killed."""
    killed = 0
    for pgid in list(_LIVE):
        try:
            os.killpg(pgid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def run_process(argv: list[str], *, timeout_s: float, what: str, repro: str = "",
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run one iree-* process to completion; ToolError if it is missing, fails, crashes or hangs.

    The child gets its own process group, so a timeout kills it and anything it started."""
    repro = repro or shlex.join(argv)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=cwd, start_new_session=True, preexec_fn=_child_setup)
    except FileNotFoundError:
        raise ToolError(f"{what}: {argv[0]} not found", argv=argv, missing=True) from None
    _LIVE.add(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise ToolError(f"{what} timed out after {timeout_s:g} s", argv=argv,
                        stderr_tail=_tail(err), repro=repro, stderr=err,
                        kind="timeout") from None
    finally:
        _LIVE.discard(proc.pid)
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        raise ToolError(f"{what} crashed with {sig}", argv=argv, returncode=proc.returncode,
                        stderr_tail=_tail(err), repro=repro, stderr=err, kind="crash")
    if proc.returncode != 0:
        raise ToolError(f"{what} failed (exit {proc.returncode})", argv=argv,
                        returncode=proc.returncode, stderr_tail=_tail(err), repro=repro,
                        stderr=err)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@dataclass(frozen=True)
class Artifact:
    """Everything one compile produced, all inside `dir`."""

    dir: Path
    vmfb: Path
    payload: Path
    strategy: Path | None
    command: list[str]
    stderr: str
    configurations: Path | None = None
    stdout: str = ""

    def configuration_files(self) -> list[Path]:
        if self.configurations is None or not self.configurations.is_dir():
            return []
        return sorted(self.configurations.glob("*.mlir"))


def compile_module(payload: str, out_dir: Path, opts: CompileOptions = CompileOptions(), *,
                   strategy: str | None = None, compiler: str | None = None,
                   preprocessing: str | None = None) -> Artifact:
    """Compile MLIR text `payload` (with transform library text `strategy`, if any) into
    `out_dir`, writing payload.mlir, strategy.mlir, command.txt, stderr.txt and module.vmfb;
    `preprocessing` is a preprocessing transform spec (raise.mlir) run before dispatch
    formation. Flags the library declares (`library_flags`) are added to `opts`.

    Dispatch configurations are dumped to out_dir/configurations so callers can check which
    pipeline each dispatch got."""
    out_dir.mkdir(parents=True, exist_ok=True)
    needed = [f for f in library_flags(strategy) if f not in opts.extra_flags]
    if needed:
        opts = replace(opts, extra_flags=(*opts.extra_flags, *needed))
    source = out_dir / "payload.mlir"
    if opts.target_name in PAYLOAD_DEVICE_TARGETS:
        payload = with_device_targets(payload, PAYLOAD_DEVICE_TARGETS[opts.target_name])
    source.write_text(payload)
    library = None
    if strategy is not None:
        library = out_dir / "strategy.mlir"
        library.write_text(strategy)
    configs = out_dir / "configurations"
    for stale in (configs, out_dir / "binaries", out_dir / "intermediates"):
        if stale.exists():
            shutil.rmtree(stale)
    vmfb = out_dir / ("module.vmfb" if opts.compile_to is None else "module.out.mlir")
    # Paths relative to out_dir (the compile runs there): IREE embeds source paths in the
    # module, and relative ones make the same payload + strategy give the same bytes in any
    # directory (`tdkit tune` deduplicates candidates by binary hash).
    rel = Path(".")
    spec = None
    if preprocessing is not None:
        spec = out_dir / "raise.mlir"
        spec.write_text(preprocessing)
    argv = compile_argv(os.path.abspath(find_tool("iree-compile", compiler)),
                        rel / source.name, rel / vmfb.name, opts,
                        library=None if library is None else rel / library.name,
                        dump_configurations=rel / configs.name,
                        preprocessing=None if spec is None else rel / spec.name)
    repro = f"cd {shlex.quote(str(out_dir))} && " + shlex.join(argv)
    (out_dir / "command.txt").write_text(repro + "\n")
    try:
        proc = run_process(argv, timeout_s=opts.timeout_s, what="iree-compile", repro=repro,
                           cwd=out_dir)
    except ToolError as err:
        (out_dir / "stderr.txt").write_text(err.stderr)
        raise
    (out_dir / "stderr.txt").write_text(proc.stderr)
    return Artifact(dir=out_dir, vmfb=vmfb, payload=source, strategy=library, command=argv,
                    stderr=proc.stderr, configurations=configs, stdout=proc.stdout)


def with_device_targets(payload: str, targets: str) -> str:
    """`payload` with its module's `hal.device.targets` set to `targets` (for targets that
    `iree-compile` flags cannot name). ValueError if the payload does not parse."""
    from iree.compiler import ir

    with ir.Context() as ctx:
        ctx.allow_unregistered_dialects = True
        try:
            module = ir.Module.parse(payload)
        except ir.MLIRError as err:
            raise ValueError(f"payload does not parse: {err}") from None
        module.operation.attributes["hal.device.targets"] = ir.Attribute.parse(targets)
        return str(module)


def import_onnx(model: Path, output: Path, *, timeout_s: float = 600.0) -> Path:
    """`iree-import-onnx model -o output`: the model as torch-dialect MLIR (needs the `onnx`
    package beside iree-base-compiler)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    argv = [find_tool("iree-import-onnx"), str(model), "-o", str(output)]
    (output.parent / "command.txt").write_text(shlex.join(argv) + "\n")
    run_process(argv, timeout_s=timeout_s, what="iree-import-onnx")
    return output


# numpy dtype -> IREE element type name used in --input=SHAPExTYPE=@file.bin
_IREE_TYPES: dict[np.dtype, str] = {
    np.dtype(np.float32): "f32",
    np.dtype(np.float16): "f16",
    np.dtype(ml_dtypes.bfloat16): "bf16",
    np.dtype(np.float64): "f64",
    np.dtype(np.int8): "i8",
    np.dtype(np.int16): "i16",
    np.dtype(np.int32): "i32",
    np.dtype(np.int64): "i64",
    np.dtype(np.uint8): "ui8",
    np.dtype(np.bool_): "i1",
}


def iree_type_name(dtype: np.dtype) -> str:
    try:
        return _IREE_TYPES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"unsupported array dtype {dtype}") from None


def _write_inputs(inputs: list[np.ndarray], workdir: Path) -> list[Path]:
    """Write each input's raw bytes to `workdir/input<i>.bin`; returns the paths."""
    paths = [workdir / f"input{i}.bin" for i in range(len(inputs))]
    for arr, path in zip(inputs, paths, strict=True):
        np.ascontiguousarray(arr).tofile(path)
    return paths


def _input_flags(inputs: list[np.ndarray], workdir: Path) -> list[str]:
    flags = []
    for arr, path in zip(inputs, _write_inputs(inputs, workdir), strict=True):
        shape = "x".join(str(d) for d in arr.shape)
        type_spec = f"{shape}x{iree_type_name(arr.dtype)}" if shape else iree_type_name(arr.dtype)
        flags.append(f"--input={type_spec}=@{path}")
    return flags


@dataclass(frozen=True)
class RunOptions:
    """How to execute a compiled module on this machine."""

    device: str = "local-task"
    function: str = "main"
    timeout_s: float = 300.0
    # local-task worker threads for timing (`--task_topology_group_count`); None: IREE's own
    # choice, one worker per physical core.
    threads: int | None = None
    # How `benchmark_module` times a local-task module: "runtime" (`tdkit.tools.rtimer`: the IREE
    # Python runtime, calls made from an idle-priority thread so the caller's spin-wait does not
    # take a core from the workers) or "benchmark-module" (`iree-benchmark-module`). Other
    # devices always use `iree-benchmark-module`.
    timer: str = "runtime"


def run_module(vmfb: Path, inputs: list[np.ndarray],
               outputs: list[tuple[tuple[int, ...], np.dtype]], workdir: Path,
               opts: RunOptions = RunOptions()) -> list[np.ndarray]:
    """Run `vmfb` once on `inputs` in a child `iree-run-module`; return its outputs."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [find_tool("iree-run-module"), f"--device={opts.device}", f"--module={vmfb}",
            f"--function={opts.function}", *_input_flags(inputs, workdir)]
    out_paths = [workdir / f"output{i}.bin" for i in range(len(outputs))]
    for path in out_paths:
        path.unlink(missing_ok=True)
        argv.append(f"--output=@{path}")
    run_process(argv, timeout_s=opts.timeout_s, what="iree-run-module")
    results = []
    for path, (shape, dtype) in zip(out_paths, outputs, strict=True):
        data = np.fromfile(path, dtype=dtype)
        expected = int(np.prod(shape))
        if data.size != expected:
            raise ToolError(f"iree-run-module wrote {data.size} elements to {path.name}, "
                            f"expected {expected}", argv=argv)
        results.append(data.reshape(shape))
    return results


# Runs argv as its only child and reports that child's peak resident set size on stderr.
_PEAK_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(f'TDKIT_PEAK_RSS_KB={kb}', file=sys.stderr)\n"
    "sys.exit(rc if rc >= 0 else 128 - rc)\n"
)


def peak_rss_module(vmfb: Path, inputs: list[np.ndarray], workdir: Path,
                    opts: RunOptions = RunOptions()) -> int:
    """Run `vmfb` once in `iree-run-module` (outputs discarded) and return the peak resident
    memory of that process in bytes."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", _PEAK_RSS_WRAPPER, find_tool("iree-run-module"),
            f"--device={opts.device}", f"--module={vmfb}", f"--function={opts.function}",
            *_input_flags(inputs, workdir), "--output="]
    proc = run_process(argv, timeout_s=opts.timeout_s, what="iree-run-module (peak memory)")
    for line in reversed(proc.stderr.splitlines()):
        if line.startswith("TDKIT_PEAK_RSS_KB="):
            return int(line.split("=", 1)[1]) * 1024
    raise ToolError("peak memory was not reported", argv=argv, stderr_tail=_tail(proc.stderr))


@dataclass(frozen=True)
class Timing:
    """Per-repetition wall times of one function, in milliseconds."""

    samples_ms: tuple[float, ...] = field(default_factory=tuple)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)


def thread_flags(opts: RunOptions) -> list[str]:
    """The runtime flags that give a local-task device `opts.threads` workers (none when
    unset, or for another device)."""
    if opts.threads is None or opts.device != "local-task":
        return []
    return [f"--task_topology_group_count={opts.threads}"]


TIMERS = ("runtime", "benchmark-module")


def benchmark_module(vmfb: Path, inputs: list[np.ndarray], workdir: Path, *,
                     repetitions: int = 5, min_time_s: float = 0.05, warmup_s: float = 0.05,
                     opts: RunOptions = RunOptions()) -> Timing:
    """Time `vmfb` in a child process: a warm-up, then `repetitions` repetitions of at least
    `min_time_s` each; returns the mean time per call of every repetition. A local-task module
    is timed by `opts.timer` (see `RunOptions.timer`), any other with `iree-benchmark-module`."""
    if opts.timer not in TIMERS:
        raise ValueError(f"unknown timer {opts.timer!r} (one of {', '.join(TIMERS)})")
    workdir.mkdir(parents=True, exist_ok=True)
    if opts.timer == "runtime" and opts.device == "local-task":
        return _time_in_runtime(vmfb, inputs, workdir, repetitions=repetitions,
                                min_time_s=min_time_s, warmup_s=warmup_s, opts=opts)
    argv = [find_tool("iree-benchmark-module"), f"--device={opts.device}", f"--module={vmfb}",
            f"--function={opts.function}", *_input_flags(inputs, workdir),
            *thread_flags(opts), f"--benchmark_repetitions={repetitions}",
            f"--benchmark_min_time={min_time_s}s", f"--benchmark_min_warmup_time={warmup_s}",
            "--benchmark_format=json"]
    proc = run_process(argv, timeout_s=opts.timeout_s, what="iree-benchmark-module")
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ToolError("iree-benchmark-module printed no JSON report", argv=argv,
                        stderr_tail=_tail(proc.stderr)) from None
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    samples = tuple(b["real_time"] * scale[b.get("time_unit", "ns")]
                    for b in report.get("benchmarks", []) if b.get("run_type") == "iteration")
    if not samples:
        raise ToolError("iree-benchmark-module reported no timings", argv=argv,
                        stderr_tail=_tail(proc.stderr))
    return Timing(samples)


def _time_in_runtime(vmfb: Path, inputs: list[np.ndarray], workdir: Path, *, repetitions: int,
                     min_time_s: float, warmup_s: float, opts: RunOptions) -> Timing:
    """`python -m tdkit.tools.rtimer`: the IREE Python runtime in a child process, calling from
    an idle-priority thread."""
    spec = [{"path": str(path), "shape": list(arr.shape), "dtype": arr.dtype.name}
            for arr, path in zip(inputs, _write_inputs(inputs, workdir), strict=True)]
    spec_path = workdir / "inputs.json"
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, "-m", "tdkit.tools.rtimer", f"--module={vmfb}",
            f"--function={opts.function}", f"--device={opts.device}", f"--inputs={spec_path}",
            *(f"--flag={flag}" for flag in thread_flags(opts)),
            f"--repetitions={repetitions}", f"--min-time={min_time_s}", f"--warmup={warmup_s}"]
    proc = run_process(argv, timeout_s=opts.timeout_s, what="the runtime timer")
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        samples = tuple(float(x) for x in report["samples_ms"])
    except (json.JSONDecodeError, IndexError, KeyError, TypeError, ValueError):
        raise ToolError("the runtime timer printed no timings", argv=argv,
                        stderr_tail=_tail(proc.stderr)) from None
    if not samples:
        raise ToolError("the runtime timer reported no timings", argv=argv,
                        stderr_tail=_tail(proc.stderr))
    return Timing(samples)


def available_devices(driver: str, *, timeout_s: float = 60.0) -> list[str]:
    """The devices `iree-run-module --list_devices` enumerates for HAL `driver` ("cuda", "hip",
    "local-task"): e.g. ["cuda://GPU-..."], or [] when the driver or its library is missing.
    Listed once per runtime tool and process (a smoke matrix or a sweep asks per case)."""
    prefix = f"{driver}://"
    listing = _device_listing(find_tool("iree-run-module"), timeout_s)
    return [ln for ln in listing if ln.startswith(prefix)]


@functools.cache
def _device_listing(tool: str, timeout_s: float) -> tuple[str, ...]:
    argv = [tool, "--list_devices"]
    try:
        proc = run_process(argv, timeout_s=timeout_s, what="iree-run-module --list_devices")
    except ToolError as err:
        if err.missing:
            raise
        return ()
    return tuple(ln.strip() for ln in proc.stdout.splitlines() if ln.strip())


def tool_versions(compiler: str | None = None) -> str:
    """One line naming the compiler (`iree-compile --version`) and runtime versions: results
    measured with other tools are not comparable, so sweeps record it with every row."""
    argv = [find_tool("iree-compile", compiler), "--version"]
    proc = run_process(argv, timeout_s=60, what="iree-compile --version")
    compiler_line = next((ln.strip() for ln in proc.stdout.splitlines()
                          if "compiler version" in ln), proc.stdout.strip()[:120])
    try:
        from importlib.metadata import version

        runtime = version("iree-base-runtime")
    except Exception:  # noqa: BLE001  (a local runtime build has no distribution metadata)
        runtime = "unknown"
    return f"{compiler_line}; iree-base-runtime {runtime}"
