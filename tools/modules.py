"""Run any payload module (`tdkit run FILE.mlir`): strategies on the dispatches tdkit knows, the
default pipeline on the rest, verified against IREE's default build of the same module."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from iree.compiler import ir

from tdkit.matchers.dtypes import TOLERANCES, DType
from tdkit.strategies import registry
from tdkit.strategies.base import KnobError
from tdkit.tools.applied import DispatchInfo, check_applied, dispatches
from tdkit.tools.errors import BadInputError, NotAppliedError, ToolError
from tdkit.tools.harness import (
    Build,
    HarnessConfig,
    compile_default,
    compile_linked,
    device_for,
    time_builds,
)
from tdkit.tools.raising import RaisePlan, plan_raising
from tdkit.tools.toolchain import import_onnx, peak_rss_module, run_module
from tdkit.tools.verify import Verdict, compare

_ELEMENT_TYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32), "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16), "f64": np.dtype(np.float64),
    "i8": np.dtype(np.int8), "i16": np.dtype(np.int16), "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64), "i1": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class Signature:
    """Argument and result types of the function to run."""

    function: str
    inputs: tuple[tuple[tuple[int, ...], np.dtype], ...]
    outputs: tuple[tuple[tuple[int, ...], np.dtype], ...]


_VTENSOR = re.compile(r"^!torch\.vtensor<\[([-\d,\s]*)\],\s*(\w+)>$")
_TORCH_ELEMENTS = {"si8": "i8", "si16": "i16", "si32": "i32", "si64": "i64", "ui8": "i8"}


def _tensor_spec(t: ir.Type, what: str) -> tuple[tuple[int, ...], np.dtype]:
    torch_type = _VTENSOR.match(str(t))
    if torch_type:  # the torch dialect's value tensors (imported ONNX / torch models)
        dims = tuple(int(d) for d in torch_type.group(1).split(",") if d.strip())
        if any(d < 0 for d in dims):
            raise BadInputError(f"{what} has dynamic shape {t}; give static shapes")
        elem = _TORCH_ELEMENTS.get(torch_type.group(2), torch_type.group(2))
        if elem not in _ELEMENT_TYPES:
            raise BadInputError(f"{what} has unsupported element type {torch_type.group(2)}")
        return dims, _ELEMENT_TYPES[elem]
    try:
        rt = ir.RankedTensorType(t)
    except ValueError:
        raise BadInputError(f"{what} has type {t}; only ranked tensors are supported") from None
    if not rt.has_static_shape:
        raise BadInputError(f"{what} has dynamic shape {t}; give static shapes")
    elem = str(rt.element_type)
    if elem not in _ELEMENT_TYPES:
        raise BadInputError(f"{what} has unsupported element type {elem}")
    return tuple(rt.shape), _ELEMENT_TYPES[elem]


def parse_error_message(message: str, text: str) -> str:
    """One line saying why `text` did not parse, naming the op when it is an unknown one."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    detail = lines[0].removeprefix("Unable to parse module assembly:").strip() if lines else ""
    where = re.search(r":(\d+):(\d+): (.*)", " ".join(lines))
    if where:
        line, col, detail = int(where.group(1)), int(where.group(2)), where.group(3)
        source = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
        op = (re.search(r'"?([\w.]+)"?\s*$', source[:col - 1])
              or re.match(r'\s*"?([\w.]+)"?', source[col - 1:]))
        if "unregistered dialect" in detail or "unregistered operation" in detail:
            name = op.group(1) if op else "?"
            return f"unknown operation '{name}' at line {line}: no dialect registers it"
        return f"malformed MLIR at line {line}, column {col}: {detail}"
    return f"malformed MLIR: {detail}"


def read_signature(text: str, function: str | None) -> Signature:
    """Parse the module (BadInputError if malformed) and read the entry function's signature."""
    with ir.Context() as ctx, ir.Location.unknown():
        ctx.allow_unregistered_dialects = False
        try:
            module = ir.Module.parse(text)
        except ir.MLIRError as err:
            raise BadInputError(parse_error_message(str(err), text)) from None
        funcs = [op for op in module.body.operations if op.operation.name in
                 ("func.func", "util.func")]
        public = [f for f in funcs if "sym_visibility" not in f.attributes
                  or str(f.attributes["sym_visibility"]) == '"public"']
        names = [ir.StringAttr(f.attributes["sym_name"]).value for f in public]
        if not names:
            raise BadInputError("the module has no public function to run")
        if function is None:
            function = "main" if "main" in names else names[0]
        if function not in names:
            raise BadInputError(f"no public function @{function}; found {', '.join(names)}")
        fop = public[names.index(function)]
        ftype = ir.FunctionType(ir.TypeAttr(fop.attributes["function_type"]).value)
        ins = tuple(_tensor_spec(t, f"argument {i}") for i, t in enumerate(ftype.inputs))
        outs = tuple(_tensor_spec(t, f"result {i}") for i, t in enumerate(ftype.results))
    return Signature(function, ins, outs)


def load_inputs(sig: Signature, paths: list[str], seed: int) -> list[np.ndarray]:
    """Inputs from .npy files (in argument order) or seeded random values."""
    if paths and len(paths) != len(sig.inputs):
        raise BadInputError(f"@{sig.function} takes {len(sig.inputs)} inputs, "
                            f"{len(paths)} --input given")
    rng = np.random.default_rng(seed)
    arrays = []
    for i, (shape, dtype) in enumerate(sig.inputs):
        if paths:
            path = paths[i].removeprefix("@")
            try:
                arr = np.load(path)
            except (OSError, ValueError) as err:
                raise BadInputError(f"cannot read input {i} from {path}: {err}") from None
            if tuple(arr.shape) != shape:
                raise BadInputError(f"input {i} from {path} has shape {arr.shape}, "
                                    f"@{sig.function} expects {shape}")
            arrays.append(arr.astype(dtype))
        elif dtype == np.bool_:
            arrays.append(rng.random(shape) < 0.5)
        elif np.issubdtype(dtype, np.integer):
            arrays.append(rng.integers(-8, 8, size=shape).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def _tolerance(dtype: np.dtype) -> float:
    for d in DType:
        if d.numpy == dtype:
            return TOLERANCES[d] * 2  # both sides carry rounding error
    return 0.0 if not np.issubdtype(dtype, np.floating) else TOLERANCES[DType.F32] * 2


def _saveable(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) if arr.dtype == ml_dtypes.bfloat16 else arr


@dataclass
class ModuleRun:
    """Result of `tdkit run FILE.mlir`."""

    path: Path
    main: Build
    default: Build
    verdicts: list[Verdict] = field(default_factory=list)
    targeted: list[DispatchInfo] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list, repr=False)
    values: list[np.ndarray] = field(default_factory=list, repr=False)
    onnxruntime: list[Verdict] | None = None  # outputs vs onnxruntime (ONNX models only)
    raising: RaisePlan | None = None  # what was raised before dispatch formation
    peak_bytes: dict[str, int] = field(default_factory=dict)  # peak RSS of one call, per build
    not_run: str = ""  # why nothing ran (a GPU target without its GPU here)

    @property
    def ok(self) -> bool:
        """Applied and correct; or, compiled only (`not_run`), applied."""
        return self.main.applied and all(v.ok for v in [*self.verdicts,
                                                         *(self.onnxruntime or [])])

    def as_dict(self) -> dict[str, Any]:
        worst = max(self.verdicts, key=lambda v: v.max_abs_err / max(v.tolerance, 1e-30),
                    default=None)
        out: dict[str, Any] = {
            "ok": self.ok, "module": str(self.path), "strategy": self.main.strategy,
            "applied": self.main.applied, "targeted": len(self.targeted),
            "verified": bool(self.verdicts),
            "dispatches": [d.as_dict() for d in self.main.dispatches],
            "max_abs_err": worst.max_abs_err if worst else None,
            "tolerance": worst.tolerance if worst else None,
            "reason": next((v.reason for v in self.verdicts if not v.ok), ""),
            "outputs": [str(p) for p in self.outputs], "artifacts": str(self.main.artifact.dir),
            "notes": self.main.notes + self.default.notes,
            "default_dispatches": [d.as_dict() for d in self.default.dispatches],
        }
        if self.not_run:
            out["not_run"] = self.not_run
        if self.raising is not None:
            out.update(self.raising.as_dict())
        if self.peak_bytes:
            out["peak_mb"] = {k: v / 2**20 for k, v in self.peak_bytes.items()}
        if self.onnxruntime is not None:
            out["onnxruntime_max_abs_err"] = max(v.max_abs_err for v in self.onnxruntime)
            out["onnxruntime_ok"] = all(v.ok for v in self.onnxruntime)
            out["reason"] = out["reason"] or next(
                (f"vs onnxruntime: {v.reason}" for v in self.onnxruntime if not v.ok), "")
        if self.main.timing and self.default.timing:
            out["time_ms"] = self.main.timing.median_ms
            out["default_time_ms"] = self.default.timing.median_ms
            out["speedup"] = self.default.timing.median_ms / self.main.timing.median_ms
        return out


def payload_entries(strategies: list[str] | None, target: str
                    ) -> tuple[list[registry.Family], list[Any]]:
    """The families for an arbitrary payload module (`strategies`, or every family that
    generates code for `--target target`) and their default entries for any dispatch."""
    fams = [registry.get(s) for s in strategies] if strategies else [
        f for f in registry.families().values() if f.supports(target)]
    try:
        entries = [e for f in fams for e in f.entries(None, f.parse_knobs(None, None, target))]
    except KnobError as err:
        raise BadInputError(f"invalid knob: {err}") from None
    return fams, entries


def run_file(path: Path, *, strategies: list[str] | None, inputs: list[str], function: str | None,
             output_dir: Path | None, cfg: HarnessConfig, timing: bool = True,
             raise_attention: bool = True, memory: bool = False) -> ModuleRun:
    """Compile `path` with every applicable tdkit strategy (or the named ones), run it and IREE's
    default build on the same inputs, save outputs, and compare the two. With
    `raise_attention`, unfused attention chains are first raised to one attention op each
    (`tdkit.tools.raising`); IREE's default build stays as written."""
    try:
        text = path.read_text()
    except OSError as err:
        raise BadInputError(f"cannot read {path}: {err.strerror}") from None
    sig = read_signature(text, function)
    arrays = load_inputs(sig, inputs, cfg.seed)
    explicit = bool(strategies)
    target = cfg.compile.target_name
    fams, entries = payload_entries(strategies, target)
    root = cfg.root() / path.stem / time.strftime("%Y%m%d-%H%M%S")
    plan = plan_raising(text, root / "preprocessing", cfg) if raise_attention else None
    if plan is not None:  # entries fitted to each raised chain first (first match wins)
        entries = plan.entries(fams, target) + entries
    library = registry.library_text(entries)
    art, notes = compile_linked(text, root / "tdkit", cfg, strategy=library,
                                preprocessing=plan.spec if plan else None)
    if plan is not None:
        notes = plan.notes() + notes
    infos = dispatches(art)
    if plan is not None:
        plan.check_applied(infos)
    targeted = [d for d in infos if any(f.targets(d) for f in fams)]
    if targeted:
        check_applied(art, lambda d: any(f.targets(d) for f in fams))
    elif explicit:
        raise NotAppliedError(f"strategy not applied: no dispatch of {path.name} is one that "
                              f"{', '.join(strategies or [])} targets "
                              f"(dispatches: {', '.join(d.name for d in infos)})")
    main = Build("+".join(f.name for f in fams), art, infos, applied=True, notes=notes)
    dart, notes = compile_default(text, root / "default", cfg)
    default = Build(registry.DEFAULT, dart, dispatches(dart), applied=True, notes=notes)
    if not targeted:
        main.notes.append("no dispatch in this module is one tdkit has a strategy for")
    specs = list(sig.outputs)
    device, not_run = device_for(cfg)
    if not_run:  # a GPU target without its GPU here: compiled and checked only
        return ModuleRun(path, main, default, targeted=targeted, inputs=arrays, raising=plan,
                         not_run=not_run)
    run_opts = replace(device, function=sig.function)
    got = run_module(art.vmfb, arrays, specs, root / "tdkit" / "run", run_opts)
    want = run_module(dart.vmfb, arrays, specs, root / "default" / "run", run_opts)
    result = ModuleRun(path, main, default, targeted=targeted, inputs=arrays, values=got,
                       raising=plan)
    for g, w, (_, dtype) in zip(got, want, specs, strict=True):
        result.verdicts.append(compare(g, w.astype(np.float64), _tolerance(dtype)))
    out_dir = output_dir or root / "outputs"
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, g in enumerate(got):
        p = out_dir / f"output{i}.npy"
        np.save(p, _saveable(g))
        result.outputs.append(p)
    if timing:
        time_builds([main, default], arrays, cfg, run_opts)
    if memory:  # peak resident memory of one call of each build (a child process each)
        result.peak_bytes = {
            "tdkit": peak_rss_module(art.vmfb, arrays, root / "tdkit" / "rss", run_opts),
            "default": peak_rss_module(dart.vmfb, arrays, root / "default" / "rss", run_opts)}
    return result



def import_model(path: Path, out_dir: Path, cfg: HarnessConfig) -> Path:
    """Import an ONNX model to torch-dialect MLIR in `out_dir`; a model the importer rejects
    is bad input (exit 2), a missing importer a missing tool."""
    try:
        return import_onnx(path, out_dir / f"{path.stem}.mlir", timeout_s=cfg.compile.timeout_s)
    except ToolError as err:
        if err.missing:
            raise
        raise BadInputError(f"cannot import {path.name}: {err.one_line()}") from None


def run_onnx(path: Path, *, strategies: list[str] | None, inputs: list[str],
             output_dir: Path | None, cfg: HarnessConfig, timing: bool = True,
             raise_attention: bool = True, memory: bool = False) -> ModuleRun:
    """Import an ONNX model with iree-import-onnx, run it like a payload file, and compare its
    outputs with onnxruntime on the same inputs (when the `onnx` extra is installed)."""
    mlir = import_model(path, cfg.root() / path.stem / "import", cfg)
    result = run_file(mlir, strategies=strategies, inputs=inputs, function=None,
                      output_dir=output_dir, cfg=cfg, timing=timing,
                      raise_attention=raise_attention, memory=memory)
    if result.not_run:
        return result
    try:
        import onnxruntime
    except ImportError:
        result.main.notes.append("onnxruntime not installed (pip install '.[onnx]'): "
                                 "checked against IREE's default build only")
        return result
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {n: _saveable(a) for n, a in zip(names, result.inputs, strict=True)}
    expected = session.run(None, feeds)
    result.onnxruntime = [compare(got, np.asarray(want, dtype=np.float64), _tolerance(got.dtype))
                          for got, want in zip(result.values, expected, strict=True)]
    return result
