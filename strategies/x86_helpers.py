"""Replace chosen vector ops of a CPU kernel by inlined helpers that call x86 intrinsics.

IREE 3.13 has no `x86vector` dialect, so a strategy that wants an instruction LLVM will not
pick by itself builds a `util.func` helper with the Python bindings (`llvm.call_intrinsic`
inside), puts it in the transform library, and, after vectorization, lets a
`transform.foreach_match` find the ops to replace by their exact vector types: the action
imports the helper into the dispatch's module (`transform.util.import_symbol`) and inlines it
in place of the op (`transform.util.cast_and_call inline_call`). `apply_helpers` runs them
and fails unless every helper was used, so a helper that stopped matching is an error, not a
silent fallback; `drop_helpers` removes the imported helpers once nothing calls them.

A `Helper` is (matcher, action, kind): kind "" runs the matcher on every op of the func, a
`vector.multi_reduction` combining kind (e.g. "maximumf") only on reductions of that kind (a
matcher cannot read the kind attribute). `tdkit.strategies.x86_bf16` builds the bf16 helpers;
this module holds the mechanism, the row-maximum helper (`emit_maxima`, `vmaxps` without
`arith.maximumf`'s NaN fix-ups) and the exp helper (`emit_exps`, `vscalefps`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

from iree.compiler import ir
from iree.compiler.dialects import arith, llvm, math, transform, util, vector
from iree.compiler.dialects import preprocessing_transform as pre
from iree.compiler.dialects.transform import structured

from tdkit.strategies import iree_ops

Helper = tuple[str, str, str]  # (matcher, action, kind)
LANES = 16  # f32 lanes of a 512-bit register
MAX_INTRINSIC = "llvm.x86.avx512.max.ps.512"  # vmaxps (a, b, rounding 4 = current)
AVX512_FLAG = "avx512f"  # /proc/cpuinfo


@functools.cache
def host_has(flag: str) -> bool:
    """Whether this machine's CPU lists `flag` in /proc/cpuinfo (the library targets the host
    CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


def build_call_action(name: str, helper: str, inputs: int) -> transform.NamedSequenceOp:
    """`@name(v_1 .. v_inputs, op)`: import `@helper` into the dispatch's module and inline
    it, called with the matched values, in place of `op` (replacing the uses of its
    result)."""
    any_op, any_value = transform.AnyOpType.get(), transform.AnyValueType.get()
    readonly = {"transform.readonly": ir.UnitAttr.get()}
    seq = transform.NamedSequenceOp(name, [any_value] * inputs + [any_op], [],
                                    arg_attrs=[readonly] * (inputs + 1))
    with ir.InsertionPoint(seq.body):
        *values, op = seq.body.arguments
        out = transform.GetResultOp(any_value, op, [0]).result
        module = iree_ops.nearest_symbol_table(op)
        fn = iree_ops.import_symbol(helper, module)
        merged = values[0] if len(values) == 1 else transform.MergeHandlesOp(values).result
        iree_ops.inline_call(fn, merged, out, op)
        transform.YieldOp()
    return seq


def emit_helper(helper: str, build_helper: Callable[[str], object], matcher: str,
                build_matcher: Callable[[str], object], action: str, inputs: int,
                kind: str = "") -> Helper:
    """At the current insertion point (the transform library's module body): the helper
    `build_helper(helper)`, its matcher `build_matcher(matcher)` (yielding `inputs` values
    and the op) and the action inlining the helper; returns them as a `Helper`."""
    build_helper(helper)
    build_matcher(matcher)
    build_call_action(action, helper, inputs)
    return (matcher, action, kind)


def build_operand_matcher(name: str, op_name: str, operand_types: Sequence[ir.Type]
                          ) -> transform.NamedSequenceOp:
    """`@name(%op) -> (operand_0 .. operand_n, op)`: an `op_name` op whose leading operands
    have exactly `operand_types`."""
    any_op, any_value = transform.AnyOpType.get(), transform.AnyValueType.get()
    seq = transform.NamedSequenceOp(name, [any_op], [any_value] * len(operand_types) + [any_op],
                                    arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        op = seq.bodyTarget
        transform.MatchOperationNameOp(op, [op_name])
        operands = []
        for i, t in enumerate(operand_types):
            value = transform.GetOperandOp(any_value, op, [i]).result
            pre.MatchCastCompatibleTypesOp(value, t)
            operands.append(value)
        transform.YieldOp([*operands, op])
    return seq


def apply_helpers(func: ir.Value, helpers: Sequence[Helper]) -> ir.Value:
    """Inside a codegen spec, after vectorization: replace every op of `func` that a helper's
    matcher accepts; fail unless every helper was imported (used at least once). Returns the
    func handle."""
    any_op = transform.AnyOpType.get()

    def run(root: ir.Value, group: list[Helper], on_root: bool = False) -> ir.Value:
        matchers = ir.ArrayAttr.get([ir.FlatSymbolRefAttr.get(m) for m, _, _ in group])
        actions = ir.ArrayAttr.get([ir.FlatSymbolRefAttr.get(a) for _, a, _ in group])
        # Without `restrict_root` the walk skips the root ops themselves.
        return transform.ForeachMatchOp(any_op, [], root, [], matchers, actions,
                                        restrict_root=on_root or None).updated

    for kind in sorted({k for _, _, k in helpers if k}):
        reductions = structured.MatchOp(
            any_op, func, ops=["vector.multi_reduction"],
            op_attrs={"kind": ir.Attribute.parse(f"#vector.kind<{kind}>")}).result
        run(reductions, [h for h in helpers if h[2] == kind], on_root=True)
    plain = [h for h in helpers if not h[2]]
    if plain:
        func = run(func, plain)
    transform.ApplyDeadCodeEliminationOp(func)
    # Not applied is an error, not a silent fallback: every helper's action must have run,
    # i.e. imported its helper (once) into the dispatch's module.
    imported = structured.MatchOp.match_op_names(iree_ops.nearest_symbol_table(func),
                                                 ["util.func"]).result
    transform.SplitHandleOp([any_op] * len(helpers), imported, pass_through_empty_handle=False)
    return func


def drop_helpers(func: ir.Value) -> None:
    """Remove the imported (now unused) helpers: `symbol-dce` on the func's module. Invalidates
    handles to ops in that module, so it comes last."""
    iree_ops.apply_registered_pass(iree_ops.nearest_symbol_table(func), "symbol-dce")


# --- Row maxima on vmaxps ------------------------------------------------------------------


def max_types(batched: bool, src: Sequence[int], dim: int) -> tuple[ir.Type, ir.Type]:
    """(source, result) f32 vector types of a row-maximum step: `[1,] src` reduced over its
    dim `dim` (the query rows, last, stay on the lanes)."""
    lead = [1] if batched else []
    shape = lead + list(src)
    f32 = ir.F32Type.get()
    cut = len(lead) + dim
    return (ir.VectorType.get(shape, f32),
            ir.VectorType.get(shape[:cut] + shape[cut + 1:], f32))


def maxima_forced(src: Sequence[int], dim: int) -> bool:
    """Whether a row-maximum step's types alone fix its reduction dim: the reduced size
    differs from every other size of `src`."""
    return all(n != src[dim] for i, n in enumerate(src) if i != dim)


def build_max_helper(symbol: str, batched: bool, src: Sequence[int], dim: int
                     ) -> util.FuncOp:
    """`util.func private @symbol(%src, %acc) -> result`: the `vector.multi_reduction
    <maximumf>` of `src` over `dim` into `acc`, one `vmaxps` per 16 lanes and step.

    `arith.maximumf` must return NaN for a NaN operand and order -0 below +0, so LLVM lowers
    each to `vmaxps` plus a compare, a sign fix and a blend, four instructions on the chain
    between the last Q·Kᵀ update and the first exp. The running max needs neither: a NaN
    score makes its probability, and so its row's sum and output, NaN whatever the max is,
    and the max is only subtracted (-0 and +0 alike)."""
    rows = src[-1]
    if rows % LANES:
        raise ValueError(f"rows must be a multiple of {LANES} for vmaxps, got {rows}")
    src_t, res_t = max_types(batched, src, dim)
    lead = [0] if batched else []
    f32x16 = ir.VectorType.get([LANES], ir.F32Type.get())
    fn = util.FuncOp(symbol, ir.TypeAttr.get(ir.FunctionType.get([src_t, res_t], [res_t])),
                     sym_visibility="private")
    block = fn.body.blocks.append(src_t, res_t)
    x, acc = block.arguments
    outer = list(src[:-1])
    kept = outer[:dim] + outer[dim + 1:]
    with ir.InsertionPoint(block):
        rounding = arith.ConstantOp(ir.IntegerType.get_signless(32), 4).result
        result = acc
        for idx in itertools.product(*(range(n) for n in kept)):
            where = lead + list(idx)
            best = vector.extract(acc, [], where) if where else acc
            for r in range(src[dim]):
                row = vector.extract(x, [], lead + list(idx[:dim]) + [r] + list(idx[dim:]))
                halves = [llvm.call_intrinsic(
                    f32x16, MAX_INTRINSIC,
                    [vector.extract_strided_slice(f32x16, v, [h], [LANES], [1])
                     for v in (row, best)] + [rounding], [], [])
                    for h in range(0, rows, LANES)]
                best = halves[0] if rows == LANES else _concat(halves)
            result = vector.insert(best, result, [], where) if where else best
        util.return_([result])
    return fn


def _concat(parts: Sequence[ir.Value]) -> ir.Value:
    """The 16-lane f32 vectors `parts` side by side as one vector."""
    t = ir.VectorType.get([LANES * len(parts)], ir.F32Type.get())
    out = arith.ConstantOp(t, ir.DenseElementsAttr.get_splat(
        t, ir.FloatAttr.get(ir.F32Type.get(), 0.0))).result
    for i, part in enumerate(parts):
        out = vector.insert_strided_slice(part, out, [i * LANES], [1])
    return out


def build_max_matcher(name: str, batched: bool, src: Sequence[int], dim: int
                      ) -> transform.NamedSequenceOp:
    """`@name(%op) -> (src, acc, op)`: a multi-reduction with exactly the step's types (run
    on `<maximumf>` reductions only: kind "maximumf" in `apply_helpers`)."""
    return build_operand_matcher(name, "vector.multi_reduction", max_types(batched, src, dim))


def emit_maxima(spec: str, batched: bool, maxima: Sequence[tuple[Sequence[int], int]]
                ) -> list[Helper]:
    """For each (src, dim) of `maxima`, whose types must fix the dim (`maxima_forced`), the
    helper, matcher and action of a row-maximum step of spec `spec`, at the current insertion
    point (the transform library's module body)."""
    helpers = []
    for i, (src, dim) in enumerate(maxima):
        if not maxima_forced(src, dim):
            raise ValueError(f"a maximum over dim {dim} of {list(src)} is ambiguous by type")
        helpers.append(emit_helper(
            f"{spec}_max{i}_vmaxps", lambda h, s=src, d=dim: build_max_helper(h, batched, s, d),
            f"{spec}_max{i}_match", lambda m, s=src, d=dim: build_max_matcher(m, batched, s, d),
            f"{spec}_max{i}_vmaxps_call", inputs=2, kind="maximumf"))
    return helpers


# --- exp on vscalefps ----------------------------------------------------------------------

SCALEF_INTRINSIC = "llvm.x86.avx512.mask.scalef.ps.512"  # a * 2^floor(b), masked, rounding
ROUND_INTRINSIC = "llvm.x86.avx512.mask.rndscale.ps.512"  # round to an integer, masked
MIN_INTRINSIC = "llvm.x86.avx512.min.ps.512"
LOG2E_HI = 1.4426950216293335  # float32(log2(e)); LOG2E_HI + LOG2E_LO = log2(e) to ~1e-16
LOG2E_LO = 1.925963033500e-08
# 2^f = e^(f ln 2) on |f| <= 1/2: Taylor coefficients (ln 2)^k / k!, k = 0..6 (error below
# 1.2e-7 relative, about one f32 ulp).
EXP2_TAYLOR = (1.0, 0.6931471805599453, 0.2402265069591007, 0.05550410866482158,
               0.009618129107628477, 0.0013333558146428443, 0.00015403530393381606)
EXP_INPUT_RANGE = (-110.0, 128.0)  # e^x rounds to 0 below, to +inf above


def exp_type(batched: bool, shape: Sequence[int]) -> ir.Type:
    """The f32 vector type `[1,] shape` of an exp step (query rows last)."""
    return ir.VectorType.get(([1] if batched else []) + list(shape), ir.F32Type.get())


def build_exp_helper(symbol: str, batched: bool, shape: Sequence[int]) -> util.FuncOp:
    """`util.func private @symbol(%x) -> same type`: e^x lane by lane, as 2^n · 2^f with n =
    round(x·log2 e) (`vrndscaleps`), f = x·log2 e - n by two FMAs (log2 e split in two f32
    constants), 2^f by a degree-6 polynomial and the scaling by `vscalefps`: 12 instructions
    per 16 lanes where IREE's `math.exp` lowering takes about 20 (it rebuilds 2^n from
    integer bits and clamps twice).

    Results stay within a few f32 ulps of e^x. x is first clamped to [-110, 128] with
    `vmaxps` / `vminps` ordered so that a NaN x comes back as NaN: below -110 the result
    underflows to exactly 0 (a masked score's -inf gives 0), above 128 it is +inf."""
    rows = shape[-1]
    if rows % LANES:
        raise ValueError(f"rows must be a multiple of {LANES} for the exp helper, got {rows}")
    t = exp_type(batched, shape)
    lead = [0] if batched else []
    f32 = ir.F32Type.get()
    f32x16 = ir.VectorType.get([LANES], f32)
    i32, i16 = ir.IntegerType.get_signless(32), ir.IntegerType.get_signless(16)
    fn = util.FuncOp(symbol, ir.TypeAttr.get(ir.FunctionType.get([t], [t])),
                     sym_visibility="private")
    block = fn.body.blocks.append(t)
    (x,) = block.arguments
    with ir.InsertionPoint(block):
        def splat(value: float) -> ir.Value:
            return arith.ConstantOp(f32x16, ir.DenseElementsAttr.get_splat(
                f32x16, ir.FloatAttr.get(f32, value))).result

        def call(name: str, args: list[ir.Value]) -> ir.Value:
            return llvm.call_intrinsic(f32x16, name, args, [], [])

        lo, hi = (splat(v) for v in EXP_INPUT_RANGE)
        log2e_hi, log2e_lo = splat(LOG2E_HI), splat(LOG2E_LO)
        coeffs = [splat(c) for c in EXP2_TAYLOR]
        current = arith.ConstantOp(i32, 4).result  # rounding: the current mode (nearest)
        nearest = arith.ConstantOp(i32, 8).result  # rndscale: to nearest even, no exception
        all_lanes = arith.ConstantOp(i16, -1).result
        result = x
        for idx in itertools.product(*(range(n) for n in shape[:-1])):
            where = lead + list(idx)
            row = vector.extract(x, [], where) if where else x
            parts = []
            for h in range(0, rows, LANES):
                v = vector.extract_strided_slice(f32x16, row, [h], [LANES], [1])
                v = call(MIN_INTRINSIC, [hi, call(MAX_INTRINSIC, [lo, v, current]), current])
                n = call(ROUND_INTRINSIC, [arith.mulf(v, log2e_hi), nearest, v, all_lanes,
                                           current])
                f = math.fma(v, log2e_hi, arith.negf(n))
                f = math.fma(v, log2e_lo, f)
                p = coeffs[-1]
                for c in reversed(coeffs[:-1]):
                    p = math.fma(p, f, c)
                parts.append(call(SCALEF_INTRINSIC, [p, n, p, all_lanes, current]))
            out = parts[0] if rows == LANES else _concat(parts)
            result = vector.insert(out, result, [], where) if where else out
        util.return_([result])
    return fn


def build_exp_matcher(name: str, batched: bool, shape: Sequence[int]
                      ) -> transform.NamedSequenceOp:
    """`@name(%op) -> (x, op)`: a `math.exp` of exactly the step's f32 vector type."""
    return build_operand_matcher(name, "math.exp", [exp_type(batched, shape)])


def emit_exps(spec: str, batched: bool, shapes: Sequence[Sequence[int]]) -> list[Helper]:
    """The helper, matcher and action of an exp step of spec `spec` for each shape, at the
    current insertion point (the transform library's module body)."""
    return [emit_helper(f"{spec}_exp{i}_scalef",
                        lambda h, s=shape: build_exp_helper(h, batched, s),
                        f"{spec}_exp{i}_match", lambda m, s=shape: build_exp_matcher(m, batched, s),
                        f"{spec}_exp{i}_scalef_call", inputs=1)
            for i, shape in enumerate(shapes)]
