"""Matchers that recognize one softmax dispatch at kernel-configuration time (llvm-cpu).

What IREE 3.13 shows codegen (`--iree-hal-dump-executable-configurations-to`), for a softmax
of rank R over dim d (any R in 1..4, any d; shapes are not collapsed):

* `linalg.softmax`, and frontend generics IREE raises to it (max-reduce, `sub`, `exp`,
  sum-reduce, divide as separate generics; innermost dim only), become one dispatch:
  `fill(NaN)`, max-reduce (`maxnumf`), `fill(0)`, `exp(x - max)`-sum-reduce, and the root
  `exp(x - max) / sum` with inputs `(x, max, sum)`: the FUSED form.
* Generics IREE does not raise (e.g. `sub` and `exp` in one generic, as many frontends
  write, or a non-innermost dim) become two dispatches, each a fill, one reduction and an
  all-parallel root that reads the reduction broadcast along d (`max-reduce -> exp(x - max)`
  and `sum-reduce -> e / sum`): the SPLIT form.

Each matcher matches exactly one op per dispatch, the store of the result (so nothing was
fused after the softmax), and checks, on the root generic it stores: rank, the reduced dim
of every reduction feeding it, that each reduction is initialized by a `linalg.fill`, and
that the root and the reductions read the dispatch input directly (nothing was fused ahead
of the softmax), so the codegen spec's exact-count steps find what they expect.
"""

from __future__ import annotations

from iree.compiler import ir
from iree.compiler.dialects import transform

FUSED = "fused"
SPLIT = "split"
FORMS = (FUSED, SPLIT)


def _any() -> ir.Type:
    return transform.AnyOpType.get()


def _param_i64() -> ir.Type:
    return transform.ParamType.get(ir.IntegerType.get_signless(64))


def _create(name: str, operands: list[ir.Value], results: list[ir.Type] | None = None,
            attributes: dict[str, ir.Attribute] | None = None, regions: int = 0) -> ir.Operation:
    return ir.Operation.create(name, results=results or [], operands=operands,
                               attributes=attributes or {}, regions=regions)


def _expect_param(param: ir.Value, value: int) -> None:
    """`transform.match.param.cmpi eq %param, <value>`."""
    ref = transform.ParamConstantOp(_param_i64(),
                                    ir.IntegerAttr.get(ir.IntegerType.get_signless(64), value))
    transform.MatchParamCmpIOp(param, ref.result, transform.MatchCmpIPredicate.eq)


def _unit() -> ir.Attribute:
    return ir.UnitAttr.get()


def _dims(positions: list[int], *, inverted: bool = False, all_dims: bool = False) -> dict:
    attrs: dict[str, ir.Attribute] = {"raw_dim_list": ir.DenseI64ArrayAttr.get(positions)}
    if inverted:
        attrs["is_inverted"] = _unit()
    if all_dims:
        attrs["is_all"] = _unit()
    return attrs


def match_structured(op: ir.Value, *, rank: int, num_inputs: int, reduced_dim: int | None,
                     single_combiner: bool = False, bitwidth: int | None = None) -> None:
    """`transform.match.structured` on `op`: a linalg op of `rank` loops with `num_inputs`
    inputs and one init; if `reduced_dim` is None all loops are parallel, otherwise exactly
    that loop is a reduction. `single_combiner` also requires the body to be one combiner op
    (e.g. a plain max-reduce); `bitwidth` requires that element bitwidth of the result."""
    block_op = _create("transform.match.structured", [op], [],
                       {"failure_propagation_mode": ir.IntegerAttr.get(
                           ir.IntegerType.get_signless(32), 1)}, regions=1)
    block_op.regions[0].blocks.append(_any())
    body = block_op.regions[0].blocks[0]
    arg = body.arguments[0]
    with ir.InsertionPoint(body):
        r = _create("transform.match.structured.rank", [arg], [_param_i64()]).result
        _expect_param(r, rank)
        n_in = _create("transform.match.structured.num_inputs", [arg], [_param_i64()]).result
        _expect_param(n_in, num_inputs)
        n_init = _create("transform.match.structured.num_inits", [arg], [_param_i64()]).result
        _expect_param(n_init, 1)
        if reduced_dim is None:
            _create("transform.match.structured.dim", [arg], [],
                    {**_dims([], all_dims=True), "parallel": _unit()})
        else:
            _create("transform.match.structured.dim", [arg], [],
                    {**_dims([reduced_dim]), "reduction": _unit()})
            if rank > 1:
                _create("transform.match.structured.dim", [arg], [],
                        {**_dims([reduced_dim], inverted=True), "parallel": _unit()})
        _create("transform.match.structured.input", [arg], [],
                {"raw_position_list": ir.DenseI64ArrayAttr.get([0]), "permutation": _unit()})
        if bitwidth is not None:
            init = _create("transform.match.structured.init", [arg],
                           [transform.AnyValueType.get()],
                           {"raw_position_list": ir.DenseI64ArrayAttr.get([0])}).result
            width = _create("transform.match.structured.elemental_bitwidth", [init],
                            [_param_i64()]).result
            _expect_param(width, bitwidth)
        if single_combiner:
            _create("transform.match.structured.body", [arg], [],
                    {"reduction_position": ir.IntegerAttr.get(
                        ir.IntegerType.get_signless(64), 0)})
        _create("transform.match.structured.yield", [arg])


# How a dispatch reads its input and writes its result, at the two stages a matcher may see.
LOADS = ["iree_codegen.load_from_buffer", "iree_tensor_ext.dispatch.tensor.load"]
STORES = ["iree_codegen.store_to_buffer", "iree_tensor_ext.dispatch.tensor.store"]


def _expect_loaded(op: ir.Value, operand: int) -> None:
    """Operand `operand` of `op` comes straight from the dispatch's input binding, so no
    other computation was fused into the dispatch ahead of the softmax."""
    src = transform.GetProducerOfOperand(_any(), op, operand).result
    transform.MatchOperationNameOp(src, LOADS)


def _expect_shape(op: ir.Value, operand: int, shape: tuple[int, ...]) -> None:
    """Operand `operand` of `op` is a tensor of exactly `shape`."""
    from iree.compiler.dialects import preprocessing_transform as pre

    value = transform.GetOperandOp(transform.AnyValueType.get(), op, [operand]).result
    for i, size in enumerate(shape):
        pre.MatchDimBoundsOp(value, i, lower_bound=size, upper_bound=size)


def _expect_dim_at_most(op: ir.Value, operand: int, dim: int, bound: int,
                        multiple: int = 1) -> None:
    """Dim `dim` of operand `operand` of `op` has a constant upper bound of at most `bound`
    (a dynamic size without one does not match) and is a multiple of `multiple`."""
    from iree.compiler.dialects import preprocessing_transform as pre

    value = transform.GetOperandOp(transform.AnyValueType.get(), op, [operand]).result
    pre.MatchDimBoundsOp(value, dim, upper_bound=bound)
    if multiple > 1:
        pre.MatchDimIsMultipleOfOp(value, dim, multiple)


def build_codegen_matcher(name: str, *, rank: int, dim: int, form: str = FUSED,
                          shape: tuple[int, ...] | None = None,
                          max_row: int | None = None,
                          row_multiple: int = 1) -> transform.NamedSequenceOp:
    """Emit `transform.named_sequence @name(%op: !transform.any_op {transform.readonly})
    -> !transform.any_op` matching the store of the result of a softmax dispatch of `rank`
    over `dim` in `form` (FUSED: one dispatch with two reductions; SPLIT: one of the two
    dispatches of unraised generics); with `shape`, only a dispatch whose input has exactly
    that shape; with `max_row`, only one whose softmax dim is static, at most `max_row` long
    and a multiple of `row_multiple`. Yields the matched store op. Must be built at an
    insertion point inside a module with `transform.with_named_sequence`."""
    if not 1 <= rank <= 4:
        raise ValueError(f"softmax matcher supports rank 1 to 4, got rank {rank}")
    if not 0 <= dim < rank:
        raise ValueError(f"softmax dim {dim} is out of range for rank {rank}")
    if form not in FORMS:
        raise ValueError(f"unknown softmax dispatch form {form!r}; expected one of {FORMS}")
    reductions = 2 if form == FUSED else 1
    # IREE keeps the reduced loop at `dim` in the fused dispatch but moves it last (with a
    # permuted input map) in the split dispatches.
    reduced_loop = dim if form == FUSED else rank - 1
    seq = transform.NamedSequenceOp(name, [_any()], [_any()],
                                    arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        # Anchor on the store of the result: one per dispatch, and it proves nothing was
        # fused after the root.
        store = seq.bodyTarget
        transform.MatchOperationNameOp(store, STORES)
        root = transform.GetProducerOfOperand(_any(), store, 0).result
        transform.MatchOperationNameOp(root, ["linalg.generic"])
        match_structured(root, rank=rank, num_inputs=reductions + 1, reduced_dim=None)
        for i in range(reductions):
            red = transform.GetProducerOfOperand(_any(), root, i + 1).result
            transform.MatchOperationNameOp(red, ["linalg.generic"])
            # The first reduction (max) reads x; the second (exp-sum) reads x and the max.
            match_structured(red, rank=rank, num_inputs=i + 1, reduced_dim=reduced_loop,
                             single_combiner=(i == 0))
            _expect_loaded(red, 0)
            init = transform.GetProducerOfOperand(_any(), red, i + 1).result
            transform.MatchOperationNameOp(init, ["linalg.fill"])
        _expect_loaded(root, 0)
        if shape is not None:
            _expect_shape(root, 0, shape)
        if max_row is not None:
            _expect_dim_at_most(root, 0, dim, max_row, row_multiple)
        transform.YieldOp([store])
    return seq
