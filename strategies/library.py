"""Assemble codegen specs and their matchers into one transform library for iree-compile.

The library is used as `--iree-codegen-transform-dialect-library=lib.mlir@__kernel_config`:
IREE runs `@__kernel_config` on every dispatch's func at kernel-configuration time; it walks
the func with `transform.foreach_match` and, for each matched op, annotates the func with
`translation_info = #iree_codegen.translation_info<pipeline =
#iree_codegen.transform_dialect_codegen codegen_spec = @<spec>>`, so IREE later runs that
spec as the dispatch's codegen. Dispatches nothing matches keep IREE's default pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from iree.compiler import ir
from iree.compiler.dialects import transform

from tdkit.strategies import iree_ops

ENTRY = "__kernel_config"
SPEC_PREFIX = "tdkit_"
# The discardable attribute an action without a codegen spec sets on the op it configures,
# naming the entry (`tdkit.strategy = "tdkit_..."`); `tdkit.tools.applied` looks for it.
MARKER_ATTR = "tdkit.strategy"
SELECT_SUFFIX = "_select"  # an entry's action is `@<spec_name>_select`
COMPILE_FLAGS_ATTR = "tdkit.compile_flags"


@dataclass(frozen=True)
class LibraryEntry:
    """One strategy in a library: a codegen spec and the matcher that selects it.

    `build_matcher(name)` and `build_spec(name)` emit the named sequences at the current
    insertion point; the matcher is named `matcher_name` (default `<spec_name>_match`).

    `build_action(name)`, when given, emits the action `foreach_match` runs on what the matcher
    yields, instead of the default one (annotate the func to run `@spec_name`), e.g. to set a
    configuration for one of IREE's own pipelines. An entry without a codegen spec sets
    `build_spec` to None; `spec_name` still names the entry (and must be unique and start with
    `tdkit_`), and its action should leave a marker in the configured IR that
    `tdkit.tools.applied` recognizes (see `strategy_marker`).

    `config` (e.g. the knobs) tells entries with the same spec name apart: repeated entries
    with equal configs are built once, different ones with one name are an error.

    `compile_flags`: iree-compile flags the entry needs (e.g. so IREE forms the dispatch it
    expects). The library lists the union of its entries' flags in the module attribute
    `tdkit.compile_flags` (`COMPILE_FLAGS_ATTR`), and tdkit's compiles pass them."""

    strategy: str
    spec_name: str
    build_matcher: Callable[[str], object]
    build_spec: Callable[[str], object] | None
    matcher_name: str = ""
    build_action: Callable[[str], object] | None = None
    config: object = None
    compile_flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.spec_name.startswith(SPEC_PREFIX):
            raise ValueError(f"spec name {self.spec_name!r} must start with {SPEC_PREFIX!r}")
        if not self.matcher_name:
            object.__setattr__(self, "matcher_name", f"{self.spec_name}_match")

    @property
    def action_name(self) -> str:
        return f"{self.spec_name}{SELECT_SUFFIX}"


def configuring_entry(strategy: str, spec_name: str, build_matcher: Callable[[str], object],
                      build_action: Callable[[str, str], object], config: object
                      ) -> LibraryEntry:
    """An entry without a codegen spec whose action configures one of IREE's own pipelines:
    `build_action(action_name, entry_name)` emits it; the entry name it gets is the one the
    action's marker must carry (as built: an exported copy carries its own suffix)."""
    return LibraryEntry(strategy=strategy, spec_name=spec_name, build_matcher=build_matcher,
                        build_spec=None,
                        build_action=lambda n: build_action(n, n.removesuffix(SELECT_SUFFIX)),
                        config=config)


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


def strategy_marker(target: ir.Value, spec_name: str) -> None:
    """`transform.annotate %target "tdkit.strategy" = "spec_name"`: leave the marker that tells
    applied-detection this op was configured by tdkit entry `spec_name`."""
    param = transform.ParamConstantOp(transform.AnyParamType.get(),
                                      ir.StringAttr.get(spec_name)).result
    transform.AnnotateOp(target, MARKER_ATTR, param=param)


def build_entry(entries: Sequence[LibraryEntry], *, tuning_spec: bool = False
                ) -> transform.NamedSequenceOp:
    """`@__kernel_config(%root {transform.consumed})`: one `foreach_match` over all entries,
    first matcher wins. As a tuning-spec entry point it also returns the updated root and
    carries `iree_codegen.tuning_spec_entrypoint`."""
    any_op = transform.AnyOpType.get()
    seq = transform.NamedSequenceOp(ENTRY, [any_op], [any_op] if tuning_spec else [],
                                    arg_attrs=[{"transform.consumed": ir.UnitAttr.get()}])
    if tuning_spec:
        seq.operation.attributes["iree_codegen.tuning_spec_entrypoint"] = ir.UnitAttr.get()
    with ir.InsertionPoint(seq.body):
        matchers = ir.ArrayAttr.get([ir.FlatSymbolRefAttr.get(e.matcher_name) for e in entries])
        actions = ir.ArrayAttr.get([ir.FlatSymbolRefAttr.get(e.action_name) for e in entries])
        root = transform.ForeachMatchOp(any_op, [], seq.bodyTarget, [], matchers, actions)
        transform.YieldOp([root.updated] if tuning_spec else [])
    return seq


def renamed(entry: LibraryEntry, suffix: str) -> LibraryEntry:
    """A copy of `entry` whose spec, matcher and action names end in `suffix` (several tuned
    copies of one strategy side by side in an exported library)."""
    name = entry.spec_name + suffix
    return dataclasses.replace(entry, spec_name=name, matcher_name=f"{name}_match")


def unique_entries(entries: Sequence[LibraryEntry]) -> list[LibraryEntry]:
    """Drop repeated entries (same spec name, strategy and config), keeping the first;
    ValueError for two different entries that claim the same spec name."""
    seen: dict[str, LibraryEntry] = {}
    for e in entries:
        prev = seen.get(e.spec_name)
        if prev is None:
            seen[e.spec_name] = e
        elif (prev.strategy, prev.config) != (e.strategy, e.config):
            raise ValueError(f"two different library entries are named {e.spec_name!r}")
    return list(seen.values())


def build_library(entries: Sequence[LibraryEntry], *, tuning_spec: bool = False) -> ir.Module:
    """A module `attributes {transform.with_named_sequence}` holding every entry's spec,
    matcher and action, and the `@__kernel_config` entry. Needs an active context/location.

    With `tuning_spec`, an IREE tuning spec (`--iree-codegen-tuning-spec-path`) instead:
    `iree_codegen.tuning_spec_with_default_entrypoint` on the module and an entry point that
    returns the root. Tuning specs only configure IREE's own pipelines, so entries with a
    codegen spec are refused (IREE would not find the spec at codegen time)."""
    if not entries:
        raise ValueError("a transform library needs at least one entry")
    entries = unique_entries(entries)
    if tuning_spec and any(e.build_spec is not None for e in entries):
        raise ValueError("a tuning spec can only hold configuring entries, not codegen specs")
    module = ir.Module.create()
    module.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
    flags = list(dict.fromkeys(f for e in entries for f in e.compile_flags))
    if flags:
        module.operation.attributes[COMPILE_FLAGS_ATTR] = ir.ArrayAttr.get(
            [ir.StringAttr.get(f) for f in flags])
    if tuning_spec:
        module.operation.attributes["iree_codegen.tuning_spec_with_default_entrypoint"] = \
            ir.UnitAttr.get()
    with ir.InsertionPoint(module.body):
        for e in entries:
            if e.build_spec is not None:
                e.build_spec(e.spec_name)
            e.build_matcher(e.matcher_name)
            if e.build_action is not None:
                e.build_action(e.action_name)
            else:
                build_action(e.action_name, e.spec_name)
        build_entry(entries, tuning_spec=tuning_spec)
    return module
