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


def nearest_symbol_table(target: ir.Value) -> ir.Value:
    """`transform.util.get_nearest_symbol_table`: the module (symbol table) around `target`."""
    return _create("transform.util.get_nearest_symbol_table", [target], [any_op()]).result


def import_symbol(symbol: str, into: ir.Value) -> ir.Value:
    """`transform.util.import_symbol @symbol into %into if undefined`: copy a symbol of the
    transform library (e.g. a `util.func`) into the payload symbol table `into`."""
    return _create("transform.util.import_symbol", [into], [any_op()], {
        "symbol": ir.FlatSymbolRefAttr.get(symbol),
        "if_undefined": ir.UnitAttr.get()}).result


def inline_call(function: ir.Value, inputs: ir.Value, outputs: ir.Value,
                after: ir.Value) -> None:
    """`transform.util.cast_and_call inline_call %function(%inputs) -> %outputs after %after`:
    inline the body of a `util.func` after `after`, taking `inputs`, and replace the uses of
    `outputs` by what it returns (the replaced ops stay until dead-code elimination)."""
    op = ir.Operation.create(
        "transform.util.cast_and_call", results=[],
        operands=[after, inputs, outputs, function],
        attributes={"inline_call": ir.UnitAttr.get(), "insert_after": ir.UnitAttr.get(),
                    "operandSegmentSizes": ir.DenseI32ArrayAttr.get([1, 1, 1, 1])},
        regions=1)
    op.regions[0].blocks.append()


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


# --- Helpers added for the GPU softmax family ------------------------------------------------

def map_nested_forall_to_gpu_threads(func: ir.Value, workgroup_dims: Sequence[int], *,
                                     subgroup_size: int,
                                     sync_after_distribution: bool = True) -> None:
    """`transform.iree.map_nested_forall_to_gpu_threads %func workgroup_dims = [x, y, z]
    subgroup_size = N`: rewrite the bufferized `#gpu.thread<...>`-mapped foralls of the func
    into `gpu.thread_id` (predicated where a forall uses fewer threads than the workgroup),
    with a barrier after each unless `sync_after_distribution` is False. Also sets the func's
    translation_info to `no_pipeline` with this workgroup size and subgroup size."""
    if len(workgroup_dims) != 3:
        raise ValueError(f"workgroup_dims needs 3 entries, got {list(workgroup_dims)}")
    i64 = ir.IntegerType.get_signless(64)
    attrs = {"workgroup_dims": ir.DenseI64ArrayAttr.get([int(d) for d in workgroup_dims]),
             "subgroup_size": ir.IntegerAttr.get(i64, int(subgroup_size)),
             "sync_after_distribution": ir.BoolAttr.get(sync_after_distribution)}
    _create("transform.iree.map_nested_forall_to_gpu_threads", [func], attributes=attrs)


def vector_to_warp_execute_on_lane_0(if_op: ir.Value, warp_size: int) -> ir.Value:
    """`transform.iree.vector.to_warp_execute_on_lane_0 %if {warp_size = N}`: move the body of
    each `scf.if (threadIdx.x == 0)` into a `gpu.warp_execute_on_lane_0` over `warp_size`
    lanes (the workgroup's x size must be a multiple of it). Other ops are dropped from the
    result; returns the warp ops."""
    attrs = {"warp_size": ir.IntegerAttr.get(ir.IntegerType.get_signless(64), int(warp_size))}
    return _create("transform.iree.vector.to_warp_execute_on_lane_0", [if_op], [any_op()],
                   attrs).result


def vector_warp_distribute(func: ir.Value) -> None:
    """`transform.iree.vector.warp_distribute %func`: distribute the vector ops of every
    `gpu.warp_execute_on_lane_0` across its lanes (reductions become shuffle butterflies,
    across subgroups through shared memory); what cannot be distributed runs on lane 0."""
    _create("transform.iree.vector.warp_distribute", [func])


# --- Helpers added for the GPU attention family (IREE's GPU pipelines) ------------------------

def i64_array(values: Sequence[int]) -> ir.Attribute:
    """`[v0, v1, ...]`: an ArrayAttr of i64 IntegerAttrs (how IREE's GPU lowering_config spells
    tile-size lists)."""
    i64 = ir.IntegerType.get_signless(64)
    return ir.ArrayAttr.get([ir.IntegerAttr.get(i64, int(v)) for v in values])


def gpu_basis(counts: Sequence[int], mapping: Sequence[int]) -> ir.Attribute:
    """`[[counts...], [mapping...]]`: an IREE GPU basis (`subgroup_basis`, `lane_basis`)."""
    return ir.ArrayAttr.get([i64_array(counts), i64_array(mapping)])


def mma_layout(intrinsic: str, *, col_major: bool = False) -> ir.Attribute:
    """`#iree_gpu.mma_layout<NAME>` (or `#iree_gpu.virtual_mma_layout<NAME>` for IREE's virtual
    `VMFMA_*` intrinsics), with `col_major = true` when asked."""
    if not intrinsic.isidentifier():
        raise ValueError(f"not an MMA intrinsic name: {intrinsic!r}")
    kind = "virtual_mma_layout" if intrinsic.startswith("V") else "mma_layout"
    suffix = ", col_major = true" if col_major else ""
    return ir.Attribute.parse(f"#iree_gpu.{kind}<{intrinsic}{suffix}>")


def derived_thread_config() -> ir.Attribute:
    """`#iree_gpu.derived_thread_config`: the promotion type IREE's own GPU configurations use
    for promoted operands (copies distributed to threads as the pipeline derives)."""
    return ir.Attribute.parse("#iree_gpu.derived_thread_config")


def gpu_lowering_config(fields: dict[str, ir.Attribute]) -> ir.Attribute:
    """`#iree_gpu.lowering_config<{name = attr, ...}>` from already-built attributes (e.g.
    `workgroup`/`reduction` via `i64_array`, `subgroup_basis` via `gpu_basis`, `mma_kind`
    via `mma_layout`)."""
    return ir.Attribute.parse(f"#iree_gpu.lowering_config<{ir.DictAttr.get(fields)}>")


def promoted_operands(operands: Sequence[int]) -> dict[str, ir.Attribute]:
    """The `promote_operands` and matching `promotion_types` (derived thread config) entries of
    an `#iree_gpu.lowering_config` that promote `operands` to workgroup (shared) memory."""
    return {"promote_operands": i64_array(operands),
            "promotion_types": ir.ArrayAttr.get([derived_thread_config() for _ in operands])}


def translation_info_gpu_pipeline(pipeline: str, workgroup_size: Sequence[int],
                                  subgroup_size: int, *,
                                  denormal_fp32_preserve_sign: bool = True) -> ir.Attribute:
    """`#iree_codegen.translation_info<pipeline = #iree_gpu.pipeline<NAME> workgroup_size =
    [x, y, z] subgroup_size = N, {...}>`: one of IREE's own GPU pipelines (e.g.
    `VectorDistribute`). With `denormal_fp32_preserve_sign` (as IREE's attention configurations
    set) f32 denormals are flushed preserving the sign."""
    if not pipeline.isidentifier():
        raise ValueError(f"not a pipeline name: {pipeline!r}")
    sizes = [int(s) for s in workgroup_size] + [1] * (3 - len(workgroup_size))
    if len(sizes) != 3:
        raise ValueError(f"workgroup_size needs at most 3 entries, got {list(workgroup_size)}")
    config = ""
    if denormal_fp32_preserve_sign:
        config = (', {iree_codegen.denormal_fp_math_f32 = '
                  '#iree_codegen.denormal_fp_math<"preserve-sign">}')
    return ir.Attribute.parse(
        f"#iree_codegen.translation_info<pipeline = #iree_gpu.pipeline<{pipeline}> "
        f"workgroup_size = {_i64_list(sizes)} subgroup_size = {int(subgroup_size)}{config}>")


def attention_decomposition_config(qk_lowering_config: ir.Attribute,
                                   pv_lowering_config: ir.Attribute) -> ir.Attribute:
    """The `decomposition_config` of an online_attention for IREE's GPU pipelines:
    `{qk_attrs = {lowering_config = ...}, pv_attrs = {lowering_config = ...}}` (the lowering
    configs of the Q·Kᵀ and P·V contractions the decomposition creates)."""
    return ir.DictAttr.get({
        "qk_attrs": ir.DictAttr.get({"lowering_config": qk_lowering_config}),
        "pv_attrs": ir.DictAttr.get({"lowering_config": pv_lowering_config}),
    })
