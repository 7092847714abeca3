"""Assemble codegen specs and their matchers into one transform library for iree-compile.

The library is used as `--iree-codegen-transform-dialect-library=lib.mlir@__kernel_config`:
IREE runs `@__kernel_config` on every dispatch's func at kernel-configuration time; it walks
the func with `transform.foreach_match` and, for each matched op, annotates the func with
`translation_info = #iree_codegen.translation_info<pipeline =
#iree_codegen.transform_dialect_codegen codegen_spec = @<spec>>`, so IREE later runs that
spec as the dispatch's codegen. Dispatches nothing matches keep IREE's default pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from iree.compiler import ir
from iree.compiler.dialects import transform

from tdkit.strategies import iree_ops

ENTRY = "__kernel_config"
SPEC_PREFIX = "tdkit_"


@dataclass(frozen=True)
class LibraryEntry:
    """One strategy in a library: a codegen spec and the matcher that selects it.

    `build_matcher(name)` and `build_spec(name)` emit the named sequences at the current
    insertion point; the matcher is named `matcher_name` (default `<spec_name>_match`)."""

    strategy: str
    spec_name: str
    build_matcher: Callable[[str], object]
    build_spec: Callable[[str], object]
    matcher_name: str = ""

    def __post_init__(self) -> None:
        if not self.spec_name.startswith(SPEC_PREFIX):
            raise ValueError(f"spec name {self.spec_name!r} must start with {SPEC_PREFIX!r}")
        if not self.matcher_name:
            object.__setattr__(self, "matcher_name", f"{self.spec_name}_match")

    @property
    def action_name(self) -> str:
        return f"{self.spec_name}_select"


def build_action(name: str, spec_name: str) -> transform.NamedSequenceOp:
    """`@name(%op {transform.readonly})`: annotate the func holding `%op` with the
    translation_info that runs `@spec_name` as its codegen."""
    seq = transform.NamedSequenceOp(name, [transform.AnyOpType.get()], [],
                                    arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        func = transform.GetParentOp(transform.AnyOpType.get(), seq.bodyTarget,
                                     op_name="func.func").result
        iree_ops.annotate_translation_info(func, iree_ops.translation_info_codegen_spec(spec_name))
        transform.YieldOp()
    return seq


def build_entry(entries: Sequence[LibraryEntry]) -> transform.NamedSequenceOp:
    """`@__kernel_config(%root {transform.consumed})`: one `foreach_match` over all entries,
    first matcher wins."""
    any_op = transform.AnyOpType.get()
    seq = transform.NamedSequenceOp(ENTRY, [any_op], [],
                                    arg_attrs=[{"transform.consumed": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        matchers = ir.ArrayAttr.get([ir.FlatSymbolRefAttr.get(e.matcher_name) for e in entries])
        actions = ir.ArrayAttr.get([ir.FlatSymbolRefAttr.get(e.action_name) for e in entries])
        transform.ForeachMatchOp(any_op, [], seq.bodyTarget, [], matchers, actions)
        transform.YieldOp()
    return seq


def build_library(entries: Sequence[LibraryEntry]) -> ir.Module:
    """A module `attributes {transform.with_named_sequence}` holding every entry's spec,
    matcher and action, and the `@__kernel_config` entry. Needs an active context/location."""
    if not entries:
        raise ValueError("a transform library needs at least one entry")
    names = [e.spec_name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate spec names in library: {names}")
    module = ir.Module.create()
    module.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
    with ir.InsertionPoint(module.body):
        for e in entries:
            e.build_spec(e.spec_name)
            e.build_matcher(e.matcher_name)
            build_action(e.action_name, e.spec_name)
        build_entry(entries)
    return module
