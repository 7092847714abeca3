"""`vdpbf16ps` for the flash kernel's bf16 score blocks: two head-dim products per lane.

IREE 3.13 never emits `vdpbf16ps` (AVX512_BF16): it registers no `x86vector` dialect, and LLVM
does not form the instruction from `fpext` + `fma` (it rounds differently). A bf16 kernel
therefore widens every element to f32 and runs f32 FMAs, at best the f32 rate, while this
instruction does 32 bf16 products (16 pairs) per FMA slot.

This module puts both matmuls of the `outer_products` kernel on it. The packed Q·Kᵀ's head-dim
loop and P·V's keys are stepped by 2 (`unroll_matmuls`), so each vectorized step is

    acc(j, m) += sum over p < 2 of extf(A[p, j, m]) * extf(B[p, j, m])

(a `vector.multi_reduction <add>` over the pair of `arith.mulf(arith.extf, arith.extf)`: for
Q·Kᵀ, j is the key and A, B the broadcast Q rows and K elements; for P·V, j is the value
column and A, B the broadcast P columns and V elements). A matcher (`build_pair_matcher`)
finds exactly these reductions by their types; its action imports a helper `util.func`
(`build_dot_helper`) from the transform library into the dispatch's module and inlines it in
place of the reduction (the mechanism is `tdkit.strategies.x86_helpers`). The helper
interleaves each pair of 16-lane slices and calls `llvm.x86.avx512bf16.dpbf16ps.512` through
`llvm.call_intrinsic`: lane i gets A[0,i]·B[0,i] + A[1,i]·B[1,i], which is the reduction's
own definition for any A and B, so the operand order does not matter. Q·Kᵀ is packed so that
Q's pairs are stored side by side (`pack_query_rows`); its step takes the packed Q pairs and
K's pair as they are (`build_packed_qk_helper`). P·V's B is a broadcast of two V rows along
the query rows; its matcher checks that and hands the helper the rows (`uniform_pv`), from
which it builds each column's pair with two 16-bit broadcast loads and a blend. The same
mechanism rounds the key step's probability tile to bf16 with `vcvtne2ps2bf16`
(`build_trunc_helper`).

The products are exact and summed in f32 (the instruction flushes denormals): results differ
from the widening path in the last f32 bits, far inside the bf16 tolerance.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from iree.compiler import ir
from iree.compiler.dialects import arith, llvm, transform, util, vector
from iree.compiler.dialects import preprocessing_transform as pre

from tdkit.strategies import x86_helpers

INTRINSIC = "llvm.x86.avx512bf16.dpbf16ps.512"
# Two 16-lane f32 vectors (a, b) to 32 bf16 lanes [b, a], rounding to nearest even.
CVT2_INTRINSIC = "llvm.x86.avx512bf16.cvtne2ps2bf16.512"
CVT_INTRINSIC = "llvm.x86.avx512bf16.cvtneps2bf16.512"  # one 16-lane f32 vector
LANES = 16  # f32 lanes of one vdpbf16ps (512 bits)
CPU_FLAG = "avx512_bf16"  # /proc/cpuinfo


def host_supports() -> bool:
    """Whether this machine's CPU has AVX512_BF16 (the library targets the host CPU)."""
    return x86_helpers.host_has(CPU_FLAG)


def pair_types(batched: bool, mid: Sequence[int], rows: int
               ) -> tuple[ir.Type, ir.Type, ir.Type]:
    """(accumulator, bf16 operand, f32 product) vector types of one block step:
    `[1,] mid x rows` f32 and `[1,] 2 x mid x rows`. `mid` is `(key_tile, 1)` for Q·Kᵀ's
    score block (no longer emitted: Q·Kᵀ is pair-packed, `packed_qk_types`),
    `(value_tile,)` for P·V's accumulator tile."""
    lead = [1] if batched else []
    f32, bf16 = ir.F32Type.get(), ir.BF16Type.get()
    return (ir.VectorType.get(lead + [*mid, rows], f32),
            ir.VectorType.get(lead + [2, *mid, rows], bf16),
            ir.VectorType.get(lead + [2, *mid, rows], f32))


def uniform_source_type(batched: bool, mid: Sequence[int]) -> ir.Type:
    """The bf16 vector `[1,] 2 x value_tile` a lane-uniform P·V operand is broadcast from:
    the pair of V rows (`build_dot_helper` with `uniform_b`)."""
    return ir.VectorType.get(([1] if batched else []) + [2, *mid], ir.BF16Type.get())


def uniform_pv(tag: str, mid: Sequence[int], rows: int) -> bool:
    """Whether block `tag` takes its V operand as the unbroadcast pair of V rows
    (`build_dot_helper` with `uniform_b`): P·V, when its types force the broadcast's
    permutation (`build_pair_matcher`)."""
    return tag == "pv" and rows not in (2, *mid)


def build_dot_helper(symbol: str, batched: bool, mid: Sequence[int], rows: int,
                     uniform_b: bool = False) -> util.FuncOp:
    """`util.func private @symbol(%acc, %a, %b) -> acc type` at the current insertion point:
    for every row of the block and 16-lane slice, `vdpbf16ps(acc, interleave(a0, a1),
    interleave(b0, b1))`.

    With `uniform_b`, `%b` is the `[1,] 2 x mid` source the operand is broadcast from along
    the rows (P·V's pair of V rows, `uniform_source_type`): every lane of column j gets the
    same pair (V[k, j], V[k+1, j]), built once per column from two 16-bit broadcast loads
    by a masked blend (even lanes from the first, odd from the second) instead of one
    two-source word permute per column (`vpermt2w`, whose eight index vectors and destroyed
    operand cost registers and copies): 1.06x at 8x1024x1024x64, side by side."""
    if rows % LANES:
        raise ValueError(f"rows must be a multiple of {LANES} for vdpbf16ps, got {rows}")
    acc_t, src_t, _ = pair_types(batched, mid, rows)
    b_t = uniform_source_type(batched, mid) if uniform_b else src_t
    lead = [0] if batched else []
    f32x16 = ir.VectorType.get([LANES], ir.F32Type.get())
    bf16x16 = ir.VectorType.get([LANES], ir.BF16Type.get())
    bf16x32 = ir.VectorType.get([2 * LANES], ir.BF16Type.get())
    interleave = [i // 2 + (LANES if i % 2 else 0) for i in range(2 * LANES)]
    blend = [i + (2 * LANES if i % 2 else 0) for i in range(2 * LANES)]
    fn = util.FuncOp(symbol, ir.TypeAttr.get(ir.FunctionType.get([acc_t, src_t, b_t],
                                                                 [acc_t])),
                     sym_visibility="private")
    block = fn.body.blocks.append(acc_t, src_t, b_t)
    acc, a, b = block.arguments
    with ir.InsertionPoint(block):
        result = acc
        for j in itertools.product(*(range(n) for n in mid)):
            row = vector.extract(acc, [], lead + list(j))
            a0, a1 = (vector.extract(a, [], lead + [p, *j]) for p in range(2))
            if uniform_b:
                # Each splat goes through an empty inline asm: otherwise LLVM sees through the
                # splats of the loaded V elements and folds the blend back into the permute.
                x, y = (llvm.inline_asm(bf16x32, [vector.broadcast(
                    bf16x32, vector.extract(b, [], lead + [p, *j]))], "", "=v,0")
                        for p in range(2))
                b_pair = vector.shuffle(x, y, blend)
            else:
                b0, b1 = (vector.extract(b, [], lead + [p, *j]) for p in range(2))
            for h in range(rows // LANES):
                def lanes(v: ir.Value, t: ir.Type, h: int = h) -> ir.Value:
                    return vector.extract_strided_slice(t, v, [h * LANES], [LANES], [1])
                ai = vector.shuffle(lanes(a0, bf16x16), lanes(a1, bf16x16), interleave)
                bi = (b_pair if uniform_b else
                      vector.shuffle(lanes(b0, bf16x16), lanes(b1, bf16x16), interleave))
                dot = llvm.call_intrinsic(f32x16, INTRINSIC, [lanes(row, f32x16), ai, bi],
                                          [], [])
                result = vector.insert_strided_slice(dot, result, lead + [*j, h * LANES],
                                                     [1])
        util.return_([result])
    return fn


def _match_pair_step(op: ir.Value, prod_t: ir.Type, acc_t: ir.Type
                     ) -> tuple[ir.Value, ir.Value]:
    """Inside a matcher: `op` is a `vector.multi_reduction` of a product of type `prod_t`
    into an accumulator of type `acc_t`, that product an `arith.mulf`. Returns (acc, mulf)."""
    any_op, any_value = transform.AnyOpType.get(), transform.AnyValueType.get()
    transform.MatchOperationNameOp(op, ["vector.multi_reduction"])
    pre.MatchCastCompatibleTypesOp(transform.GetOperandOp(any_value, op, [0]).result, prod_t)
    acc = transform.GetOperandOp(any_value, op, [1]).result
    pre.MatchCastCompatibleTypesOp(acc, acc_t)
    mul = transform.GetProducerOfOperand(any_op, op, 0).result
    transform.MatchOperationNameOp(mul, ["arith.mulf"])
    return acc, mul


def _match_broadcast_source(value: ir.Value, spread_t: ir.Type, src_t: ir.Type) -> ir.Value:
    """Inside a matcher: the op producing `value` is `vector.transpose(vector.broadcast(src))`
    with the broadcast of type `spread_t` and `src` of type `src_t`; returns `src`."""
    any_op, any_value = transform.AnyOpType.get(), transform.AnyValueType.get()
    moved = transform.GetProducerOfOperand(any_op, value, 0).result
    transform.MatchOperationNameOp(moved, ["vector.transpose"])
    pre.MatchCastCompatibleTypesOp(transform.GetOperandOp(any_value, moved, [0]).result,
                                   spread_t)
    bcast = transform.GetProducerOfOperand(any_op, moved, 0).result
    transform.MatchOperationNameOp(bcast, ["vector.broadcast"])
    src = transform.GetOperandOp(any_value, bcast, [0]).result
    pre.MatchCastCompatibleTypesOp(src, src_t)
    return src


def build_pair_matcher(name: str, batched: bool, mid: Sequence[int], rows: int,
                       uniform_b: bool = False) -> transform.NamedSequenceOp:
    """`@name(%op) -> (acc, a, b, op)`: a `vector.multi_reduction` of
    `arith.mulf(arith.extf(a), arith.extf(b))` with exactly the block step's types. With
    `uniform_b`, `b` must be `vector.transpose(vector.broadcast(src))` of a `[1,] 2 x mid`
    source, broadcast to `rows x [1,] 2 x mid` and moved last, and the matcher yields `src`:
    with `rows` differing from 2 and from every `mid` size the types force the permutation, so
    every lane of the operand holds the source's element (`build_dot_helper`)."""
    acc_t, src_t, prod_t = pair_types(batched, mid, rows)
    if uniform_b and rows in (2, *mid):
        raise ValueError(f"rows ({rows}) must differ from 2 and the block sizes {list(mid)}")
    uniform_t = uniform_source_type(batched, mid)
    spread_t = ir.VectorType.get([rows, *ir.VectorType(uniform_t).shape], ir.BF16Type.get())
    any_op, any_value = transform.AnyOpType.get(), transform.AnyValueType.get()
    seq = transform.NamedSequenceOp(name, [any_op], [any_value] * 3 + [any_op],
                                    arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        op = seq.bodyTarget
        acc, mul = _match_pair_step(op, prod_t, acc_t)
        operands = []
        for i in range(2):
            ext = transform.GetProducerOfOperand(any_op, mul, i).result
            transform.MatchOperationNameOp(ext, ["arith.extf"])
            value = transform.GetOperandOp(any_value, ext, [0]).result
            pre.MatchCastCompatibleTypesOp(value, src_t)
            if uniform_b and i == 1:
                value = _match_broadcast_source(ext, spread_t, uniform_t)
            operands.append(value)
        transform.YieldOp([acc, *operands, op])
    return seq


def packed_qk_types(batched: bool, key_tile: int, rows: int
                    ) -> tuple[ir.Type, ir.Type, ir.Type, ir.Type, ir.Type, ir.Type]:
    """Vector types of one step of the pair-packed Q·Kᵀ (`pack_query_rows` with pairs):
    (accumulator `[1,] kt x 1 x rows`, f32 product `[1,] 1 x kt x 1 x 2 x rows`, its bf16
    operand, Q pair source `[1,] 1 x 1 x rows x 2`, K pair source `[1,] kt x 1 x 2`, and the
    Q / K sources broadcast before their transposes)."""
    lead = [1] if batched else []
    f32, bf16 = ir.F32Type.get(), ir.BF16Type.get()
    step = lead + [1, key_tile, 1, 2, rows]
    return (ir.VectorType.get(lead + [key_tile, 1, rows], f32),
            ir.VectorType.get(step, f32),
            ir.VectorType.get(step, bf16),
            ir.VectorType.get(lead + [1, 1, rows, 2], bf16),
            ir.VectorType.get(lead + [key_tile, 1, 2], bf16),
            (ir.VectorType.get([key_tile] + lead + [1, 1, rows, 2], bf16),
             ir.VectorType.get([1, rows] + lead + [key_tile, 1, 2], bf16)))


def build_packed_qk_helper(symbol: str, batched: bool, key_tile: int, rows: int
                           ) -> util.FuncOp:
    """`util.func private @symbol(%acc, %q, %k) -> acc type`: one head-dim pair of the
    pair-packed Q·Kᵀ, `acc[j, m] += q[m, 0]·k[j, 0] + q[m, 1]·k[j, 1]`, where `%q` holds
    the rows' (Q[m, d], Q[m, d+1]) pairs side by side, so each 16-row slice of it is a
    `vdpbf16ps` operand as it is, and `%k` key j's (K[j, d], K[j, d+1]) pair, broadcast to
    every lane as one 32-bit element."""
    if rows % LANES:
        raise ValueError(f"rows must be a multiple of {LANES} for vdpbf16ps, got {rows}")
    acc_t, _, _, q_t, k_t, _ = packed_qk_types(batched, key_tile, rows)
    lead = [0] if batched else []
    f32x16 = ir.VectorType.get([LANES], ir.F32Type.get())
    bf16_t = ir.BF16Type.get()
    i32 = ir.IntegerType.get_signless(32)
    fn = util.FuncOp(symbol, ir.TypeAttr.get(ir.FunctionType.get([acc_t, q_t, k_t],
                                                                 [acc_t])),
                     sym_visibility="private")
    block = fn.body.blocks.append(acc_t, q_t, k_t)
    acc, q, k = block.arguments
    with ir.InsertionPoint(block):
        pairs = vector.shape_cast(ir.VectorType.get([2 * rows], bf16_t),
                                  vector.extract(q, [], lead + [0, 0]))
        q_lanes = [vector.extract_strided_slice(ir.VectorType.get([2 * LANES], bf16_t), pairs,
                                                [2 * h], [2 * LANES], [1])
                   for h in range(0, rows, LANES)]
        result = acc
        for j in range(key_tile):
            kj = vector.bitcast(ir.VectorType.get([1], i32), vector.extract(k, [], lead + [j, 0]))
            kb = vector.bitcast(ir.VectorType.get([2 * LANES], bf16_t),
                                vector.broadcast(ir.VectorType.get([LANES], i32), kj))
            row = vector.extract(acc, [], lead + [j, 0])
            for i, h in enumerate(range(0, rows, LANES)):
                part = vector.extract_strided_slice(f32x16, row, [h], [LANES], [1])
                dot = llvm.call_intrinsic(f32x16, INTRINSIC, [part, q_lanes[i], kb], [], [])
                result = vector.insert_strided_slice(dot, result, lead + [j, 0, h], [1])
        util.return_([result])
    return fn


def build_packed_qk_matcher(name: str, batched: bool, key_tile: int, rows: int
                            ) -> transform.NamedSequenceOp:
    """`@name(%op) -> (acc, q, k, op)`: a pair-packed Q·Kᵀ step, `vector.multi_reduction` of
    `arith.mulf(arith.extf(transpose(broadcast(q))), arith.extf(transpose(broadcast(k))))`
    with exactly the step's types, yielding the unbroadcast sources. With rows, key_tile
    and 2 distinct, the types force both transposes' permutations."""
    if len({rows, key_tile, 2}) < 3:
        raise ValueError(f"rows ({rows}), key_tile ({key_tile}) and 2 must differ")
    acc_t, prod_t, op_t, q_t, k_t, spread = packed_qk_types(batched, key_tile, rows)
    any_op, any_value = transform.AnyOpType.get(), transform.AnyValueType.get()
    seq = transform.NamedSequenceOp(name, [any_op], [any_value] * 3 + [any_op],
                                    arg_attrs=[{"transform.readonly": ir.UnitAttr.get()}])
    with ir.InsertionPoint(seq.body):
        op = seq.bodyTarget
        acc, mul = _match_pair_step(op, prod_t, acc_t)
        sources = []
        for i, (src_t, spread_t) in enumerate(zip((q_t, k_t), spread, strict=True)):
            ext = transform.GetProducerOfOperand(any_op, mul, i).result
            transform.MatchOperationNameOp(ext, ["arith.extf"])
            pre.MatchCastCompatibleTypesOp(transform.GetOperandOp(any_value, ext, [0]).result,
                                           op_t)
            sources.append(_match_broadcast_source(ext, spread_t, src_t))
        transform.YieldOp([acc, *sources, op])
    return seq


def trunc_types(batched: bool, key_tile: int, rows: int) -> tuple[ir.Type, ir.Type]:
    """(f32, bf16) vector types of the key step's probability tile `[1,] key_tile x rows`."""
    lead = [1] if batched else []
    return (ir.VectorType.get(lead + [key_tile, rows], ir.F32Type.get()),
            ir.VectorType.get(lead + [key_tile, rows], ir.BF16Type.get()))


def build_trunc_helper(symbol: str, batched: bool, key_tile: int, rows: int) -> util.FuncOp:
    """`util.func private @symbol(%p) -> bf16 vector`: the probability tile rounded to bf16
    with `vcvtne2ps2bf16` (two 16-lane vectors per instruction; `vcvtneps2bf16` for a
    16-row tile) instead of the integer emulation IREE lowers `arith.truncf` to (about eight
    instructions per 16 lanes). Both round to nearest even; the instruction also flushes
    denormals, which probabilities below 1.2e-38 do not notice."""
    if rows % LANES:
        raise ValueError(f"rows must be a multiple of {LANES} for vcvtneps2bf16, got {rows}")
    f32_t, bf16_t = trunc_types(batched, key_tile, rows)
    lead = [0] if batched else []
    f32x16 = ir.VectorType.get([LANES], ir.F32Type.get())
    width = 2 * LANES if rows % (2 * LANES) == 0 else LANES
    out_t = ir.VectorType.get([width], ir.BF16Type.get())
    fn = util.FuncOp(symbol, ir.TypeAttr.get(ir.FunctionType.get([f32_t], [bf16_t])),
                     sym_visibility="private")
    block = fn.body.blocks.append(f32_t)
    (p,) = block.arguments
    with ir.InsertionPoint(block):
        result = arith.ConstantOp(bf16_t, ir.DenseElementsAttr.get_splat(
            bf16_t, ir.FloatAttr.get(ir.BF16Type.get(), 0.0))).result
        for k in range(key_tile):
            row = vector.extract(p, [], lead + [k])
            for c in range(0, rows, width):
                halves = [vector.extract_strided_slice(f32x16, row, [c + h], [LANES], [1])
                          for h in range(0, width, LANES)]
                if width == LANES:
                    cvt = llvm.call_intrinsic(out_t, CVT_INTRINSIC, halves, [], [])
                else:  # the intrinsic puts its second operand in the low lanes
                    cvt = llvm.call_intrinsic(out_t, CVT2_INTRINSIC, halves[::-1], [], [])
                result = vector.insert_strided_slice(cvt, result, lead + [k, c], [1])
        util.return_([result])
    return fn


def build_trunc_matcher(name: str, batched: bool, key_tile: int, rows: int
                        ) -> transform.NamedSequenceOp:
    """`@name(%op) -> (p, op)`: an `arith.truncf` of an f32 vector of the probability tile's
    type. (A matcher cannot read a result's type; in a bf16 kernel every truncf of f32 goes
    to bf16.)"""
    return x86_helpers.build_operand_matcher(name, "arith.truncf",
                                             [trunc_types(batched, key_tile, rows)[0]])


def emit(spec: str, batched: bool, blocks: Sequence[tuple[str, Sequence[int]]], rows: int,
         trunc_keys: int | None = None, packed_qk: int | None = None
         ) -> list[x86_helpers.Helper]:
    """The helper, matcher and action of spec `spec`, at the current insertion point (the
    transform library's module body): with `packed_qk` (the key tile), for the pair-packed
    Q·Kᵀ step (`build_packed_qk_helper`); for each (tag, mid) block shape of `blocks`
    (`build_dot_helper`); with `trunc_keys`, for rounding the `trunc_keys x rows`
    probability tile (`build_trunc_helper`). Returns them for `x86_helpers.apply_helpers`."""
    pairs = []
    if packed_qk is not None:
        pairs.append(x86_helpers.emit_helper(
            f"{spec}_qk_dot_bf16", lambda h: build_packed_qk_helper(h, batched, packed_qk, rows),
            f"{spec}_qk_bf16_pairs_match",
            lambda m: build_packed_qk_matcher(m, batched, packed_qk, rows),
            f"{spec}_qk_bf16_pairs_dot", inputs=3))
    for tag, mid in blocks:
        uniform = uniform_pv(tag, mid, rows)
        pairs.append(x86_helpers.emit_helper(
            f"{spec}_{tag}_dot_bf16",
            lambda h, mid=mid, u=uniform: build_dot_helper(h, batched, mid, rows, u),
            f"{spec}_{tag}_bf16_pairs_match",
            lambda m, mid=mid, u=uniform: build_pair_matcher(m, batched, mid, rows, u),
            f"{spec}_{tag}_bf16_pairs_dot", inputs=3))
    if trunc_keys is not None:
        pairs.append(x86_helpers.emit_helper(
            f"{spec}_p_to_bf16", lambda h: build_trunc_helper(h, batched, trunc_keys, rows),
            f"{spec}_p_truncf_match", lambda m: build_trunc_matcher(m, batched, trunc_keys, rows),
            f"{spec}_p_truncf_cvt", inputs=1))
    return pairs
