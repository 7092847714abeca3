"""Show what a strategy did: a dispatch's IR right after the strategy ran (`tdkit apply`)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from tdkit.strategies import registry
from tdkit.tools.applied import check_applied
from tdkit.tools.errors import NotAppliedError
from tdkit.tools.harness import HarnessConfig, library_for, payload_text
from tdkit.tools.toolchain import compile_module

PASS = "iree-codegen-lower-executable-using-transform-dialect"
_HEADER = re.compile(r"^// -----// IR Dump After .*\(" + re.escape(PASS) + r"\) //----- //$",
                     re.MULTILINE)


def strategy_ir(problem: Any, strategy: str, knobs: dict[str, str] | None, *, form: str | None,
                cfg: HarnessConfig) -> str:
    """Compile `problem` with `strategy`, printing the IR after the transform strategy ran, and
    return the dumps of the dispatches the strategy lowered."""
    payload = payload_text(problem, form or problem.forms[0])
    library = library_for(problem, strategy, knobs)
    opts = replace(cfg.compile, extra_flags=(*cfg.compile.extra_flags,
                                             f"--mlir-print-ir-after={PASS}",
                                             "--mlir-disable-threading"))
    art = compile_module(payload, cfg.root() / "apply", opts, strategy=library,
                         compiler=cfg.compiler)
    family = registry.get(strategy)
    check_applied(art, family.targets)
    starts = [m.start() for m in _HEADER.finditer(art.stderr)] + [len(art.stderr)]
    dumps = [art.stderr[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    lowered = [d for d in dumps if "no_pipeline" in d]
    if not lowered:
        raise NotAppliedError(f"no dispatch was lowered by {strategy}; artifacts in {art.dir}")
    return "".join(lowered)
