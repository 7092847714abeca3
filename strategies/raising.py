"""Build the preprocessing transform spec that raises unfused attention to one attention op
(and a decomposed softmax IREE does not raise itself to one linalg.softmax).

For every chain `tdkit.matchers.frontend.find_attention` recognized, the spec holds:

- a matcher `@tdkit_match_attention_<i>`: `transform.iree.match.cast_compatible_dag_from_root`
  whose body is the chain itself, cloned from the module's own preprocessing-stage IR (exact
  ops, attributes, constants and static shapes; block arguments Q, K, V), so it matches that
  chain and nothing that merely resembles it;
- an implementation `@tdkit_raised_attention_<i>(Q, K, V)`: one `iree_linalg_ext.attention`
  with the chain's batch dims, scale and mask (i1 masks keep where true);
- an action `@tdkit_raise_attention_<i>`: import the implementation into the module and
  `transform.util.cast_and_call` it in place of the chain's result;
- `@__transform_main`: `foreach_match` over every `util.func`, then dead-code elimination and
  inlining, so IREE forms one attention dispatch where there were three or more.

Used as `iree-compile --iree-preprocessing-transform-spec-filename=raise.mlir`.
"""

from __future__ import annotations

import math

from iree.compiler import ir
from iree.compiler.dialects import arith, tensor, transform, util
from iree.compiler.dialects import preprocessing_transform as pre
from iree.compiler.dialects.transform import structured

from tdkit.matchers.frontend import MASK_NONE, AttentionChain, SoftmaxChain, batch_groups
from tdkit.matchers.payload import affine_map, empty, tensor_type
from tdkit.matchers.problems import Softmax

ENTRY = "__transform_main"


def _any_op() -> ir.Type:
    return transform.AnyOpType.get()


def _any_value() -> ir.Type:
    return transform.AnyValueType.get()


def _readonly() -> dict[str, ir.Attribute]:
    return {"transform.readonly": ir.UnitAttr.get()}


def _clone_into(ops: list[ir.Operation], block: ir.Block,
                mapping: dict[ir.Value, ir.Value]) -> None:
    """Clone `ops` (in order) to the end of `block`, rewiring operands through `mapping`,
    which gains each clone's results."""
    for op in ops:
        clone = op.clone(ip=ir.InsertionPoint(block)).operation
        for target in [clone, *_nested(clone)]:  # region bodies may capture outer values
            for value in list(target.operands):
                if value in mapping:
                    target.replace_uses_of_with(value, mapping[value])
        for old, new in zip(op.results, clone.results, strict=True):
            mapping[old] = new


def _nested(op: ir.Operation) -> list[ir.Operation]:
    return [inner.operation for region in op.regions for block in region.blocks
            for inner in block.operations]


def _collapse_unit_dims(value: ir.Value, keep: list[bool]) -> ir.Value:
    """`value` without its size-1 dims where `keep` is False (tensor.collapse_shape)."""
    if all(keep):
        return value
    groups: list[list[int]] = []
    pending: list[int] = []
    for i, kept in enumerate(keep):
        pending.append(i)
        if kept:
            groups.append(pending)
            pending = []
    if pending:  # trailing dropped dims join the last group
        groups[-1].extend(pending)
    return _collapse(value, groups)


def _collapse(value: ir.Value, groups: list[list[int]]) -> ir.Value:
    """`tensor.collapse_shape` of `value`, each group of dims becoming one."""
    rtype = ir.RankedTensorType(value.type)
    shape = [math.prod(rtype.shape[i] for i in g) for g in groups]
    i64 = ir.IntegerType.get_signless(64)
    reassociation = ir.ArrayAttr.get([ir.ArrayAttr.get([ir.IntegerAttr.get(i64, i) for i in g])
                                      for g in groups])
    return tensor.CollapseShapeOp(tensor_type(shape, rtype.element_type), value,
                                  reassociation).result


def _to_batch(value: ir.Value, batch: tuple[int, ...]) -> ir.Value:
    """Q, K or V with its leading dims collapsed onto `batch` (K and V arrive as
    (b, kv_heads, group, k2, d) after grouped-query head expansion)."""
    rtype = ir.RankedTensorType(value.type)
    lead = tuple(rtype.shape[:-2])
    if lead == batch:
        return value
    groups = batch_groups(lead, batch)
    assert groups is not None, (lead, batch)
    rank = len(rtype.shape)
    return _collapse(value, [*groups, [rank - 2], [rank - 1]])


def _build_impl(name: str, chain: AttentionChain) -> None:
    """`util.func private @name(Q, K, V[, mask]) -> O`: one iree_linalg_ext.attention over
    (batch..., m, k1, k2, n) with the chain's scale; a mask keeps the dims it varies along
    (its broadcast size-1 dims collapsed away, since an attention map cannot hold a constant)."""
    elem = chain.dtype.mlir_type()
    in_types = [v.type for v in chain.inputs]
    out_type = tensor_type((*chain.batch, chain.m, chain.n), elem)
    impl = util.FuncOp(name, ir.TypeAttr.get(ir.FunctionType.get(in_types, [out_type])),
                       sym_visibility="private")
    block = impl.regions[0].blocks.append(*in_types)
    nb = len(chain.batch)
    rank = nb + 4
    bd = list(range(nb))
    dm, dk1, dk2, dn = nb, nb + 1, nb + 2, nb + 3
    with ir.InsertionPoint(block):
        q, k, v = (_to_batch(a, chain.batch) for a in block.arguments[:3])
        scale = arith.ConstantOp(elem, ir.FloatAttr.get(elem, chain.scale)).result
        maps = [affine_map(rank, [*bd, dm, dk1]), affine_map(rank, [*bd, dk2, dk1]),
                affine_map(rank, [*bd, dk2, dn]), affine_map(rank, [])]
        operands = [q, k, v, scale]
        if chain.mask != MASK_NONE:
            dims = chain.mask_dims
            mask = _collapse_unit_dims(block.arguments[3], [d is not None for d in dims])
            # scores dims (batch..., m, k2) -> attention dims (batch..., m, k1, k2, n)
            to_attention = {**{i: i for i in bd}, nb: dm, nb + 1: dk2}
            maps.append(affine_map(rank, [to_attention[d] for d in dims if d is not None]))
            operands.append(mask)
        maps.append(affine_map(rank, [*bd, dm, dn]))
        init = empty((*chain.batch, chain.m, chain.n), elem)
        op = ir.Operation.create("iree_linalg_ext.attention", results=[out_type],
                                 operands=[*operands, init],
                                 attributes={"indexing_maps": ir.ArrayAttr.get(maps)},
                                 regions=1)
        body = op.regions[0].blocks.append(ir.F32Type.get())
        with ir.InsertionPoint(body):
            ir.Operation.create("iree_linalg_ext.yield", operands=[body.arguments[0]])
        util.ReturnOp([op.results[0]])


def _build_matcher(name: str, chain: AttentionChain | SoftmaxChain) -> None:
    """The chain as a `cast_compatible_dag_from_root` body; yields (inputs, outputs)."""
    seq = transform.NamedSequenceOp(name, [_any_op()], [_any_value(), _any_value()],
                                    arg_attrs=[_readonly()])
    with ir.InsertionPoint(seq.body):
        dag = pre.MatchCastCompatibleDagFromRootOp(_any_value(), _any_value(), seq.bodyTarget)
        block = dag.regions[0].blocks.append(*[v.type for v in chain.inputs])
        _clone_into(chain.ops, block, dict(zip(chain.inputs, block.arguments, strict=True)))
        with ir.InsertionPoint(block):
            transform.YieldOp([])  # the region's implicit terminator
        transform.YieldOp([dag.results[0], dag.results[1]])


def _build_action(name: str, impl: str) -> None:
    seq = transform.NamedSequenceOp(name, [_any_value(), _any_value()], [],
                                    arg_attrs=[_readonly(), _readonly()])
    ins, out = seq.body.arguments
    with ir.InsertionPoint(seq.body):
        root = transform.GetDefiningOp(_any_op(), out).result
        table = ir.Operation.create("transform.util.get_nearest_symbol_table",
                                    results=[_any_op()], operands=[root]).results[0]
        fn = ir.Operation.create(
            "transform.util.import_symbol", results=[_any_op()], operands=[table],
            attributes={"symbol": ir.FlatSymbolRefAttr.get(impl),
                        "if_undefined": ir.UnitAttr.get()}).results[0]
        # operands: insertion point, inputs, outputs, function
        call = ir.Operation.create(
            "transform.util.cast_and_call", results=[_any_op()],
            operands=[root, ins, out, fn],
            attributes={"operandSegmentSizes": ir.DenseI32ArrayAttr.get([1, 1, 1, 1]),
                        "insert_after": ir.UnitAttr.get()},
            regions=1)
        conv = call.regions[0].blocks.append()
        with ir.InsertionPoint(conv):
            ir.Operation.create("transform.type_conversion.tensor.cast_shape_dynamic_dims")
        transform.YieldOp([])


def _build_entry(pairs: list[tuple[str, str]]) -> None:
    seq = transform.NamedSequenceOp(ENTRY, [_any_op()], [])
    with ir.InsertionPoint(seq.body):
        module = seq.bodyTarget
        funcs = structured.MatchOp.match_op_names(module, ["util.func"]).result
        each = transform.ForeachOp([], [funcs])
        body = each.body
        with ir.InsertionPoint(body):
            matchers = ir.ArrayAttr.get([ir.FlatSymbolRefAttr.get(m) for m, _ in pairs])
            actions = ir.ArrayAttr.get([ir.FlatSymbolRefAttr.get(a) for _, a in pairs])
            transform.ForeachMatchOp(_any_op(), [], body.arguments[0], [], matchers, actions)
            transform.YieldOp([])
        transform.ApplyDeadCodeEliminationOp(module)
        transform.ApplyRegisteredPassOp(_any_op(), module, "inline", options={})
        transform.YieldOp([])


def _build_softmax_impl(name: str, chain: SoftmaxChain) -> None:
    """`util.func private @name(x) -> y` holding one linalg.softmax (the op
    `Softmax.build_payload` builds)."""
    scratch = Softmax(chain.shape, chain.dim, chain.dtype).build_payload("softmax")
    fn = next(iter(scratch.body.operations)).operation
    body = fn.regions[0].blocks[0]
    impl = util.FuncOp(name, ir.TypeAttr(fn.attributes["function_type"]),
                       sym_visibility="private")
    block = impl.regions[0].blocks.append(*[a.type for a in body.arguments])
    mapping = dict(zip(body.arguments, block.arguments, strict=True))
    ops = [op.operation for op in body.operations]
    _clone_into(ops[:-1], block, mapping)  # all but func.return
    with ir.InsertionPoint(block):
        util.ReturnOp([mapping[v] for v in ops[-1].operands])


def build_raising_spec(chains: list[AttentionChain],
                       softmaxes: list[SoftmaxChain] | None = None) -> ir.Module:
    """The spec module raising attention `chains` and decomposed `softmaxes` (built in the
    context their IR lives in)."""
    softmaxes = softmaxes or []
    if not chains and not softmaxes:
        raise ValueError("nothing to raise")
    module = ir.Module.create()
    module.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
    pairs = []
    with ir.InsertionPoint(module.body):
        for kind, found, build_impl in (("attention", chains, _build_impl),
                                        ("softmax", softmaxes, _build_softmax_impl)):
            for i, chain in enumerate(found):
                impl, match, act = (f"tdkit_{what}_{kind}_{i}"
                                    for what in ("raised", "match", "raise"))
                build_impl(impl, chain)
                _build_matcher(match, chain)
                _build_action(act, impl)
                pairs.append((match, act))
        _build_entry(pairs)
    return module
