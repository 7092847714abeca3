"""Decide, from a compile's artifacts, which pipeline each dispatch got and whether a strategy ran.

`iree-compile` silently falls back to its default pipeline when a transform library fails to
load; this module is where that fallback becomes an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tdkit.tools.errors import NotAppliedError
from tdkit.tools.toolchain import Artifact

LOAD_FAILURE = "Failed to load transform library"
_EXPORT = re.compile(r"hal\.executable\.export public @([\w$.-]+)")
_TRANSLATION = re.compile(r"translation_info = #iree_codegen\.translation_info<(.*?)>\s*[,}]")
_SPEC = re.compile(r"codegen_spec = @([\w$.-]+)")
_PIPELINE = re.compile(r"pipeline = (#[\w.]+)(<\w+)?")
# The marker a tdkit entry without a codegen spec leaves on the op it configured
# (strategies.library.MARKER_ATTR), e.g. `tdkit.strategy = "tdkit_attention_config_b_f32"`.
_MARKER = re.compile(r'tdkit\.strategy = "(tdkit_[\w$.-]+)"')


@dataclass(frozen=True)
class DispatchInfo:
    """One dispatch of a compiled module and the pipeline that lowered it.

    `strategy` is the tdkit codegen spec that ran (e.g. "tdkit_softmax_cpu_r2_d1"), or the
    tdkit entry whose marker (`tdkit.strategy = "tdkit_..."`) is on an op of the dispatch (an
    entry that configures one of IREE's pipelines), or "default:<pipeline>" when IREE's own
    pipeline lowered it untouched."""

    name: str
    strategy: str
    source: str = field(default="", repr=False, compare=False)  # configured executable IR

    @property
    def by_tdkit(self) -> bool:
        return self.strategy.startswith("tdkit_")

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "strategy": self.strategy}


def dispatches(artifact: Artifact) -> list[DispatchInfo]:
    """Every dispatch in the compile, read from its dumped configurations."""
    found = []
    for path in artifact.configuration_files():
        text = path.read_text()
        exports = _EXPORT.findall(text)
        translations = _TRANSLATION.findall(text)
        for i, name in enumerate(exports):
            info = translations[i] if i < len(translations) else ""
            spec = _SPEC.search(info)
            marker = _MARKER.search(_func_body(text, name))
            if spec:
                strategy = spec.group(1)
            elif marker:
                strategy = marker.group(1)
            else:
                pipe = _PIPELINE.search(info)
                pipeline = pipe.group(1) + (pipe.group(2) + ">" if pipe.group(2) else "") \
                    if pipe else "unknown"
                strategy = "default:" + pipeline
            found.append(DispatchInfo(name, strategy, text))
    return found


def _func_body(text: str, name: str) -> str:
    """The text of `func.func @name` up to the next func (empty if absent)."""
    start = text.find(f"func.func @{name}(")
    if start < 0:
        return ""
    end = text.find("func.func @", start + 1)
    return text[start:] if end < 0 else text[start:end]


def check_applied(artifact: Artifact, is_target: Callable[[DispatchInfo], bool],
                  expected: int | None = None) -> list[DispatchInfo]:
    """Raise NotAppliedError unless every targeted dispatch ran a tdkit strategy.

    `is_target` says which dispatches the strategy was meant for; `expected`, when given, is how
    many such dispatches there must be. Returns all dispatches of the compile."""
    if LOAD_FAILURE in artifact.stderr:
        line = next(ln for ln in artifact.stderr.splitlines() if LOAD_FAILURE in ln)
        raise NotAppliedError(f"strategy not applied: iree-compile could not load the transform "
                              f"library ({line.strip()}); artifacts in {artifact.dir}")
    infos = dispatches(artifact)
    if not infos:
        raise NotAppliedError(f"strategy not applied: no dispatch configuration was dumped; "
                              f"artifacts in {artifact.dir}")
    targets = [d for d in infos if is_target(d)]
    if expected is not None and len(targets) != expected:
        raise NotAppliedError(f"strategy not applied: expected {expected} targeted dispatch(es), "
                              f"found {len(targets)} among {[d.name for d in infos]}")
    missed = [d for d in targets if not d.by_tdkit]
    if missed or not targets:
        names = ", ".join(f"{d.name} ({d.strategy})" for d in missed) or "none matched"
        raise NotAppliedError(f"strategy not applied to: {names}; artifacts in {artifact.dir}")
    return infos
