"""Build the preprocessing transform spec that raises unfused attention to one attention op.

For every chain `tdkit.matchers.frontend.find_attention` recognized, the spec holds:

- a matcher `@tdkit_match_attention_<i>`: `transform.iree.match.cast_compatible_dag_from_root`
  whose body is the chain itself, cloned from the module's own preprocessing-stage IR (exact
  ops, attributes, constants and static shapes; block arguments Q, K, V), so it matches that
  chain and nothing that merely resembles it;
- an implementation `@tdkit_raised_attention_<i>(Q, K, V)`: one `iree_linalg_ext.attention`
  with the chain's batch dims and scale (built by `Attention.build_payload`);
- an action `@tdkit_raise_attention_<i>`: import the implementation into the module and
  `transform.util.cast_and_call` it in place of the chain's result;
- `@__transform_main`: `foreach_match` over every `util.func`, then dead-code elimination and
  inlining, so IREE forms one attention dispatch where there were three or more.

Used as `iree-compile --iree-preprocessing-transform-spec-filename=raise.mlir`.
"""

from __future__ import annotations

from iree.compiler import ir
from iree.compiler.dialects import preprocessing_transform as pre
from iree.compiler.dialects import transform, util
from iree.compiler.dialects.transform import structured

from tdkit.matchers.attention_problem import Attention
from tdkit.matchers.frontend import AttentionChain

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
        for old, new in list(mapping.items()):
            clone.replace_uses_of_with(old, new)
        for old, new in zip(op.results, clone.results, strict=True):
            mapping[old] = new


def _build_impl(name: str, chain: AttentionChain) -> None:
    """`util.func private @name(Q, K, V) -> O` holding one iree_linalg_ext.attention (the op
    `Attention.build_payload` builds for the chain's sizes and scale)."""
    problem = Attention(batch=chain.batch, m=chain.m, k2=chain.k2, d=chain.d, n=chain.n,
                        dtype=chain.dtype, scale=chain.scale)
    scratch = problem.build_payload("attention")
    fn = next(iter(scratch.body.operations)).operation
    body = fn.regions[0].blocks[0]
    ftype = ir.TypeAttr(fn.attributes["function_type"])
    impl = util.FuncOp(name, ftype, sym_visibility="private")
    block = impl.regions[0].blocks.append(*[a.type for a in body.arguments])
    mapping = dict(zip(body.arguments, block.arguments, strict=True))
    ops = [op.operation for op in body.operations]
    _clone_into(ops[:-1], block, mapping)  # all but func.return
    with ir.InsertionPoint(block):
        util.ReturnOp([mapping[v] for v in ops[-1].operands])


def _build_matcher(name: str, chain: AttentionChain) -> None:
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


def build_raising_spec(chains: list[AttentionChain]) -> ir.Module:
    """The spec module raising `chains` (built in the context their IR lives in)."""
    if not chains:
        raise ValueError("nothing to raise")
    module = ir.Module.create()
    module.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
    pairs = []
    with ir.InsertionPoint(module.body):
        for i, chain in enumerate(chains):
            impl = f"tdkit_raised_attention_{i}"
            _build_impl(impl, chain)
            _build_matcher(f"tdkit_match_attention_{i}", chain)
            _build_action(f"tdkit_raise_attention_{i}", impl)
            pairs.append((f"tdkit_match_attention_{i}", f"tdkit_raise_attention_{i}"))
        _build_entry(pairs)
    return module
