"""Small helpers that build payload IR (tensors, fills, generics) with the MLIR bindings."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from iree.compiler import ir
from iree.compiler.dialects import linalg, tensor


def tensor_type(shape: Sequence[int], element: ir.Type) -> ir.RankedTensorType:
    """A static ranked tensor type."""
    return ir.RankedTensorType.get(list(shape), element)


def empty(shape: Sequence[int], element: ir.Type) -> ir.Value:
    """`tensor.empty()` of a static shape."""
    return tensor.EmptyOp(list(shape), element).result


def fill(value: float, shape: Sequence[int], element: ir.Type) -> ir.Value:
    """`linalg.fill` of a fresh empty tensor with a scalar constant."""
    from iree.compiler.dialects import arith

    cst = arith.ConstantOp(element, ir.FloatAttr.get(element, value)).result
    return linalg.fill(cst, outs=[empty(shape, element)])


def iterator_types(kinds: Sequence[str]) -> ir.ArrayAttr:
    """`[#linalg.iterator_type<parallel>, ...]` from a list of "parallel"/"reduction"."""
    return ir.ArrayAttr.get([ir.Attribute.parse(f"#linalg.iterator_type<{k}>") for k in kinds])


def affine_map(rank: int, results: Sequence[int]) -> ir.AffineMapAttr:
    """The projection `(d0, ..., d{rank-1}) -> (d{results[0]}, ...)`."""
    exprs = [ir.AffineDimExpr.get(r) for r in results]
    return ir.AffineMapAttr.get(ir.AffineMap.get(rank, 0, exprs))


def generic(
    inputs: Sequence[ir.Value],
    outputs: Sequence[ir.Value],
    maps: Sequence[ir.AffineMapAttr],
    iterators: Sequence[str],
    body: Callable[..., Sequence[ir.Value]],
) -> list[ir.Value]:
    """A `linalg.generic` whose region is built by `body(*block_args) -> yielded values`."""
    result_types = [v.type for v in outputs]
    op = linalg.GenericOp(
        result_types, list(inputs), list(outputs), ir.ArrayAttr.get(list(maps)),
        iterator_types(iterators),
    )
    arg_types = [ir.RankedTensorType(v.type).element_type for v in [*inputs, *outputs]]
    block = op.regions[0].blocks.append(*arg_types)
    with ir.InsertionPoint(block):
        linalg.YieldOp(list(body(*block.arguments)))
    return list(op.results)


def negate_first_module(arg_types: Sequence[ir.RankedTensorType]) -> ir.Module:
    """`@main(%x, ...) -> -%x`: reads and writes the first argument's elements once and ignores
    the rest; a bandwidth ceiling, or a baseline with a kernel's inputs and output size."""
    from iree.compiler.dialects import arith, func

    module = ir.Module.create()
    with ir.InsertionPoint(module.body):

        @func.FuncOp.from_py_func(*arg_types, name="main")
        def main(x: ir.Value, *_rest: ir.Value) -> ir.Value:
            t = ir.RankedTensorType(x.type)
            rank = t.rank
            ident = affine_map(rank, list(range(rank)))
            (y,) = generic([x], [empty(t.shape, t.element_type)], [ident, ident],
                           ["parallel"] * rank, lambda a, _o: [arith.NegFOp(a).result])
            return y

    return module


def stream_module(shape: Sequence[int], element: ir.Type) -> ir.Module:
    """`@main(%x) -> -%x` over one tensor (see `negate_first_module`)."""
    return negate_first_module([tensor_type(shape, element)])
