"""Transform steps shared by several strategy families (emitted at the current insertion point
inside a named sequence)."""

from __future__ import annotations

from collections.abc import Sequence

from iree.compiler import ir
from iree.compiler.dialects import transform
from iree.compiler.dialects.transform import loop, structured


def peel_last_iteration(for_loop: ir.Value) -> None:
    """Peel the partial last iteration of an `scf.for` so every full tile is static. Peeling a
    loop whose trip count divides evenly fails by design; that failure is suppressed."""
    for_type = transform.OperationType.get("scf.for")
    seq = transform.SequenceOp(transform.FailurePropagationMode.Suppress, [], for_loop)
    with ir.InsertionPoint(seq.body):
        cast = transform.CastOp(for_type, seq.bodyTarget)
        loop.LoopPeelOp(for_type, for_type, cast.result)
        transform.YieldOp()


def cleanup(func: ir.Value) -> None:
    """Canonicalize, fold tiling leftovers, then CSE."""
    with ir.InsertionPoint(transform.ApplyPatternsOp(func).patterns):
        structured.ApplyTilingCanonicalizationPatternsOp()
        loop.ApplyForLoopCanonicalizationPatternsOp()
        transform.ApplyCanonicalizationPatternsOp()
    transform.ApplyCommonSubexpressionEliminationOp(func)


def match_exactly(target: ir.Value, op_name: str, count: int) -> list[ir.Value]:
    """Every `op_name` under `target`, one handle each; fails unless there are exactly `count`."""
    found = structured.MatchOp.match_op_names(target, [op_name]).result
    split = transform.SplitHandleOp([transform.AnyOpType.get()] * count, found,
                                    pass_through_empty_handle=False)
    return list(split.results)


def fuse_producers(producers: Sequence[ir.Value], loop_op: ir.Value
                   ) -> tuple[list[ir.Value], ir.Value]:
    """Fuse `producers` (given in program order) into `loop_op`, consumers first. Returns the
    fused ops (in program order) and the new loop handle. Fails if one cannot be fused."""
    fused: list[ir.Value] = []
    for producer in reversed(producers):
        op = structured.FuseIntoContainingOp(producer, loop_op)
        fused.append(op.fused_op)
        loop_op = op.new_containing_op
    return fused[::-1], loop_op


def unique(handle: ir.Value) -> ir.Value:
    """`handle` with each op once: a producer fused into two consumers is cloned twice and
    CSE'd into one op that the handle then lists twice (vectorize and split want each once)."""
    return transform.MergeHandlesOp([handle], deduplicate=True).result


def expect_count(handle: ir.Value, count: int,
                 predicate: transform.MatchCmpIPredicate = transform.MatchCmpIPredicate.eq
                 ) -> None:
    """Fail the sequence unless the number of ops `handle` holds compares `predicate` (eq by
    default; e.g. le) with `count`."""
    i64 = transform.ParamType.get(ir.IntegerType.get_signless(64))
    n = transform.NumAssociationsOp(i64, handle).result
    ref = transform.ParamConstantOp(i64, ir.IntegerAttr.get(ir.IntegerType.get_signless(64),
                                                            count)).result
    transform.MatchParamCmpIOp(n, ref, predicate)
