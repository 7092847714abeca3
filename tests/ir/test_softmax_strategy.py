"""FileCheck tests of the CPU softmax library as built and verified in-process (no
iree-compile): the matcher's predicates, the spec's key steps per (rank, dim, form), the
library's entry, and the knob checks."""

from __future__ import annotations

import dataclasses

import pytest
from iree.compiler import ir

from tdkit.matchers.softmax import build_codegen_matcher
from tdkit.strategies import softmax_cpu
from tdkit.strategies.base import KnobError
from tdkit.strategies.library import LibraryEntry, build_library, unique_entries
from tdkit.strategies.softmax_cpu import SoftmaxCpuKnobs


def library_text(entries_of) -> str:
    with ir.Context(), ir.Location.unknown():
        module = build_library(entries_of())
        module.operation.verify()
        return str(module)


def softmax_library(rank: int, dim: int, knobs: SoftmaxCpuKnobs | None = None) -> str:
    knobs = knobs or SoftmaxCpuKnobs()
    return library_text(lambda: softmax_cpu.library_entries(knobs, rank=rank, dim=dim))


def test_fused_spec_innermost_dim_steps(filecheck) -> None:
    filecheck(softmax_library(2, 1), """
CHECK: #[[NONE:.*]] = #iree_codegen.translation_info<pipeline = #iree_codegen.no_pipeline>
CHECK: module attributes {transform.with_named_sequence}
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d1(
CHECK-SAME: {transform.readonly}
CHECK: %[[FUNC:.*]] = transform.split_handle {{.*}} pass_through_empty_handle = false
CHECK: %[[FILLS:.*]]:2 = transform.split_handle {{.*}} pass_through_empty_handle = false
CHECK: %[[GENERICS:.*]]:3 = transform.split_handle {{.*}} pass_through_empty_handle = false
CHECK: %{{.*}}, %[[FORALL:.*]] = transform.structured.tile_using_forall %[[GENERICS]]#2
CHECK-SAME: tile_sizes [2, 0](mapping = [#gpu.block<x>])
CHECK: transform.iree.populate_workgroup_count_region_using_num_threads_slice %[[FORALL]]
CHECK: fuse_into_containing_op %[[GENERICS]]#1 into %[[FORALL]]
CHECK: fuse_into_containing_op %[[FILLS]]#1
CHECK: fuse_into_containing_op %[[GENERICS]]#0
CHECK: fuse_into_containing_op %[[FILLS]]#0
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [1, 0]
CHECK-COUNT-4: transform.structured.fuse_into_containing_op
CHECK: transform.structured.tile_reduction_using_for %{{.*}} by tile_sizes = [0, 64]
CHECK: transform.structured.tile_reduction_using_for %{{.*}} by tile_sizes = [0, 64]
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [0, 16]
CHECK-COUNT-3: transform.loop.peel
CHECK: transform.structured.vectorize_children_and_apply_patterns %[[FUNC]]
CHECK: transform.num_associations
CHECK: transform.match.param.cmpi le
CHECK: transform.apply_registered_pass "iree-codegen-optimize-tensor-insert-extract-slices"
CHECK: transform.iree.eliminate_empty_tensors
CHECK: %[[BUF:.*]] = transform.iree.bufferize
CHECK: transform.iree.forall_to_workgroup
CHECK: transform.apply_patterns.vector.multi_reduction_flattening lowering_strategy = innerreduction
CHECK: transform.apply_patterns.vector.lower_transfer
CHECK: transform.apply_patterns.vector.lower_shape_cast
CHECK: "fastmath" =
CHECK: "fastmath" =
CHECK: transform.annotate %{{.*}} "translation_info" = %{{.*}}
CHECK-NEXT: transform.yield
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d1_match(
""")


def test_fused_spec_keeps_vector_lowering_in_separate_groups(filecheck) -> None:
    # One apply_patterns holding every vector lowering pattern never terminated.
    filecheck(softmax_library(2, 1), """
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d1(
CHECK: transform.apply_patterns.vector.multi_reduction_unrolling
CHECK-NOT: transform.apply_patterns.vector.lower_transfer
CHECK: } : !transform.any_op
CHECK: transform.apply_patterns.vector.lower_transfer
CHECK-NOT: transform.apply_patterns.vector.lower_shape_cast
CHECK: } : !transform.any_op
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d1_match(
""")


def test_fused_matcher_predicates(filecheck) -> None:
    filecheck(softmax_library(2, 1), """
CHECK: transform.named_sequence @tdkit_softmax_cpu_r2_d1_match(%[[STORE:[a-z0-9]+]]:
CHECK-SAME: {transform.readonly}) -> !transform.any_op
CHECK-NOT: transform.structured.match
CHECK: transform.match.operation_name %[[STORE]]
CHECK-SAME: ["iree_codegen.store_to_buffer", "iree_tensor_ext.dispatch.tensor.store"]
CHECK: %[[ROOT:.*]] = transform.get_producer_of_operand %[[STORE]][0]
CHECK: transform.match.operation_name %[[ROOT]] ["linalg.generic"]
CHECK: transform.match.structured failures(propagate) %[[ROOT]]
CHECK: transform.match.structured.rank
CHECK: transform.param.constant 2 : i64
CHECK: transform.match.structured.num_inputs
CHECK: transform.param.constant 3 : i64
CHECK: transform.match.structured.dim %{{.*}}[all] parallel
CHECK: %[[MAX:.*]] = transform.get_producer_of_operand %[[ROOT]][1]
CHECK: transform.match.structured.dim %{{.*}}[1] reduction
CHECK: transform.match.structured.dim %{{.*}}[except(1)] parallel
CHECK: transform.match.structured.body %{{.*}} reduction_position = 0
CHECK: %[[LOAD:.*]] = transform.get_producer_of_operand %[[MAX]][0]
CHECK: transform.match.operation_name %[[LOAD]]
CHECK-SAME: ["iree_codegen.load_from_buffer", "iree_tensor_ext.dispatch.tensor.load"]
CHECK: %[[FILL:.*]] = transform.get_producer_of_operand %[[MAX]][1]
CHECK: transform.match.operation_name %[[FILL]] ["linalg.fill"]
CHECK: %[[SUM:.*]] = transform.get_producer_of_operand %[[ROOT]][2]
CHECK: transform.match.structured.dim %{{.*}}[1] reduction
CHECK: transform.get_producer_of_operand %[[SUM]][2]
CHECK: transform.yield %[[STORE]]
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d1_select(
CHECK: transform.get_parent_op %{{.*}} <op_name = "func.func">
CHECK: transform.annotate %{{.*}} "translation_info"
""")


def test_whole_row_entry_comes_first_and_vectorizes_rows_untiled(filecheck) -> None:
    filecheck(softmax_library(2, 1), """
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d1_row(
CHECK: tile_using_forall %{{.*}} tile_sizes [2, 0](mapping = [#gpu.block<x>])
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [1, 0]
CHECK-COUNT-4: transform.structured.fuse_into_containing_op
CHECK-NOT: tile_reduction_using_for
CHECK-NOT: transform.loop.peel
CHECK: transform.structured.vectorize_children_and_apply_patterns
CHECK: transform.iree.bufferize
CHECK: transform.annotate %{{.*}} "translation_info"
CHECK-NEXT: transform.yield
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d1_row_match(
CHECK: %[[X:.*]] = transform.get_operand %{{.*}}[0]
CHECK-NEXT: transform.iree.match.dim_bounds %[[X]][1], none, umax = 2048
CHECK-NEXT: transform.iree.match.dim_is_multiple_of %[[X]][1], 16
CHECK: transform.foreach_match in %{{.*}}
CHECK-NEXT: @tdkit_softmax_cpu_r2_d1_row_match -> @tdkit_softmax_cpu_r2_d1_row_select
CHECK-NEXT: @tdkit_softmax_cpu_r2_d1_match -> @tdkit_softmax_cpu_r2_d1_select
""")


@pytest.mark.parametrize(("shape", "dim", "limit", "expected"), [
    ((512, 1024), 1, 2048, ["tdkit_softmax_cpu_r2_d1_row", "tdkit_softmax_cpu_r2_d1_split"]),
    ((333, 1000), 1, 2048, ["tdkit_softmax_cpu_r2_d1", "tdkit_softmax_cpu_r2_d1_split"]),
    ((64, 4096), 1, 2048, ["tdkit_softmax_cpu_r2_d1", "tdkit_softmax_cpu_r2_d1_split"]),
    ((64, 4096), 1, 4096, ["tdkit_softmax_cpu_r2_d1_row", "tdkit_softmax_cpu_r2_d1_split"]),
    ((512, 1024), 1, 0, ["tdkit_softmax_cpu_r2_d1", "tdkit_softmax_cpu_r2_d1_split"]),
    ((1024, 64), 0, 2048, ["tdkit_softmax_cpu_r2_d0", "tdkit_softmax_cpu_r2_d0_split"]),
])
def test_exact_entries_pick_whole_row_for_short_rows_of_multiples_of_16(
        shape, dim, limit, expected) -> None:
    knobs = SoftmaxCpuKnobs(whole_row_limit=limit)
    entries = softmax_cpu.library_entries(knobs, rank=len(shape), dim=dim, shape=shape)
    assert [e.spec_name for e in entries] == expected
    assert softmax_cpu.whole_row(knobs, shape, dim) == expected[0].endswith("_row")


def test_whole_row_needs_the_fused_innermost_form() -> None:
    with ir.Context(), ir.Location.unknown():
        with pytest.raises(KnobError, match="whole-row vectorization needs"):
            softmax_cpu.build_codegen_spec("tdkit_x", SoftmaxCpuKnobs(), rank=2, dim=0,
                                           whole=True)


def test_outer_dim_uses_masked_column_strips(filecheck) -> None:
    filecheck(softmax_library(2, 0), """
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d0(
CHECK: tile_using_forall %{{.*}} tile_sizes [0, 32](mapping = [#gpu.block<x>])
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [0, 32]
CHECK: tile_reduction_using_for %{{.*}} by tile_sizes = [8, 0]
CHECK: tile_reduction_using_for %{{.*}} by tile_sizes = [8, 0]
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [8, 0]
CHECK-NOT: transform.loop.peel
CHECK-NOT: vectorize_children_and_apply_patterns
CHECK: transform.structured.vectorize %{{.*}} vector_sizes [32]
CHECK: transform.structured.vectorize %{{.*}} vector_sizes [32, 8]
CHECK: transform.structured.vectorize %{{.*}} vector_sizes [8, 32]
CHECK: transform.apply_patterns.vector.lower_masked_transfers
CHECK: transform.iree.bufferize
CHECK: transform.apply_registered_pass "iree-codegen-pad-dynamic-alloc"
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d0_match(
CHECK: transform.match.structured.dim %{{.*}}[0] reduction
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d0_split(
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d0_split_match(
CHECK: transform.param.constant 2 : i64
CHECK: transform.match.structured.dim %{{.*}}[1] reduction
""")


def test_rank3_maps_two_workgroup_dims_and_split_entry_is_collapsed(filecheck) -> None:
    filecheck(softmax_library(3, 2), """
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r3_d2_row(
CHECK: tile_using_forall %{{.*}} tile_sizes [1, 2, 0](mapping = [#gpu.block<y>, #gpu.block<x>])
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [1, 1, 0]
CHECK-NOT: tile_reduction_using_for
CHECK: transform.structured.vectorize_children_and_apply_patterns
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r3_d2(
CHECK: tile_using_forall %{{.*}} tile_sizes [1, 2, 0](mapping = [#gpu.block<y>, #gpu.block<x>])
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [1, 1, 0]
CHECK: tile_reduction_using_for %{{.*}} by tile_sizes = [0, 0, 64]
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d1_split(
CHECK: %{{.*}}:2 = transform.split_handle
CHECK-NOT: tile_reduction_using_for
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [0, 64]
CHECK-LABEL: transform.named_sequence @__kernel_config(
CHECK-SAME: {transform.consumed}
CHECK: transform.foreach_match in %{{.*}}
CHECK-NEXT: @tdkit_softmax_cpu_r3_d2_row_match -> @tdkit_softmax_cpu_r3_d2_row_select
CHECK-NEXT: @tdkit_softmax_cpu_r3_d2_match -> @tdkit_softmax_cpu_r3_d2_select
CHECK-NEXT: @tdkit_softmax_cpu_r2_d1_split_match -> @tdkit_softmax_cpu_r2_d1_split_select
""")


def test_rank1_tiles_chunks_and_has_no_row_loop(filecheck) -> None:
    filecheck(softmax_library(1, 0), """
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r1_d0(
CHECK: tile_using_forall %{{.*}} tile_sizes [4096](mapping = [#gpu.block<x>])
CHECK-NOT: tile_sizes [1
CHECK: tile_reduction_using_for %{{.*}} by tile_sizes = [64]
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [16]
""")


def test_knobs_reach_the_spec(filecheck) -> None:
    knobs = SoftmaxCpuKnobs(rows_per_workgroup=4, reduction_tile=128, vector_width=32)
    filecheck(softmax_library(2, 1, knobs), """
CHECK-LABEL: transform.named_sequence @tdkit_softmax_cpu_r2_d1(
CHECK: tile_using_forall %{{.*}} tile_sizes [4, 0]
CHECK: tile_reduction_using_for %{{.*}} by tile_sizes = [0, 128]
CHECK: transform.structured.tile_using_for %{{.*}} tile_sizes [0, 32]
CHECK-NOT: tile_sizes [2, 0]
""")


def test_every_rank_and_dim_in_one_library_verifies() -> None:
    knobs = SoftmaxCpuKnobs()
    text = library_text(lambda: [e for rank in range(1, 5) for dim in range(rank)
                                 for e in softmax_cpu.library_entries(knobs, rank=rank, dim=dim)])
    specs = [line.split("@")[1].split("(")[0] for line in text.splitlines()
             if "transform.named_sequence @tdkit_" in line and "_match(" not in line
             and "_select(" not in line]
    # 10 fused (rank, dim) pairs, 3 whole-row variants (innermost dim of rank 2-4) + the 4
    # distinct collapsed split shapes.
    assert len(specs) == 17, specs
    assert sum(s.endswith("_row") for s in specs) == 3
    assert all(s.startswith("tdkit_softmax_cpu_") for s in specs)


@pytest.mark.parametrize(("rank", "dim", "expected"), [
    (1, 0, (1, 0)), (2, 1, (2, 1)), (2, 0, (2, 0)), (3, 2, (2, 1)), (3, 1, (3, 1)),
    (3, 0, (2, 0)), (4, 3, (2, 1)), (4, 2, (3, 1)), (4, 1, (3, 1)), (4, 0, (2, 0)),
])
def test_split_form_shape_collapses_like_iree(rank: int, dim: int, expected) -> None:
    assert softmax_cpu.split_form_shape(rank, dim) == expected


def test_unique_entries_dedupes_equal_and_rejects_conflicting() -> None:
    a = softmax_cpu.library_entry(SoftmaxCpuKnobs(), rank=3, dim=2, form="split")
    b = softmax_cpu.library_entry(SoftmaxCpuKnobs(), rank=2, dim=1, form="split")
    assert a.spec_name == b.spec_name == "tdkit_softmax_cpu_r2_d1_split"
    assert unique_entries([a, b]) == [a]
    c = softmax_cpu.library_entry(SoftmaxCpuKnobs(vector_width=32), rank=2, dim=1, form="split")
    with pytest.raises(ValueError, match="two different library entries"):
        unique_entries([a, c])


def test_spec_names_must_carry_the_tdkit_prefix() -> None:
    with pytest.raises(ValueError, match="must start with 'tdkit_'"):
        LibraryEntry("softmax_cpu", "softmax_r2_d1", lambda n: None, lambda n: None)


def test_matcher_rejects_bad_rank_dim_and_form() -> None:
    with ir.Context(), ir.Location.unknown():
        with pytest.raises(ValueError, match="out of range"):
            build_codegen_matcher("tdkit_x", rank=2, dim=2)
        with pytest.raises(ValueError, match="rank 1 to 4"):
            build_codegen_matcher("tdkit_x", rank=5, dim=0)
        with pytest.raises(ValueError, match="unknown softmax dispatch form"):
            build_codegen_matcher("tdkit_x", rank=2, dim=1, form="online")


# --- Knob checks ---------------------------------------------------------------------------

SHAPES = [((512, 1024), 1), ((333, 1000), 1), ((7, 3, 1001), 2), ((7, 3, 1001), 1),
          ((1000,), 0), ((2, 3, 17, 129), 3), ((2, 3, 17, 129), 0), ((1000, 64), 0),
          ((4096, 4096), 1), ((64, 32768), 1)]


@pytest.mark.parametrize(("shape", "dim"), SHAPES)
def test_default_knobs_are_valid_for_the_test_shapes(shape, dim) -> None:
    SoftmaxCpuKnobs().check(shape, dim)


@pytest.mark.parametrize(("changes", "message"), [
    ({"rows_per_workgroup": 0}, "rows_per_workgroup must be a positive integer, got 0"),
    ({"reduction_tile": -64}, "reduction_tile must be a positive integer"),
    ({"columns_per_workgroup": 2.5}, "columns_per_workgroup must be a positive integer"),
    ({"vector_width": True}, "vector_width must be a positive integer"),
    ({"vector_width": 24}, "vector_width must be a power of two, got 24"),
    ({"vector_width": 128, "reduction_tile": 128},
     "vector_width must be at most 64"),
    ({"reduction_tile": 40}, r"reduction_tile \(40\) must be a multiple of vector_width \(16\)"),
    ({"reduction_tile": 512}, "reduction_tile must be at most 256"),
    ({"columns_per_workgroup": 40}, "columns_per_workgroup .* multiple of column_width"),
    ({"column_width": 48}, "column_width must be a power of two of at most 64, got 48"),
    ({"outer_reduction_tile": 32}, "outer_reduction_tile must be at most 16"),
    ({"whole_row_limit": -1}, "whole_row_limit must be an integer from 0 to 4096, got -1"),
    ({"whole_row_limit": 8192}, "whole_row_limit must be an integer from 0 to 4096, got 8192"),
])
def test_invalid_knobs_raise_one_sentence(changes, message) -> None:
    knobs = dataclasses.replace(SoftmaxCpuKnobs(), **changes)
    with pytest.raises(KnobError, match=message) as info:
        knobs.check()
    assert "\n" not in str(info.value)


def test_row_tiles_larger_than_the_row_are_rejected_with_a_shape() -> None:
    knobs = SoftmaxCpuKnobs(reduction_tile=128)
    knobs.check()  # fine without a shape
    knobs.check((8, 1000), 0)  # the row tiles do not apply to an outer softmax dim
    with pytest.raises(KnobError, match=r"reduction_tile \(128\) exceeds the softmax dim \(100\)"):
        knobs.check((8, 100), 1)
    with pytest.raises(KnobError, match=r"reduction_tile \(16\) exceeds the softmax dim \(8\)"):
        SoftmaxCpuKnobs(reduction_tile=16).check((4, 8), -1)


def test_shape_checks_rank_and_sizes() -> None:
    with pytest.raises(KnobError, match="rank 1 to 4, got rank 5"):
        SoftmaxCpuKnobs().check((2, 2, 2, 2, 64), 4)
    with pytest.raises(KnobError, match="positive static sizes"):
        SoftmaxCpuKnobs().check((0, 64), 1)


def test_spec_builder_checks_rank_dim_and_form() -> None:
    with ir.Context(), ir.Location.unknown():
        with pytest.raises(KnobError, match="out of range"):
            softmax_cpu.build_codegen_spec("tdkit_x", SoftmaxCpuKnobs(), rank=2, dim=3)
        with pytest.raises(KnobError, match="unknown softmax dispatch form"):
            softmax_cpu.build_codegen_spec("tdkit_x", SoftmaxCpuKnobs(), rank=2, dim=1,
                                           form="online")
