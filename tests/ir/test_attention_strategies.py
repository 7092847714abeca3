"""FileCheck tests of the attention matchers and the flash and config libraries, built and
verified in-process (no iree-compile), and of both families' knob checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
from iree.compiler import ir

from tdkit.matchers.attention import (
    CODEGEN_MASK_BOOL,
    CODEGEN_MASK_FLOAT,
    MASK_BROADCAST,
    MASK_FULL,
    MASK_NONE,
    CodegenPredicate,
    attention_indexing_maps,
    build_attention_matcher,
    build_codegen_matcher,
    codegen_predicates,
)
from tdkit.matchers.attention_problem import Attention
from tdkit.matchers.dtypes import DType
from tdkit.strategies import attention_config, attention_flash, registry
from tdkit.strategies.attention_config import ConfigKnobs
from tdkit.strategies.attention_flash import FlashKnobs
from tdkit.strategies.base import KnobError
from tdkit.strategies.library import build_library


def _module(build) -> str:
    with ir.Context(), ir.Location.unknown():
        module = ir.Module.create()
        module.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
        with ir.InsertionPoint(module.body):
            build()
        module.operation.verify()
        return str(module)


def _library(entries) -> str:
    with ir.Context(), ir.Location.unknown():
        module = build_library(entries)
        module.operation.verify()
        return str(module)


# --- Matchers -----------------------------------------------------------------------------------

def test_codegen_matcher_walks_store_normalize_attention_fills(filecheck) -> None:
    text = _module(lambda: build_codegen_matcher(
        "m", CodegenPredicate(dtype=DType.F16, head_dim=64, value_dim=32, min_k2=16)))
    filecheck(text, """
CHECK-LABEL: transform.named_sequence @m(
CHECK-SAME: %[[STORE:.*]]: !transform.any_op {transform.readonly}) -> !transform.any_op
CHECK: transform.match.operation_name %[[STORE]]
CHECK-SAME: ["iree_codegen.store_to_buffer", "iree_tensor_ext.dispatch.tensor.store"]
CHECK: %[[NORM:.*]] = transform.get_producer_of_operand %[[STORE]][0]
CHECK: transform.match.operation_name %[[NORM]] ["linalg.generic"]
CHECK: %[[OA:.*]] = transform.get_producer_of_operand %[[NORM]][1]
CHECK: transform.match.operation_name %[[OA]] ["iree_linalg_ext.online_attention"]
CHECK: %[[SUM:.*]] = transform.get_producer_of_operand %[[NORM]][0]
CHECK: transform.match.operation_name %[[SUM]] ["iree_linalg_ext.online_attention"]
CHECK: %[[F0:.*]] = transform.get_producer_of_operand %[[OA]][4]
CHECK: transform.match.operation_name %[[F0]] ["linalg.fill"]
CHECK: %[[F1:.*]] = transform.get_producer_of_operand %[[OA]][5]
CHECK: %[[F2:.*]] = transform.get_producer_of_operand %[[OA]][6]
CHECK: %[[Q:.*]] = transform.get_operand %[[OA]][0]
CHECK: transform.iree.match.cast_compatible_type %[[Q]] = tensor<?x?x?xf16>
CHECK: transform.iree.match.dim_bounds %[[Q]][2], umin = 64, umax = 64
CHECK: %[[K:.*]] = transform.get_operand %[[OA]][1]
CHECK: transform.iree.match.dim_bounds %[[K]][1], umin = 16, none
CHECK: %[[V:.*]] = transform.get_operand %[[OA]][2]
CHECK: transform.iree.match.dim_bounds %[[V]][2], umin = 32, umax = 32
CHECK: %{{.*}}, %{{.*}}, %[[N:.*]], %[[K1:.*]], %{{.*}} = transform.iree.match.online_attention
CHECK-SAME: %[[OA]], query_type = f16, key_type = f16, value_type = f16, scale_type = f16,
CHECK-SAME: output_type = f32, max_type = f32, sum_type = f32
CHECK: transform.iree.match.dims_equal %[[N]], [32]
CHECK: transform.iree.match.dims_equal %[[K1]], [64]
CHECK: transform.yield %[[OA]]
""")


def test_codegen_matcher_masked_unbatched(filecheck) -> None:
    text = _module(lambda: [
        build_codegen_matcher("float_mask", CodegenPredicate(
            batched=False, mask=CODEGEN_MASK_FLOAT, dtype=DType.BF16)),
        build_codegen_matcher("bool_mask", CodegenPredicate(mask=CODEGEN_MASK_BOOL,
                                                            dtype=DType.F32))])
    filecheck(text, """
CHECK-LABEL: transform.named_sequence @float_mask(
CHECK: %[[OA:.*]] = transform.get_producer_of_operand %{{.*}}[1]
CHECK: transform.get_producer_of_operand %[[OA]][5]
CHECK: transform.get_producer_of_operand %[[OA]][6]
CHECK: transform.get_producer_of_operand %[[OA]][7]
CHECK: %[[Q:.*]] = transform.get_operand %[[OA]][0]
CHECK: transform.iree.match.cast_compatible_type %[[Q]] = tensor<?x?xbf16>
CHECK: %[[MASK:.*]] = transform.get_operand %[[OA]][4]
CHECK: transform.iree.match.cast_compatible_type %[[MASK]] = tensor<?x?xbf16>
CHECK-NOT: transform.iree.match.online_attention
CHECK: transform.yield %[[OA]]
CHECK-LABEL: transform.named_sequence @bool_mask(
CHECK: %[[OA2:.*]] = transform.get_producer_of_operand %{{.*}}[1]
CHECK: %[[MASK2:.*]] = transform.get_operand %[[OA2]][4]
CHECK: transform.iree.match.cast_compatible_type %[[MASK2]] = tensor<?x?xi8>
CHECK: transform.yield %[[OA2]]
""")


def test_codegen_predicates_cover_every_variant() -> None:
    preds = codegen_predicates()
    assert len(preds) == 4 * 2 * 3
    assert preds[0].mask == "none" and preds[0].batched
    assert {p.mask for p in preds} == {"none", "float", "bool", "keys"}
    with pytest.raises(ValueError, match="unknown mask kind"):
        CodegenPredicate(mask="additive")


def test_attention_matcher_before_dispatch_formation(filecheck) -> None:
    text = _module(lambda: [
        build_attention_matcher("plain", batch_rank=2, dtype=DType.F32),
        build_attention_matcher("full", batch_rank=1, dtype=DType.F16, mask=MASK_FULL,
                                sizes={"m": [128], "k2": [256]}),
        build_attention_matcher("causal", batch_rank=1, dtype=DType.BF16,
                                mask=MASK_BROADCAST)])
    filecheck(text, """
CHECK-DAG: #[[Q2:.*]] = affine_map<(d0, d1, d2, d3, d4, d5) -> (d0, d1, d2, d3)>
CHECK-DAG: #[[K2:.*]] = affine_map<(d0, d1, d2, d3, d4, d5) -> (d0, d1, d4, d3)>
CHECK-DAG: #[[MFULL:.*]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d3)>
CHECK-DAG: #[[MBCAST:.*]] = affine_map<(d0, d1, d2, d3, d4) -> (d1, d3)>
CHECK-LABEL: transform.named_sequence @plain(
CHECK: transform.match.operation_name %{{.*}} ["iree_linalg_ext.attention"]
CHECK: transform.iree.match.attention %{{.*}}, query_type = f32, key_type = f32,
CHECK-SAME: value_type = f32, output_type = f32, indexing_maps = [#[[Q2]], #[[K2]],
CHECK-LABEL: transform.named_sequence @full(
CHECK: %{{.*}}, %[[M:.*]], %{{.*}}, %{{.*}}, %[[KK:.*]] = transform.iree.match.attention
CHECK-SAME: query_type = f16, {{.*}} #[[MFULL]]
CHECK: transform.iree.match.dims_equal %[[M]], [128]
CHECK: transform.iree.match.dims_equal %[[KK]], [256]
CHECK-LABEL: transform.named_sequence @causal(
CHECK: transform.iree.match.attention {{.*}} query_type = bf16, {{.*}} #[[MBCAST]]
""")


def test_attention_indexing_maps_match_the_payload() -> None:
    with ir.Context():
        maps = attention_indexing_maps(2, MASK_NONE)
        assert [str(m) for m in maps] == [
            "(d0, d1, d2, d3, d4, d5) -> (d0, d1, d2, d3)",
            "(d0, d1, d2, d3, d4, d5) -> (d0, d1, d4, d3)",
            "(d0, d1, d2, d3, d4, d5) -> (d0, d1, d4, d5)",
            "(d0, d1, d2, d3, d4, d5) -> ()",
            "(d0, d1, d2, d3, d4, d5) -> (d0, d1, d2, d5)"]
        with pytest.raises(ValueError, match="unknown mask form"):
            attention_indexing_maps(1, "sideways")


# --- The flash library --------------------------------------------------------------------------

def flash_library(problem: Attention, **knobs) -> str:
    family = registry.get("flash")
    return family.library_text(problem, FlashKnobs(**knobs))


def test_flash_spec_steps(filecheck) -> None:
    text = flash_library(Attention((2,), 100, 300, 64, mask=True))
    filecheck(text, """
CHECK-DAG: #[[DIST:.*]] = #iree_cpu.lowering_config<distribution = [1, 16, 0, 0, 0]>
CHECK-DAG: #[[NONE:.*]] = #iree_codegen.translation_info<pipeline = #iree_codegen.no_pipeline>
CHECK-DAG: #[[SPEC:.*]] = #iree_codegen.translation_info<pipeline =
CHECK-SAME: codegen_spec = @tdkit_attention_flash_b_floatmask_f32>
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_floatmask_f32(
CHECK-SAME: {transform.readonly}
CHECK: %[[FUNC:.*]] = transform.split_handle
CHECK: %[[OA:.*]] = transform.split_handle
CHECK: transform.annotate %[[OA]] "lowering_config"
CHECK: %[[DEC:.*]] = transform.param.constant {use_exp2 = false}
CHECK: transform.annotate %[[OA]] "decomposition_config" = %[[DEC]]
CHECK: %[[F2:.*]] = transform.apply_registered_pass
CHECK-SAME: "iree-codegen-tile-and-distribute-to-workgroups-using-forall-op" to %[[FUNC]]
CHECK: transform.structured.pad_tiling_interface %{{.*}} to padding_sizes [1, 16, 0, 0, 0]
CHECK-SAME: pad_to_multiple_of padding_values = [{{.*}}, -3.40282347E+38 : f32, 0.0{{.*}} : f32]
CHECK: %{{.*}}, %[[LOOP:.*]] = transform.structured.tile_using_for
CHECK-SAME: tile_sizes [0, 0, 0, 16, 0]
CHECK: transform.sequence %[[LOOP]] : !transform.any_op failures(suppress)
CHECK: transform.loop.peel
CHECK: transform.foreach
CHECK: transform.match.operation_name %{{.*}} ["tensor.pad"]
CHECK: transform.structured.fuse_into_containing_op
CHECK: transform.foreach
CHECK: transform.iree.decompose_aggregate_op
CHECK: %[[G:.*]]:11 = transform.split_handle
CHECK: transform.structured.interchange %[[G]]#0 iterator_interchange = [0, 2, 1]
CHECK: transform.structured.interchange %[[G]]#1 iterator_interchange = [0, 2, 3, 1]
CHECK: transform.structured.interchange %[[G]]#10 iterator_interchange = [0, 2, 3, 1]
CHECK: %[[VEC:.*]] = transform.structured.vectorize_children_and_apply_patterns %[[F2]]
CHECK-SAME: <vectorize_padding, disable_multi_reduction_to_contract_patterns,
CHECK-SAME: disable_transfer_permutation_map_lowering_patterns>
CHECK: transform.loop.hoist_loop_invariant_subsets
CHECK: transform.apply_patterns.vector.transfer_permutation_patterns
CHECK: transform.iree.apply_licm %[[VEC]]
CHECK: %[[UPD:.*]] = transform.foreach_match in %[[VEC]]
CHECK-NEXT: @{{.*}}_exp0_match -> @{{.*}}_exp0_scalef_call
CHECK: transform.iree.eliminate_empty_tensors %[[UPD]]
CHECK: %[[BUF:.*]] = transform.iree.bufferize %[[UPD]]
CHECK: %[[HOIST:.*]] = transform.structured.hoist_redundant_vector_transfers %[[BUF]]
CHECK-NOT: innerreduction
CHECK: transform.apply_patterns.vector.multi_reduction_flattening
CHECK-NOT: innerreduction
CHECK: transform.apply_patterns.vector.lower_transfer
CHECK: transform.annotate %[[HOIST]] "translation_info"
CHECK-NEXT: transform.util.get_nearest_symbol_table %[[HOIST]]
CHECK-NEXT: transform.apply_registered_pass "symbol-dce"
CHECK-NEXT: transform.yield
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_floatmask_f32_match(
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_floatmask_f32_select(
CHECK: transform.get_parent_op %{{.*}} <op_name = "func.func">
CHECK: transform.annotate %{{.*}} "translation_info"
CHECK-LABEL: transform.named_sequence @__kernel_config(
CHECK-SAME: {transform.consumed}
CHECK: transform.foreach_match in %{{.*}}
CHECK-NEXT: @tdkit_attention_flash_b_floatmask_f32_match ->
CHECK-SAME: @tdkit_attention_flash_b_floatmask_f32_select
""")


def test_flash_unbatched_f16_interchanges_drop_the_batch_loop(filecheck) -> None:
    # Batch 1: rank-4 online_attention; f16 adds the truncation of P (12 generics).
    text = flash_library(Attention((1,), 64, 64, 32, dtype=DType.F16))
    filecheck(text, """
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_nb_f16(
CHECK: pad_tiling_interface %{{.*}} to padding_sizes [16, 0, 0, 0]
CHECK: tile_using_for %{{.*}} tile_sizes [0, 0, 16, 0]
CHECK-NOT: fuse_into_containing_op
CHECK: %[[G:.*]]:11 = transform.split_handle
CHECK: transform.structured.interchange %[[G]]#0 iterator_interchange = [1, 0]
CHECK: transform.structured.interchange %[[G]]#1 iterator_interchange = [1, 2, 0]
CHECK: transform.structured.interchange %[[G]]#8 iterator_interchange = [1, 0]
CHECK: transform.structured.interchange %[[G]]#10 iterator_interchange = [1, 2, 0]
""")


def test_flash_value_tiles_fuse_the_rescale_into_pv(filecheck) -> None:
    # N = 64, value_tile = 8: P·V is tiled along N with its producers (the accumulator
    # rescale) fused, the tile loop unrolled, and the key loops' generics vectorized before
    # the rest; then the accumulator tiles' extract/insert_slice pairs are hoisted out of the
    # key loops (so non-square rows x value_tile tiles are carried too).
    text = flash_library(Attention((2,), 64, 64, 64))
    filecheck(text, """
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_f32(
CHECK: transform.iree.decompose_aggregate_op
CHECK: %[[G:.*]]:10 = transform.split_handle
CHECK: %[[PV:.*]] = transform.structured.interchange %[[G]]#9 iterator_interchange = [0, 2, 3, 1]
CHECK: %{{.*}}, %[[TILES:.*]] = transform.structured.fuse %[[PV]] tile_sizes [0, 0, 8, 0]
CHECK-NEXT: transform.loop.unroll_full %[[TILES]]
CHECK: %[[LOOPS:.*]] = transform.structured.match ops{["scf.for"]}
CHECK: transform.foreach %[[LOOPS]]
CHECK: %[[GEN:.*]] = transform.structured.match ops{["linalg.generic"]}
CHECK-NEXT: transform.structured.vectorize %[[GEN]]
CHECK: %[[LOOPS2:.*]] = transform.structured.match ops{["scf.for"]}
CHECK: transform.foreach %[[LOOPS2]]
CHECK-NEXT: ^bb0(%[[L:.*]]: !transform.any_op):
CHECK-NEXT: transform.loop.hoist_loop_invariant_subsets %[[L]]
CHECK: transform.structured.vectorize_children_and_apply_patterns
""")


def test_flash_splits_the_running_max_of_full_key_tiles(filecheck) -> None:
    # The interchanged max generic (the 4th of the decomposition) is marked; after cleanup
    # the marked generics over a full 16 x 16 score tile are split into 4 partial maxima.
    text = flash_library(Attention((2,), 64, 64, 64))
    filecheck(text, """
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_f32(
CHECK: %[[G:.*]]:10 = transform.split_handle
CHECK: %[[MAX:.*]] = transform.structured.interchange %[[G]]#3 iterator_interchange = [0, 2, 1]
CHECK: transform.annotate %[[MAX]] "tdkit.split_max"
CHECK: transform.apply_cse
CHECK: %[[FULL:.*]] = transform.structured.match ops{["linalg.generic"]}
CHECK-SAME: attributes {tdkit.split_max}
CHECK-SAME: filter_operand_types = [tensor<1x16x16xf32>, tensor<1x16xf32>]
CHECK: transform.foreach %[[FULL]]
CHECK: transform.structured.split_reduction %{{.*}} <split_factor = 4, insert_split_dimension = 1>
CHECK: transform.structured.vectorize_children_and_apply_patterns
""")


@pytest.mark.parametrize(("problem", "knobs"), [
    (Attention((2,), 64, 64, 64), {"max_split": 0}),                # off
    (Attention((2,), 64, 64, 64), {"key_tile": 1, "rows": 16}),     # nothing to split
    (Attention((2,), 64, 64, 64), {"layout": "rows", "rows": 8}),   # mlanes only
])
def test_flash_max_split_only_where_it_applies(problem, knobs) -> None:
    text = flash_library(problem, **knobs)
    assert "split_reduction" not in text
    assert "tdkit.split_max" not in text


def test_flash_max_split_is_capped_by_the_key_tile() -> None:
    text = flash_library(Attention((2,), 64, 64, 64), key_tile=2)
    assert "<split_factor = 2, insert_split_dimension = 1>" in text


@pytest.mark.parametrize(("problem", "knobs"), [
    (Attention((2,), 64, 64, 64), {"value_tile": 0}),           # off
    (Attention((2,), 64, 64, 8), {}),                           # N = value_tile: one tile
    (Attention((2,), 64, 64, 64), {"layout": "rows", "rows": 8}),  # mlanes only
])
def test_flash_value_tiles_only_when_they_split_n(problem, knobs) -> None:
    text = flash_library(problem, **knobs)
    assert "transform.structured.fuse " not in text


def test_flash_library_for_any_payload_keeps_the_whole_accumulator() -> None:
    # N unknown: no value tiles (a tile must divide N).
    text = _library(attention_flash.library_entries(None, FlashKnobs()))
    assert "transform.structured.fuse " not in text


def test_flash_rows_layout_with_iree_lowering(filecheck) -> None:
    text = flash_library(Attention((4,), 128, 128, 64), rows=8, layout="rows", lowering="iree")
    filecheck(text, """
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_f32(
CHECK-NOT: transform.structured.interchange
CHECK: transform.structured.vectorize_children_and_apply_patterns %{{.*}} <vectorize_padding>
CHECK: apply_registered_pass "iree-codegen-drop-vector-unit-dims"
CHECK: apply_registered_pass "iree-llvmcpu-virtual-vector-lowering"
CHECK-SAME: with options = {"split-transfers" = "linalg-copy"}
CHECK: apply_registered_pass "iree-llvmcpu-vector-transpose-lowering"
CHECK-SAME: with options = {"lower-vector-transpose-to-avx2" = true}
CHECK: apply_registered_pass "iree-llvmcpu-vector-shape-cast-lowering"
""")


def test_flash_exp2_knob(filecheck) -> None:
    text = flash_library(Attention((2,), 64, 64, 64), exp2=True)
    filecheck(text, "CHECK: transform.param.constant {use_exp2 = true}\n")


def test_flash_library_for_any_payload_covers_every_variant() -> None:
    entries = attention_flash.library_entries(None, FlashKnobs())
    names = {e.spec_name for e in entries}
    assert len(names) == len(entries) == 24  # 4 mask kinds x batched or not x 3 dtypes
    assert "tdkit_attention_flash_b_keysmask_f32" in names
    assert "tdkit_attention_flash_nb_boolmask_bf16" in names
    _library(entries)  # verifies


# --- The config library -------------------------------------------------------------------------

def test_config_entry_annotates_compilation_info_and_marker(filecheck) -> None:
    family = registry.get("config")
    text = family.library_text(Attention((2, 3), 100, 300, 64, causal=True), ConfigKnobs())
    filecheck(text, """
CHECK-DAG: #[[CFG:.*]] = #iree_cpu.lowering_config<distribution = [1, 16, 0, 0, 0],
CHECK-SAME: vector_common_parallel = [1, 8, 0, 0, 64], vector_reduction = [0, 0, 0, 8, 0]>
CHECK-DAG: #[[TI:.*]] = #iree_codegen.translation_info<
CHECK-SAME: pipeline = #iree_cpu.pipeline<LinalgExtTileAndVectorize>>
CHECK-DAG: #[[CI:.*]] = #iree_codegen.compilation_info<
CHECK-SAME: lowering_config = #[[CFG]], translation_info = #[[TI]]>
CHECK-NOT: no_pipeline
CHECK-LABEL: transform.named_sequence @tdkit_attention_config_b_boolmask_f32_match(
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = tensor<?x?xi8>
CHECK-LABEL: transform.named_sequence @tdkit_attention_config_b_boolmask_f32_select(
CHECK-SAME: %[[OP:.*]]: !transform.any_op {transform.readonly})
CHECK: %[[P:.*]] = transform.param.constant #[[CI]]
CHECK: transform.annotate %[[OP]] "compilation_info" = %[[P]]
CHECK: %[[MARK:.*]] = transform.param.constant "tdkit_attention_config_b_boolmask_f32"
CHECK: transform.annotate %[[OP]] "tdkit.strategy" = %[[MARK]]
CHECK-LABEL: transform.named_sequence @__kernel_config(
CHECK: @tdkit_attention_config_b_boolmask_f32_match -> @tdkit_attention_config_b_boolmask_f32_select
""")
    # A config entry has no codegen spec: no named sequence of that name.
    assert "@tdkit_attention_config_b_boolmask_f32(" not in text


def test_config_unbatched_drops_the_batch_tile(filecheck) -> None:
    text = registry.get("config").library_text(Attention((1,), 128, 128, 64),
                                                ConfigKnobs(rows=32, value_cols=64))
    filecheck(text, """
CHECK: #iree_cpu.lowering_config<distribution = [32, 0, 0, 64],
CHECK-SAME: vector_common_parallel = [8, 0, 0, 64], vector_reduction = [0, 0, 8, 0]>
""")


# --- Knob checks (no compile) -------------------------------------------------------------------

P64 = Attention((4,), 1024, 1024, 64)


@pytest.mark.parametrize(("knobs", "problem", "message"), [
    (FlashKnobs(key_tile=24), None, "key_tile must be a power of two"),
    (FlashKnobs(rows=12), None, "rows must be a power of two with layout mlanes"),
    (FlashKnobs(rows=64), None, "rows must be at most 32 with layout mlanes"),
    (FlashKnobs(rows=0), None, "rows must be a positive integer"),
    (FlashKnobs(key_tile=128), None, "key_tile must be at most 64"),
    (FlashKnobs(layout="diagonal"), None, "layout must be one of"),
    (FlashKnobs(lowering="llvm"), None, "lowering must be one of"),
    (FlashKnobs(lowering="iree"), None, "layout mlanes needs lowering=transform"),
    # Combinations that compiled and then crashed on IREE's 128 KiB worker stacks.
    (FlashKnobs(rows=32, key_tile=16, layout="rows", lowering="iree"), None, "KiB of stack"),
    (FlashKnobs(rows=32, key_tile=32), None, "KiB of stack"),
    (FlashKnobs(rows=16, key_tile=16, layout="rows"), Attention((2,), 256, 256, 128),
     "KiB of stack"),
    (FlashKnobs(rows=16), Attention((2,), 8, 300, 64), "rows \\(16\\) exceeds the query length"),
    (FlashKnobs(key_tile=32), Attention((2,), 64, 20, 64), "key_tile \\(32\\) exceeds"),
    (FlashKnobs(), Attention((2,), 64, 64, 512), "head dims up to 256"),
    (FlashKnobs(value_tile=12), None, "value_tile must be 0 \\(off\\) or a power of two"),
    (FlashKnobs(max_split=3), None, "max_split must be 0 \\(off\\) or a power of two"),
    (FlashKnobs(value_tile=32), Attention((2,), 64, 64, 64, n=48),
     "value_tile \\(32\\) must divide the value dim N = 48"),
    (FlashKnobs(outer_products="yes"), None, "outer_products must be true or false"),
    # Unrolled, 32 rows keep the scaled Q tile and the accumulator on the stack: 100 KiB.
    (FlashKnobs(rows=32, key_tile=8, outer_products=True), Attention((2,), 64, 64, 256),
     "KiB of stack"),
])
def test_flash_check_rejects(knobs: FlashKnobs, problem, message: str) -> None:
    with pytest.raises(KnobError, match=message):
        knobs.check(problem)


@pytest.mark.parametrize("knobs", [
    FlashKnobs(), FlashKnobs(key_tile=8), FlashKnobs(rows=32, key_tile=16),
    FlashKnobs(rows=8, key_tile=16, layout="rows", lowering="iree"),
    FlashKnobs(rows=16, key_tile=32, layout="rows", lowering="transform"),
])
def test_flash_check_accepts(knobs: FlashKnobs) -> None:
    knobs.check(P64)


def test_flash_fit_shrinks_defaults_to_small_problems() -> None:
    fitted = attention_flash.fit(Attention((1,), 5, 3, 16), FlashKnobs())
    assert (fitted.rows, fitted.key_tile) == (4, 2)
    fitted.check(Attention((1,), 5, 3, 16))
    # Fewer than 32 query rows: 16 x 16 blocks, value tiles of 8 where 8 divides N.
    assert attention_flash.fit(Attention((2,), 16, 64, 64), FlashKnobs()) == FlashKnobs()
    wide = attention_flash.fit(Attention((2,), 16, 64, 128), FlashKnobs())
    assert (wide.rows, wide.key_tile, wide.value_tile) == (16, 16, 8)  # head dim 128: measured
    wide.check(Attention((2,), 16, 64, 128))
    half = Attention((2,), 16, 64, 128, dtype=DType.F16)
    assert attention_flash.fit(half, FlashKnobs()).key_tile == 8  # measured: 16 is 0.51x
    bf = Attention((2,), 16, 64, 128, dtype=DType.BF16)
    assert attention_flash.fit(bf, FlashKnobs()).key_tile == 8
    assert attention_flash.fit(Attention((2,), 16, 64, 64, n=40), FlashKnobs()).value_tile == 8
    assert attention_flash.fit(Attention((2,), 16, 64, 64, n=36), FlashKnobs()).value_tile == 0
    f16 = Attention((2,), 16, 64, 64, dtype=DType.F16)
    assert attention_flash.fit(f16, FlashKnobs()).value_tile == 0


BLOCKED = FlashKnobs(rows=32, key_tile=8, value_tile=4, max_split=2, outer_products=True)


@pytest.mark.parametrize("problem", [
    P64, Attention((4,), 1024, 1024, 128), Attention((2, 16), 100, 1500, 40, n=80),
    Attention((4096,), 32, 32, 64, causal=True), Attention((2, 12), 128, 128, 64),
    Attention((16,), 192, 197, 64),
])
def test_flash_fit_picks_32_row_outer_product_blocks_for_f32(problem) -> None:
    fitted = attention_flash.fit(problem, FlashKnobs())
    assert fitted == BLOCKED
    fitted.check(problem)


@pytest.mark.parametrize("problem", [
    Attention((1024,), 64, 64, 64, dtype=DType.F16),
    Attention((4,), 1024, 1024, 128, dtype=DType.BF16, causal=True),
])
def test_flash_fit_picks_outer_product_blocks_with_8_value_columns_for_f16_bf16(problem) -> None:
    fitted = attention_flash.fit(problem, FlashKnobs())
    assert fitted == replace(BLOCKED, value_tile=8)
    fitted.check(problem)


@pytest.mark.parametrize("problem", [
    Attention((2,), 16, 64, 64),                     # fewer than 32 query rows
    Attention((1 << 20,), 64, 4, 64),                # fewer than 8 keys
    Attention((1024,), 64, 64, 64, n=38),            # 4 does not divide N
    Attention((1024,), 64, 64, 256),                 # head dim above 128: the stack
    Attention((1024,), 64, 64, 64, n=36, dtype=DType.F16),  # 8 does not divide N
    Attention((2,), 31, 64, 64, dtype=DType.BF16),          # fewer than 32 query rows
    Attention((16,), 197, 197, 64),                  # a partial 32-row tile, small call
    Attention((2,), 100, 300, 64, mask=True),
])
def test_flash_fit_keeps_16_row_blocks_elsewhere(problem) -> None:
    fitted = attention_flash.fit(problem, FlashKnobs())
    assert not fitted.outer_products and fitted.rows <= 16
    fitted.check(problem)


def test_flash_outer_products_pack_qk_and_unroll_pv(filecheck) -> None:
    # After the interchange Q·Kᵀ (b, k1, k2, m) is packed along the query rows (inner tile =
    # rows: Q and the scores stored (k, m)) and marked, P·V (b, k2, n, m) is marked; each
    # marked P·V (once per value tile) has its reduction tiled by 1 and fully unrolled, the
    # packed Q·Kᵀ its head-dim loop tiled by 1 and unrolled by 4; the library asks LLVM to
    # keep that order and, for 32 rows at head dim 128, for 64 KiB of stack allocations.
    text = flash_library(Attention((2,), 64, 64, 128), rows=32, key_tile=8, value_tile=4,
                         max_split=2, outer_products=True)
    filecheck(text, """
CHECK: tdkit.compile_flags = ["--enable-misched=false",
CHECK-SAME: "--iree-llvmcpu-stack-allocation-limit=65536"]
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_f32(
CHECK: %[[G:.*]]:10 = transform.split_handle
CHECK: %[[QK:.*]] = transform.structured.interchange %[[G]]#1 iterator_interchange = [0, 2, 3, 1]
CHECK: %[[PV:.*]] = transform.structured.interchange %[[G]]#9 iterator_interchange = [0, 2, 3, 1]
CHECK: %[[PACKED:.*]] = transform.structured.pack %[[QK]] packed_sizes = [0, 0, 0, 32]
CHECK: transform.annotate %[[PACKED]] "tdkit.rolled_qk"
CHECK: transform.annotate %[[PV]] "tdkit.outer_products"
CHECK: transform.structured.fuse %[[PV]] tile_sizes [0, 0, 4, 0]
CHECK: transform.structured.split_reduction
CHECK: %[[MARKED:.*]] = transform.structured.match ops{["linalg.generic"]}
CHECK-SAME: attributes {tdkit.outer_products}
CHECK: transform.foreach %[[MARKED]]
CHECK: %{{.*}}, %[[LOOP:.*]] = transform.structured.tile_using_for %{{.*}} tile_sizes [0, 1, 0, 0]
CHECK-NEXT: transform.loop.unroll_full %[[LOOP]]
CHECK: %[[ROLLED:.*]] = transform.structured.match ops{["linalg.generic"]}
CHECK-SAME: attributes {tdkit.rolled_qk}
CHECK: transform.foreach %[[ROLLED]]
CHECK: , %[[QLOOP:.*]] = transform.structured.tile_using_for %{{.*}} tile_sizes [0, 1, 0, 0, 0]
CHECK-NEXT: transform.loop.unroll %[[QLOOP]] factor = 4
CHECK: transform.structured.vectorize_children_and_apply_patterns
""")
    plain = flash_library(Attention((2,), 64, 64, 64))
    assert "outer_products" not in plain and "compile_flags" not in plain


def test_flash_stack_allocation_limit_is_a_power_of_two() -> None:
    pred = attention_flash.predicates_for(Attention((2,), 64, 64, 128))[0]
    assert attention_flash.llvm_flags(BLOCKED, pred) == (
        "--enable-misched=false", "--iree-llvmcpu-stack-allocation-limit=65536")
    pred64 = attention_flash.predicates_for(P64)[0]
    assert attention_flash.llvm_flags(BLOCKED, pred64) == ("--enable-misched=false",)
    assert attention_flash.llvm_flags(FlashKnobs(), pred) == ()
    # A "rows" layout ignores outer_products, as it ignores value_tile and max_split.
    rows_layout = FlashKnobs(layout="rows", lowering="iree", rows=8, outer_products=True)
    assert attention_flash.llvm_flags(rows_layout, pred64) == ()


@pytest.mark.parametrize(("knobs", "problem", "message"), [
    (ConfigKnobs(vector_rows=16, key_tile=8), None, "is 128 or more"),
    (ConfigKnobs(vector_cols=48), None, "vector_cols must be a power of two"),
    (ConfigKnobs(rows=4, vector_rows=8), None, "vector_rows \\(8\\) exceeds rows \\(4\\)"),
    (ConfigKnobs(value_cols=-1), None, "value_cols must be 0"),
    (ConfigKnobs(rows=128), Attention((2,), 100, 300, 64), "rows \\(128\\) exceeds"),
    (ConfigKnobs(vector_cols=128), Attention((2,), 100, 300, 64), "vector_cols \\(128\\) exceeds"),
    (ConfigKnobs(), Attention((2,), 128, 128, 128), "32 KiB"),
])
def test_config_check_rejects(knobs: ConfigKnobs, problem, message: str) -> None:
    with pytest.raises(KnobError, match=message):
        knobs.check(problem)


def test_config_fit_shrinks_defaults() -> None:
    small = Attention((1,), 16, 4, 40)
    fitted = attention_config.fit(small, ConfigKnobs())
    assert (fitted.rows, fitted.vector_rows, fitted.key_tile, fitted.vector_cols) == (16, 8, 4, 64)
    fitted.check(small)
    wide = Attention((2,), 128, 128, 128)
    attention_config.fit(wide, ConfigKnobs()).check(wide)


def test_families_are_registered() -> None:
    fams = registry.for_kind("attention")
    assert {f.name for f in fams} >= {"flash", "config"}
    with pytest.raises(KnobError, match="unknown knob"):
        registry.get("flash").parse_knobs({"tile": "8"})
    knobs = registry.get("flash").parse_knobs({"rows": "32", "exp2": "true"})
    assert knobs.rows == 32 and knobs.exp2 is True


def test_flash_fit_picks_8_keys_per_step_for_bf16() -> None:
    small = Attention((8,), 16, 256, 64, dtype=DType.BF16)  # too few rows for 32-row blocks
    fitted = attention_flash.fit(small, FlashKnobs())
    assert (fitted.layout, fitted.rows, fitted.key_tile, fitted.value_tile) == \
        ("mlanes", 16, 8, 8)
    fitted.check(small)
    f16 = attention_flash.fit(Attention((8,), 16, 256, 64, dtype=DType.F16), FlashKnobs())
    assert f16.layout == "mlanes"


def test_causal_library_asks_for_the_mask_generator_in_the_dispatch() -> None:
    """Only a causal-only problem's flash library carries `tdkit.compile_flags` (IREE then
    clones the mask generator into the attention dispatch); a user mask, no mask, and the
    library for any payload do not."""
    from tdkit.tools.toolchain import library_flags

    family = registry.get("flash")

    def flags(problem) -> tuple[str, ...]:
        with ir.Context(), ir.Location.unknown():
            text = str(build_library(family.entries(problem, FlashKnobs())))
        return library_flags(text)

    assert flags(Attention((2,), 64, 128, 64, causal=True)) == attention_flash.AGGRESSIVE_FUSION
    assert flags(Attention((2,), 64, 128, 64, causal=True, mask=True)) == ()
    assert flags(Attention((2,), 64, 128, 64)) == ()
    assert flags(None) == ()


def test_flash_spec_fuses_an_in_dispatch_mask_generator(filecheck) -> None:
    problem = Attention((2,), 64, 128, 64, causal=True)
    with ir.Context(), ir.Location.unknown():
        text = str(build_library(registry.get("flash").entries(problem, FlashKnobs())))
    filecheck(text, """
CHECK: module attributes {tdkit.compile_flags = ["--iree-dispatch-creation-{{.*}}-fusion"]
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_boolmask_f32(
CHECK: transform.foreach
CHECK: transform.match.operation_name %{{.*}} ["tensor.pad"]
CHECK: transform.match.operation_name %{{.*}} ["linalg.generic"]
CHECK-NEXT: %[[GEN:.*]], %{{.*}} = transform.structured.fuse_into_containing_op
CHECK-NEXT: transform.structured.vectorize %[[GEN]]
CHECK: transform.match.operation_name %{{.*}} ["linalg.generic"]
CHECK-NEXT: %[[GEN2:.*]], %{{.*}} = transform.structured.fuse_into_containing_op
CHECK-NEXT: transform.structured.vectorize %[[GEN2]]
CHECK: transform.iree.decompose_aggregate_op
""")


def test_flash_bf16_dot_pairs_both_matmuls_on_vdpbf16ps(filecheck) -> None:
    # bf16 outer-product blocks: both reductions step by 2 (a pair per vdpbf16ps lane); after
    # vectorization a foreach_match inlines the transform library's util.func helpers in place
    # of the pair reductions it finds by type and of the probability tile's truncf (rounded
    # by vcvtne2ps2bf16), fails unless all three helpers were imported (each was used at
    # least once), and
    # symbol-dce drops the imported helpers after the translation_info is set.
    text = flash_library(Attention((2,), 64, 64, 64, dtype=DType.BF16), rows=32, key_tile=8,
                         value_tile=8, max_split=2, outer_products=True)
    filecheck(text, """
CHECK-LABEL: util.func private @tdkit_attention_flash_b_bf16_qk_dot_bf16(
CHECK-SAME: vector<1x8x1x32xf32>, %{{.*}}: vector<1x1x1x32x2xbf16>, %{{.*}}: vector<1x8x1x2xbf16>
CHECK: vector.shape_cast %{{.*}} : vector<32x2xbf16> to vector<64xbf16>
CHECK: vector.bitcast %{{.*}} : vector<2xbf16> to vector<1xi32>
CHECK: llvm.call_intrinsic "llvm.x86.avx512bf16.dpbf16ps.512"
CHECK-SAME: (vector<16xf32>, vector<32xbf16>, vector<32xbf16>) -> vector<16xf32>
CHECK: util.return
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_bf16_qk_bf16_pairs_match(
CHECK: transform.match.operation_name %{{.*}} ["vector.multi_reduction"]
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x1x8x1x2x32xf32>
CHECK: transform.match.operation_name %{{.*}} ["arith.mulf"]
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<8x1x1x1x32x2xbf16>
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x1x1x32x2xbf16>
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x32x1x8x1x2xbf16>
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x8x1x2xbf16>
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_bf16_qk_bf16_pairs_dot(
CHECK: transform.util.import_symbol @tdkit_attention_flash_b_bf16_qk_dot_bf16 into
CHECK: transform.util.cast_and_call inline_call
CHECK-LABEL: util.func private @tdkit_attention_flash_b_bf16_pv_dot_bf16(
CHECK-SAME: vector<1x8x32xf32>, %{{.*}}: vector<1x2x8x32xbf16>, %{{.*}}: vector<1x2x8xbf16>
CHECK: %[[X:.*]] = llvm.inline_asm "", "=v,0"
CHECK: %[[Y:.*]] = llvm.inline_asm "", "=v,0"
CHECK: vector.shuffle %[[X]], %[[Y]] [0, 33, 2, 35
CHECK: llvm.call_intrinsic "llvm.x86.avx512bf16.dpbf16ps.512"
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_bf16_pv_bf16_pairs_match(
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x2x8x32xbf16>
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x2x8x32xbf16>
CHECK: transform.match.operation_name %{{.*}} ["vector.transpose"]
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<32x1x2x8xbf16>
CHECK: transform.match.operation_name %{{.*}} ["vector.broadcast"]
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x2x8xbf16>
CHECK-LABEL: util.func private @tdkit_attention_flash_b_bf16_p_to_bf16(
CHECK-SAME: %{{.*}}: vector<1x8x32xf32>) -> vector<1x8x32xbf16>
CHECK-COUNT-8: llvm.call_intrinsic "llvm.x86.avx512bf16.cvtne2ps2bf16.512"
CHECK-SAME: (vector<16xf32>, vector<16xf32>) -> vector<32xbf16>
CHECK-NOT: arith.truncf
CHECK: util.return
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_bf16_p_truncf_match(
CHECK: transform.match.operation_name %{{.*}} ["arith.truncf"]
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x8x32xf32>
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_bf16_p_truncf_cvt(
CHECK: transform.util.import_symbol @tdkit_attention_flash_b_bf16_p_to_bf16 into
CHECK: transform.util.cast_and_call inline_call
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_bf16(
CHECK: %[[PACKED:.*]] = transform.structured.pack %{{.*}} packed_sizes = [0, 2, 0, 32]
CHECK: %[[QPACK:.*]] = transform.get_producer_of_operand %[[PACKED]][0]
CHECK: transform.structured.pack_transpose %[[QPACK]] with_compute_op(%[[PACKED]])
CHECK-SAME: inner_perm = [1, 0]
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [0, 2, 0, 0]
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [0, 1, 0, 0, 0]
CHECK: transform.structured.vectorize_children_and_apply_patterns
CHECK: %[[MAXES:.*]] = transform.structured.match ops{["vector.multi_reduction"]}
CHECK-SAME: attributes {kind = #vector.kind<maximumf>}
CHECK-NEXT: transform.foreach_match restrict_root in %[[MAXES]]
CHECK-NEXT: @[[S:tdkit_attention_flash_b_bf16]]_max0_match -> @[[S]]_max0_vmaxps_call
CHECK-NEXT: @[[S]]_max1_match -> @[[S]]_max1_vmaxps_call
CHECK: transform.foreach_match in %{{.*}}
CHECK-NEXT: @[[S]]_qk_bf16_pairs_match -> @[[S]]_qk_bf16_pairs_dot
CHECK-NEXT: @[[S]]_pv_bf16_pairs_match -> @[[S]]_pv_bf16_pairs_dot
CHECK-NEXT: @[[S]]_p_truncf_match -> @[[S]]_p_truncf_cvt
CHECK: %[[MOD:.*]] = transform.util.get_nearest_symbol_table
CHECK-NEXT: %[[HELPERS:.*]] = transform.structured.match ops{["util.func"]} in %[[MOD]]
CHECK-NEXT: transform.split_handle %[[HELPERS]] pass_through_empty_handle = false
CHECK-SAME: -> (!transform.any_op, !transform.any_op, !transform.any_op, !transform.any_op,
CHECK-SAME: !transform.any_op, !transform.any_op, !transform.any_op)
CHECK: transform.iree.bufferize
CHECK: transform.apply_patterns.vector.flatten_vector_transfer_ops
CHECK: transform.annotate %{{.*}} "translation_info"
CHECK-NEXT: transform.util.get_nearest_symbol_table
CHECK-NEXT: transform.apply_registered_pass "symbol-dce"
""")
    off = flash_library(Attention((2,), 64, 64, 64, dtype=DType.BF16), rows=32, key_tile=8,
                        value_tile=8, max_split=2, outer_products=True, bf16_dot=False)
    assert "dpbf16ps" not in off and "tile_sizes [0, 2, 0, 0]" not in off
    assert "pack_transpose" not in off and "packed_sizes = [0, 0, 0, 32]" in off
    # f32, an odd head dim, and the 16-row kernel without outer products keep the FMAs.
    for problem, knobs in [(Attention((2,), 64, 64, 64), BLOCKED),
                           (Attention((2,), 64, 64, 65, n=64, dtype=DType.BF16), BLOCKED),
                           (Attention((2,), 64, 64, 64, dtype=DType.BF16), FlashKnobs())]:
        assert "dpbf16ps" not in flash_library(problem, **knobs.__dict__)


def test_flash_row_maxima_run_on_vmaxps(filecheck) -> None:
    # The split running max (2 partial maxima of 4 keys, then their combination) is replaced
    # by helpers calling vmaxps, matched by type among the <maximumf> reductions only; the
    # spec fails unless both were used. f32 too: the helpers are not bf16-specific.
    text = flash_library(Attention((2,), 64, 64, 64), **BLOCKED.__dict__)
    filecheck(text, """
CHECK-LABEL: util.func private @tdkit_attention_flash_b_f32_max0_vmaxps(
CHECK-SAME: %{{.*}}: vector<1x2x4x32xf32>, %{{.*}}: vector<1x2x32xf32>) -> vector<1x2x32xf32>
CHECK-COUNT-16: llvm.call_intrinsic "llvm.x86.avx512.max.ps.512"
CHECK-NOT: arith.maximumf
CHECK: util.return
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_f32_max0_match(
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x2x4x32xf32>
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x2x32xf32>
CHECK-LABEL: util.func private @tdkit_attention_flash_b_f32_max1_vmaxps(
CHECK-SAME: %{{.*}}: vector<1x2x32xf32>, %{{.*}}: vector<1x32xf32>) -> vector<1x32xf32>
CHECK-COUNT-4: llvm.call_intrinsic "llvm.x86.avx512.max.ps.512"
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_f32(
CHECK: transform.foreach_match restrict_root in %{{.*}}
CHECK-NEXT: @[[S:tdkit_attention_flash_b_f32]]_max0_match -> @[[S]]_max0_vmaxps_call
CHECK-NEXT: @[[S]]_max1_match -> @[[S]]_max1_vmaxps_call
CHECK: transform.split_handle %{{.*}} pass_through_empty_handle = false
CHECK-SAME: -> (!transform.any_op, !transform.any_op, !transform.any_op, !transform.any_op)
CHECK: transform.apply_registered_pass "symbol-dce"
""")
    off = flash_library(Attention((2,), 64, 64, 64),
                        **{**BLOCKED.__dict__, "vmaxps": False, "fast_exp": False})
    assert "max.ps" not in off and "symbol-dce" not in off
    # 4 partial maxima of 4 keys: the types would not tell the reduced dim, so no helpers.
    assert "vmaxps_call" not in flash_library(Attention((2,), 64, 64, 64), rows=16,
                                              key_tile=16, max_split=4)
    with pytest.raises(KnobError, match="vmaxps must be true or false"):
        FlashKnobs(vmaxps="yes").check()


def test_flash_exps_run_on_vscalefps(filecheck) -> None:
    # The key step's probabilities (8 keys x 32 rows) and rescale factors (32 rows).
    text = flash_library(Attention((2,), 64, 64, 64), **BLOCKED.__dict__)
    filecheck(text, """
CHECK-LABEL: util.func private @tdkit_attention_flash_b_f32_exp0_scalef(
CHECK-SAME: %{{.*}}: vector<1x8x32xf32>) -> vector<1x8x32xf32>
CHECK-COUNT-16: llvm.call_intrinsic "llvm.x86.avx512.mask.scalef.ps.512"
CHECK-NOT: math.exp
CHECK: util.return
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_f32_exp0_match(
CHECK: transform.match.operation_name %{{.*}} ["math.exp"]
CHECK: transform.iree.match.cast_compatible_type %{{.*}} = vector<1x8x32xf32>
CHECK-LABEL: util.func private @tdkit_attention_flash_b_f32_exp1_scalef(
CHECK-SAME: %{{.*}}: vector<1x32xf32>) -> vector<1x32xf32>
CHECK-LABEL: transform.named_sequence @tdkit_attention_flash_b_f32(
CHECK: transform.foreach_match in
CHECK-NEXT: @[[S:tdkit_attention_flash_b_f32]]_exp0_match -> @[[S]]_exp0_scalef_call
CHECK-NEXT: @[[S]]_exp1_match -> @[[S]]_exp1_scalef_call
""")
    off = flash_library(Attention((2,), 64, 64, 64), **{**BLOCKED.__dict__, "fast_exp": False})
    assert "scalef" not in off and "max.ps" in off
    # exp2 decomposes into math.exp2, which the helper does not replace (a tune sweep's
    # exp2 candidate failed to compile when it was emitted anyway).
    exp2 = flash_library(Attention((2,), 64, 64, 64), **{**BLOCKED.__dict__, "exp2": True})
    assert "scalef" not in exp2 and "vmaxps_call" in exp2
    with pytest.raises(KnobError, match="fast_exp must be true or false"):
        FlashKnobs(fast_exp=1).check()


def test_exp_helper_matches_numpy_on_the_edges() -> None:
    # The helper's arithmetic, replayed in float32 numpy with the same constants, against
    # float64 exp: a few ulps inside the range, 0 for -inf and below -110, NaN stays NaN.
    import numpy as np

    from tdkit.strategies import x86_helpers as xh

    x = np.concatenate([np.linspace(-110, 88, 20001), [-np.inf, -200.0, 0.0, -0.0, np.nan]])
    v = np.minimum(np.float32(xh.EXP_INPUT_RANGE[1]),
                   np.maximum(np.float32(xh.EXP_INPUT_RANGE[0]), x.astype(np.float32)))
    v = np.where(np.isnan(x), np.float32(np.nan), v).astype(np.float32)
    n = np.round(v * np.float32(xh.LOG2E_HI)).astype(np.float32)
    f = (v.astype(np.float64) * np.float32(xh.LOG2E_HI) - n).astype(np.float32)
    f = (v.astype(np.float64) * np.float32(xh.LOG2E_LO) + f).astype(np.float32)
    p = np.float32(xh.EXP2_TAYLOR[-1])
    for c in reversed(xh.EXP2_TAYLOR[:-1]):
        p = (p.astype(np.float64) * f + np.float32(c)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        # vscalefps rounds its result to f32: below the denormals it is 0
        got = np.ldexp(p.astype(np.float64), np.nan_to_num(n).astype(np.int64))
        got = got.astype(np.float32).astype(np.float64)
        want = np.exp(v.astype(np.float64))  # of the f32 input the kernel sees
    finite = np.isfinite(x) & (x > -87)
    rel = np.abs(got[finite] - want[finite]) / want[finite]
    assert rel.max() < 4e-7, rel.max()
    assert got[-5] == 0.0 and got[-4] == 0.0 and got[-3] == 1.0 and np.isnan(got[-1])
    with ir.Context(), ir.Location.unknown():
        from iree.compiler.dialects import builtin

        module = builtin.ModuleOp()
        with ir.InsertionPoint(module.body):
            xh.build_exp_helper("e", True, (8, 32))
        assert module.operation.verify()
        assert str(module).count("scalef") == 8 * 2


def test_helpers_are_left_out_where_their_types_would_not_tell_them_apart() -> None:
    # Found by compiling every mlanes rows x key_tile x max_split x outer_products combination:
    # 4 keys split 4 ways leave one-key "maxima" that canonicalization folds (the spec then
    # failed: helper not used); 16 rows x 16 keys cannot tell the packed Q pairs from K's
    # (an internal error).
    from tdkit.strategies import attention_flash as af

    assert not af.uses_vmaxps(FlashKnobs(rows=16, key_tile=4, max_split=4))
    assert af.uses_vmaxps(FlashKnobs(rows=16, key_tile=8, max_split=4))
    bf16 = Attention((2,), 64, 128, 64, dtype=DType.BF16)
    text = flash_library(bf16, rows=16, key_tile=16, max_split=0, outer_products=True)
    assert "dpbf16ps" not in text
    assert "dpbf16ps" in flash_library(bf16, rows=16, key_tile=8, outer_products=True)


def test_max_helper_folds_every_row_into_the_accumulator() -> None:
    from iree.compiler.dialects import builtin

    from tdkit.strategies import x86_helpers

    with ir.Context(), ir.Location.unknown():
        module = builtin.ModuleOp()
        with ir.InsertionPoint(module.body):
            x86_helpers.build_max_helper("a", False, (2, 4, 32), 1)
            x86_helpers.build_max_helper("b", False, (8, 16), 0)
        assert module.operation.verify()
        text = str(module)
    assert text.count("llvm.x86.avx512.max.ps.512") == 2 * 4 * 2 + 8
    assert not x86_helpers.maxima_forced((4, 4, 16), 1) and x86_helpers.maxima_forced((2, 4, 32), 1)
    with pytest.raises(ValueError, match="ambiguous"):
        with ir.Context(), ir.Location.unknown():
            module = builtin.ModuleOp()
            with ir.InsertionPoint(module.body):
                x86_helpers.emit_maxima("s", False, [((4, 4, 16), 1)])


def test_flash_bf16_dot_knob_is_checked() -> None:
    with pytest.raises(KnobError, match="bf16_dot must be true or false"):
        FlashKnobs(bf16_dot="yes").check()


def test_bf16_dot_helper_verifies() -> None:
    from iree.compiler.dialects import builtin

    from tdkit.strategies import x86_bf16

    with ir.Context() as ctx, ir.Location.unknown():
        ctx.allow_unregistered_dialects = False
        module = builtin.ModuleOp()
        with ir.InsertionPoint(module.body):
            x86_bf16.build_dot_helper("h", False, (4,), 32)
        assert module.operation.verify()
        text = str(module)
    assert text.count("llvm.call_intrinsic") == 4 * 2  # 4 rows x 2 sixteen-lane halves
    with pytest.raises(ValueError, match="multiple of 16"):
        with ir.Context(), ir.Location.unknown():
            module = builtin.ModuleOp()
            with ir.InsertionPoint(module.body):
                x86_bf16.build_dot_helper("h", False, (4,), 8)



def test_bf16_uniform_pv_helper_blends_two_broadcasts_per_column() -> None:
    from iree.compiler.dialects import builtin

    from tdkit.strategies import x86_bf16

    with ir.Context(), ir.Location.unknown():
        module = builtin.ModuleOp()
        module.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
        with ir.InsertionPoint(module.body):
            x86_bf16.build_dot_helper("h", True, (8,), 32, uniform_b=True)
            x86_bf16.build_pair_matcher("m", True, (8,), 32, uniform_b=True)
        assert module.operation.verify()
        text = str(module)
    # one blend of two barriered 16-bit broadcasts per value column, shared by both halves
    assert text.count("llvm.inline_asm") == 2 * 8
    assert text.count("dpbf16ps") == 8 * 2
    assert "vector<1x2x8xbf16>" in text
    # rows equal to a block size would leave the broadcast's permutation ambiguous
    assert not x86_bf16.uniform_pv("pv", (32,), 32) and x86_bf16.uniform_pv("pv", (8,), 32)
    assert not x86_bf16.uniform_pv("qk", (8, 1), 32)
    with pytest.raises(ValueError, match="must differ"):
        with ir.Context(), ir.Location.unknown():
            module = builtin.ModuleOp()
            with ir.InsertionPoint(module.body):
                x86_bf16.build_pair_matcher("m", True, (32,), 32, uniform_b=True)


def test_bf16_packed_qk_helper_reads_the_packed_pairs_as_they_are() -> None:
    from iree.compiler.dialects import builtin

    from tdkit.strategies import x86_bf16

    with ir.Context(), ir.Location.unknown():
        module = builtin.ModuleOp()
        module.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
        with ir.InsertionPoint(module.body):
            x86_bf16.build_packed_qk_helper("h", True, 8, 32)
            x86_bf16.build_packed_qk_matcher("m", True, 8, 32)
        assert module.operation.verify()
        text = str(module)
    assert text.count("dpbf16ps") == 8 * 2  # 8 keys x 2 sixteen-row halves
    assert "vector.shuffle" not in text  # no interleave: the pack stored the pairs
    with pytest.raises(ValueError, match="must differ"):
        with ir.Context(), ir.Location.unknown():
            module = builtin.ModuleOp()
            with ir.InsertionPoint(module.body):
                x86_bf16.build_packed_qk_matcher("m", True, 32, 32)


@pytest.mark.parametrize("rows, intrinsic, calls", [
    (32, "cvtne2ps2bf16", 8), (64, "cvtne2ps2bf16", 16), (16, "cvtneps2bf16", 8)])
def test_bf16_trunc_helper_rounds_every_row_with_one_call_per_32_lanes(rows: int, intrinsic: str,
                                                                       calls: int) -> None:
    from iree.compiler.dialects import builtin

    from tdkit.strategies import x86_bf16

    with ir.Context(), ir.Location.unknown():
        module = builtin.ModuleOp()
        with ir.InsertionPoint(module.body):
            x86_bf16.build_trunc_helper("t", True, 8, rows)
        assert module.operation.verify()
        text = str(module)
    assert text.count(f"llvm.x86.avx512bf16.{intrinsic}.512") == calls
    assert "arith.truncf" not in text
