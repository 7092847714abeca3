"""Show what a strategy did: a dispatch's IR right after the strategy ran (`tdkit apply`)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from tdkit.strategies import registry
from tdkit.tools.applied import check_applied
from tdkit.tools.errors import NotAppliedError
from tdkit.tools.harness import HarnessConfig, library_for, payload_text, resolve_form
from tdkit.tools.toolchain import compile_module

PASS = "iree-codegen-lower-executable-using-transform-dialect"
# IREE's own CPU pipelines (entries that only configure a dispatch, e.g. the attention `config`
# family) run inside this pass; its dump is the dispatch right before LLVM conversion.
CPU_PIPELINE_PASS = "iree-llvmcpu-lower-executable-target"
GPU_PIPELINE_PASS = "iree-llvmgpu-lower-executable-target"  # CUDA and ROCm
# MLIR prints either "After NamePass (arg)" or "After NamePass: arg{options}".
_HEADER = re.compile(r"^// -----// IR Dump After \S+(?: \((?P<a>[\w-]+)\)|: (?P<b>[\w-]+)\S*)"
                     r" //----- //$", re.MULTILINE)


def strategy_ir(problem: Any, strategy: str, knobs: dict[str, str] | None, *, form: str | None,
                cfg: HarnessConfig) -> str:
    """Compile `problem` with `strategy`, printing each dispatch's IR right after its codegen
    (the transform strategy, or the IREE pipeline a configuring entry selected), and return
    the dumps of the dispatches the strategy lowered."""
    payload = payload_text(problem, resolve_form(problem, form))
    library = library_for(problem, strategy, knobs, cfg.compile.target_name)
    pipeline = GPU_PIPELINE_PASS if cfg.compile.is_gpu else CPU_PIPELINE_PASS
    # Dumps in order: every compile with a library runs single-threaded (toolchain.NO_THREADING).
    opts = replace(cfg.compile, extra_flags=(*cfg.compile.extra_flags,
                                             f"--mlir-print-ir-after={PASS}",
                                             f"--mlir-print-ir-after={pipeline}"))
    art = compile_module(payload, cfg.root() / "apply", opts, strategy=library,
                         compiler=cfg.compiler)
    family = registry.get(strategy)
    infos = check_applied(art, family.targets)
    names = [d.name for d in infos if d.by_tdkit and family.targets(d)]
    headers = list(_HEADER.finditer(art.stderr))
    starts = [m.start() for m in headers] + [len(art.stderr)]
    lowered: dict[str, str] = {}  # the first dump after codegen of each targeted dispatch
    for m, a, b in zip(headers, starts, starts[1:], strict=False):
        dump = art.stderr[a:b]
        pass_name = m.group("a") or m.group("b")
        if pass_name == PASS and "no_pipeline" not in dump:
            continue  # a dispatch the transform dialect did not lower
        for n in names:
            if f"func.func @{n}(" in dump:
                lowered.setdefault(n, dump)
    if not lowered:
        raise NotAppliedError(f"no dispatch was lowered by {strategy}; artifacts in {art.dir}")
    return "".join(lowered.values())
