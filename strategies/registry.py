"""The strategy registry: names users type (`--strategy softmax_cpu`) mapped to strategy families.

A family couples a frozen Knobs dataclass (with `check()`), the problem kinds it handles, and a
function that builds the transform library for a problem. Knob values given as text
(`--knob rows=8`) are parsed here against the dataclass field types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from iree.compiler import ir

from tdkit.strategies.base import KnobError

DEFAULT = "default"


@dataclass(frozen=True)
class Family:
    """One strategy family.

    Attributes:
      name: what users type after `--strategy`.
      kinds: problem kinds (`Problem.kind`) it can lower.
      knobs: the frozen Knobs dataclass.
      entries: (problem or None, knobs) -> the library entries (matcher + codegen spec pairs)
        lowering that problem; None asks for entries covering every variant the family
        handles (used for arbitrary payload modules).
      targets: a dispatch (tools.applied.DispatchInfo: name, configured IR) -> whether this
        family is meant to lower it.
      check: (problem, knobs) -> None, raising KnobError for knobs invalid on that problem.
      fit: (problem, knobs) -> knobs: shrinks the *default* knobs to fit a small problem (a
        default tile larger than the dim). Values the user sets are never fitted: they are
        checked, and rejected if invalid.
      description: one line for `--help` and listings.
      space: problem -> {knob name: candidate values}: the declared search ranges `tdkit tune`
        explores (knobs not listed keep their fitted defaults). Combinations are pruned by
        `check` before anything compiles. A GPU family's takes (problem, target name).
      exact_entries: (problem, knobs) -> entries matching only that problem's exact sizes
        (`tdkit export` puts the tuned knobs of several problems in one library).
      configures: its entries only configure IREE's own pipeline (no codegen spec), so they
        can also be exported as an IREE tuning spec.
      masked_entries: (problem, knobs, codegen mask kind) -> entries for a raised attention
        chain whose mask the problem cannot express (e.g. a key-padding mask).
      device: "cpu" or "gpu": the targets it generates code for. A GPU family's knobs carry
        the target (`target` field, e.g. "cuda:sm_80"), set from `--target` by
        `parse_knobs`, so checks, entries and tuning records all know it.
    """

    name: str
    kinds: tuple[str, ...]
    knobs: type
    entries: Callable[[Any, Any], list[Any]]
    targets: Callable[[Any], bool]
    check: Callable[[Any, Any], None]
    description: str = ""
    fit: Callable[[Any, Any], Any] | None = None
    space: Callable[[Any], dict[str, tuple[Any, ...]]] | None = None
    exact_entries: Callable[[Any, Any], list[Any]] | None = None
    configures: bool = False
    masked_entries: Callable[[Any, Any, str], list[Any]] | None = None
    device: str = "cpu"

    def supports(self, target: str) -> bool:
        """Whether the family generates code for `--target target` ("cpu", "cuda:sm_80"...)."""
        return (target == "cpu") == (self.device == "cpu")

    def parse_knobs(self, values: Mapping[str, str] | None = None, problem: Any = None,
                    target: str | None = None) -> Any:
        """Knobs from `name=value` text pairs over the defaults (fitted to `problem`, if given;
        a GPU family's for `target`); KnobError for unknown names, values of the wrong type, or
        a target the family does not generate code for. Does not run `check()`."""
        if target is not None and not self.supports(target):
            raise KnobError(f"strategy {self.name} generates {self.device} code, not code for "
                            f"--target {target}")
        fields = {f.name: f for f in dataclasses.fields(self.knobs)}
        parsed: dict[str, Any] = {}
        for key, text in (values or {}).items():
            if key not in fields:
                raise KnobError(f"unknown knob {key!r} for strategy {self.name}; "
                                f"known knobs: {', '.join(fields)}")
            if key == "target":
                raise KnobError("choose the target with --target, not --knob target=")
            parsed[key] = _parse_value(key, text, fields[key])
        defaults = self.knobs()
        if target is not None and "target" in fields:
            defaults = dataclasses.replace(defaults, target=target)
        if problem is not None and self.fit is not None:
            defaults = self.fit(problem, defaults)
        return dataclasses.replace(defaults, **parsed)

    def library_text(self, problem: Any, knobs: Any) -> str:
        """Check the knobs against the problem, then build and print the verified library."""
        self.check(problem, knobs)
        return library_text(self.entries(problem, knobs))


def library_text(entries: list[Any]) -> str:
    """Print the verified transform library holding `entries`."""
    from tdkit.strategies.library import build_library

    with ir.Context(), ir.Location.unknown():
        module = build_library(entries)
        module.operation.verify()
        return str(module)


def _parse_value(key: str, text: str, field: dataclasses.Field) -> Any:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    kind = kind.replace(" ", "")
    try:
        if kind == "bool":
            lowered = text.lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return lowered in ("1", "true", "yes")
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind.startswith("tuple[int"):
            return tuple(int(p) for p in text.replace(",", "x").split("x") if p)
    except ValueError:
        raise KnobError(f"knob {key}={text!r}: expected a value of type {kind}") from None
    return text


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in _FAMILIES or family.name == DEFAULT:
        raise ValueError(f"strategy {family.name!r} registered twice")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Every registered family by name (importing the built-in ones on first use)."""
    from tdkit.strategies import builtin  # noqa: F401  (registers the built-in families)

    return dict(_FAMILIES)


def get(name: str) -> Family:
    fams = families()
    if name not in fams:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join([DEFAULT, *fams])}")
    return fams[name]


def for_kind(kind: str, target: str | None = None) -> list[Family]:
    """Families that can lower problems of `kind` (for `--target target`, if given)."""
    return [f for f in families().values()
            if kind in f.kinds and (target is None or f.supports(target))]
