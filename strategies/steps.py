"""Transform steps shared by several strategy families (emitted at the current insertion point
inside a named sequence)."""

from __future__ import annotations

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
