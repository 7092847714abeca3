"""Typed builders for IREE transform ops that have no Python builder in iree-base-compiler.

IREE 3.13 ships Python builders only for its match ops; its codegen transform ops
(`transform.iree.*`, `transform.apply_patterns.iree.*`) must be created generically. Each
helper here creates one op with `ir.Operation.create`, at the caller's insertion point, and
returns the handle(s) it produces, so strategies read like the list of steps they perform.
Op names, operands and attributes follow IREE's `*ExtensionsOps.td` definitions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from iree.compiler import ir
from iree.compiler.dialects import transform


def any_op() -> ir.Type:
    """`!transform.any_op`."""
    return transform.AnyOpType.get()


def _create(name: str, operands: Sequence[ir.Value] = (), results: Sequence[ir.Type] = (),
            attributes: dict[str, ir.Attribute] | None = None) -> ir.Operation:
    return ir.Operation.create(name, results=list(results), operands=list(operands),
                               attributes=attributes or {})


# --- Ops that transform payload IR -----------------------------------------------------------

def bufferize(target: ir.Value, *, target_gpu: bool = False) -> ir.Value:
    """`transform.iree.bufferize`: one-shot bufferization with IREE's hooks. Consumes `target`
    (a func or module handle) and returns a handle to the bufferized op."""
    attrs = {"target_gpu": ir.UnitAttr.get()} if target_gpu else {}
    return _create("transform.iree.bufferize", [target], [target.type], attrs).result


def eliminate_empty_tensors(target: ir.Value) -> None:
    """`transform.iree.eliminate_empty_tensors`: replace `tensor.empty` by the destination
    tensors they end up written into (run on the func handle, before bufferization)."""
    _create("transform.iree.eliminate_empty_tensors", [target])


def forall_to_workgroup(func: ir.Value) -> None:
    """`transform.iree.forall_to_workgroup`: rewrite the unique top-level, bufferized
    `scf.forall` (mapped to `#gpu.block<x/y/z>`) of each func into workgroup ids and counts.
    Fails if there is no unique top-level forall."""
    _create("transform.iree.forall_to_workgroup", [func])


def populate_workgroup_count_region_using_num_threads_slice(forall: ir.Value) -> None:
    """`transform.iree.populate_workgroup_count_region_using_num_threads_slice`: make the
    dispatch's workgroup count the forall's number of iterations."""
    _create("transform.iree.populate_workgroup_count_region_using_num_threads_slice", [forall])


def apply_licm(target: ir.Value) -> None:
    """`transform.iree.apply_licm`: loop-invariant code motion and single-iteration loop
    promotion on every func within `target`."""
    _create("transform.iree.apply_licm", [target])


def hoist_static_alloc(func: ir.Value) -> None:
    """`transform.iree.hoist_static_alloc`: hoist statically sized allocations to the entry
    block of the func."""
    _create("transform.iree.hoist_static_alloc", [func])


def decompose_aggregate_op(target: ir.Value, num_results: int = 0) -> list[ir.Value]:
    """`transform.iree.decompose_aggregate_op` (e.g. online_attention into linalg ops)."""
    return list(_create("transform.iree.decompose_aggregate_op", [target],
                        [any_op()] * num_results).results)


def convert_to_online_attention(target: ir.Value, num_results: int = 0) -> list[ir.Value]:
    """`transform.iree.convert_to_online_attention`."""
    return list(_create("transform.iree.convert_to_online_attention", [target],
                        [any_op()] * num_results).results)


def share_forall_operands(forall: ir.Value, share_operands: Sequence[int] = ()) -> ir.Value:
    """`transform.iree.share_forall_operands`: make the forall's shared_outs alias its inputs
    so bufferization does not copy them. Consumes `forall`, returns the new handle."""
    attrs = {}
    if share_operands:
        attrs["share_operands"] = ir.DenseI64ArrayAttr.get(list(share_operands))
    return _create("transform.iree.share_forall_operands", [forall], [forall.type], attrs).result


# --- Pattern sets, used inside `transform.apply_patterns` regions ----------------------------

def _pattern(name: str) -> Callable[[], None]:
    def build() -> None:
        _create(f"transform.apply_patterns.iree.{name}")

    build.__name__ = name
    build.__doc__ = f"`transform.apply_patterns.iree.{name}` (call inside apply_patterns)."
    return build


fold_fill_into_pad = _pattern("fold_fill_into_pad")
fold_reshape_into_tensor_hal_interface = _pattern("fold_reshape_into_tensor_hal_interface")
fold_tensor_slice_into_transfer = _pattern("fold_tensor_slice_into_transfer")
bubble_collapse = _pattern("bubble_collapse")
bubble_expand = _pattern("bubble_expand")
linalg_elementwise_greedy_fusion = _pattern("linalg_elementwise_greedy_fusion")
hoist_forall_from_for = _pattern("hoist_forall_from_for")


def upstream_pattern(name: str, **attrs: ir.Attribute) -> None:
    """Any upstream `transform.apply_patterns.<name>` op without operands, e.g.
    `upstream_pattern("vector.lower_multi_reduction", lowering_strategy=...)`: for the few
    pattern ops whose Python builders are missing or awkward."""
    _create(f"transform.apply_patterns.{name}", attributes=attrs)


# --- Attributes ------------------------------------------------------------------------------

def translation_info_no_pipeline() -> ir.Attribute:
    """`#iree_codegen.translation_info<pipeline = #iree_codegen.no_pipeline>`: the strategy
    lowered everything itself."""
    return ir.Attribute.parse(
        "#iree_codegen.translation_info<pipeline = #iree_codegen.no_pipeline>")


def translation_info_codegen_spec(spec_name: str) -> ir.Attribute:
    """`#iree_codegen.translation_info<pipeline = #iree_codegen.transform_dialect_codegen
    codegen_spec = @spec_name>`: run the named sequence `spec_name` as the dispatch's codegen."""
    return ir.Attribute.parse(
        "#iree_codegen.translation_info<pipeline = #iree_codegen.transform_dialect_codegen "
        f"codegen_spec = @{spec_name}>")


def annotate_translation_info(func: ir.Value, info: ir.Attribute) -> None:
    """`transform.annotate %func "translation_info" = <info>` via a `transform.param.constant`."""
    param = transform.ParamConstantOp(transform.AnyParamType.get(), info).result
    transform.AnnotateOp(func, "translation_info", param=param)


# --- Helpers added for the attention families ------------------------------------------------

def annotate(target: ir.Value, name: str, attr: ir.Attribute) -> None:
    """`transform.annotate %target "name" = <attr>` via a `transform.param.constant`."""
    param = transform.ParamConstantOp(transform.AnyParamType.get(), attr).result
    transform.AnnotateOp(target, name, param=param)


def _i64_list(values: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def cpu_lowering_config(**levels: Sequence[int]) -> ir.Attribute:
    """`#iree_cpu.lowering_config<level = [sizes], ...>` for IREE's CPU tiling levels
    (`distribution`, `vector_common_parallel`, `vector_reduction`, ...), in the given order."""
    if not levels:
        raise ValueError("a lowering_config needs at least one tiling level")
    body = ", ".join(f"{level} = {_i64_list(sizes)}" for level, sizes in levels.items())
    return ir.Attribute.parse(f"#iree_cpu.lowering_config<{body}>")


def translation_info_cpu_pipeline(pipeline: str) -> ir.Attribute:
    """`#iree_codegen.translation_info<pipeline = #iree_cpu.pipeline<NAME>>`: one of IREE's
    own CPU pipelines (e.g. `LinalgExtTileAndVectorize`)."""
    if not pipeline.isidentifier():
        raise ValueError(f"not a pipeline name: {pipeline!r}")
    return ir.Attribute.parse(
        f"#iree_codegen.translation_info<pipeline = #iree_cpu.pipeline<{pipeline}>>")


def compilation_info(lowering_config: ir.Attribute, translation_info: ir.Attribute
                     ) -> ir.Attribute:
    """`#iree_codegen.compilation_info<lowering_config = ..., translation_info = ...>`."""
    return ir.Attribute.parse(
        f"#iree_codegen.compilation_info<lowering_config = {lowering_config}, "
        f"translation_info = {translation_info}>")


def decomposition_config(*, use_exp2: bool) -> ir.Attribute:
    """The `decomposition_config` dictionary of an (online_)attention op: `{use_exp2 = ...}`
    (False makes IREE's decomposition use `exp` and leave the mask unscaled)."""
    return ir.DictAttr.get({"use_exp2": ir.BoolAttr.get(use_exp2)})


def apply_registered_pass(target: ir.Value, pass_name: str,
                          options: dict[str, Any] | None = None) -> ir.Value:
    """`transform.apply_registered_pass "pass_name" with options = {...} to %target`: run one
    registered pass on the payload op. Consumes `target`; returns the new handle."""
    return transform.ApplyRegisteredPassOp(any_op(), target, pass_name,
                                           options=dict(options or {})).result
