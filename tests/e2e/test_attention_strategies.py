"""The attention families end to end: compile with the flash / config strategy, check that it
applied, run, and compare with the float64 reference. Shapes are small but cover partial tiles
(77, 197, 1000, 100 x 300), head dims 40-128, value dim != head dim, several batch dims,
causal and additive masks (with fully masked rows), f32 / f16 / bf16 and an explicit scale.
One test inspects the lowered dispatch for buffers or vectors of size M x K2; the last ones run
the pre-dispatch-formation matchers on the IR a preprocessing spec sees."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from iree.compiler import ir
from iree.compiler.dialects import transform

from tdkit.matchers.attention import (
    MASK_BROADCAST,
    MASK_FULL,
    MASK_NONE,
    build_attention_matcher,
)
from tdkit.matchers.attention_problem import Attention
from tdkit.matchers.dtypes import DType
from tdkit.strategies import x86_bf16
from tdkit.tools.harness import HarnessConfig, build, execute, run_problem
from tdkit.tools.inspect import strategy_ir
from tdkit.tools.toolchain import CompileOptions, compile_module, run_module

F32, F16, BF16 = DType.F32, DType.F16, DType.BF16

# The outer-product register blocks `fit` picks for f32 calls whose M is a multiple of 32 (or
# that are large), set explicitly so that these cases exercise them whatever `fit` picks.
BLOCKED = {"outer_products": "true", "rows": "32", "key_tile": "8", "value_tile": "4",
           "max_split": "2"}
BLOCKED_HALF = {**BLOCKED, "value_tile": "8"}  # what `fit` picks for f16 / bf16

# (problem, strategy, knobs)
CASES = [
    (Attention((2,), 100, 300, 64), "flash", None),                  # M != K2, both partial
    (Attention((2, 3), 77, 77, 40), "flash", None),                  # batch x heads, D = 40
    (Attention((1,), 197, 197, 80), "flash", None),                  # batch 1 (rank-4 op)
    (Attention((2,), 48, 1000, 64), "flash", None),                  # K2 = 1000
    (Attention((2,), 64, 96, 128), "flash", None),                   # D = 128
    (Attention((2,), 100, 64, 64, n=32), "flash", None),             # N != D
    (Attention((2, 2), 77, 120, 64, causal=True), "flash", None),    # causal (i1 mask)
    (Attention((2,), 100, 300, 64, mask=True), "flash", None),       # additive mask
    (Attention((2,), 64, 200, 64, causal=True, mask=True), "flash", None),
    (Attention((2,), 64, 128, 64, scale=0.05), "flash", None),       # explicit scale
    (Attention((2,), 197, 100, 64, dtype=F16), "flash", None),
    (Attention((2,), 77, 130, 64, dtype=BF16, causal=True), "flash", None),
    (Attention((2,), 64, 77, 64, n=80, dtype=F16, mask=True), "flash", None),
    (Attention((1,), 5, 3, 16), "flash", None),                      # tiles fitted to 4 x 2
    (Attention((2,), 100, 300, 64, mask=True), "flash",
     {"layout": "rows", "lowering": "iree", "rows": "8"}),
    (Attention((2,), 100, 300, 64, mask=True), "flash", BLOCKED),     # partial M and K2 tiles
    (Attention((2, 2), 77, 120, 40, n=80, causal=True), "flash", BLOCKED),
    (Attention((1,), 197, 100, 128), "flash", BLOCKED),              # 64 KiB of stack allocs
    (Attention((2,), 77, 130, 64, dtype=BF16, causal=True), "flash", BLOCKED_HALF),
    (Attention((2,), 64, 77, 128, n=80, dtype=F16, mask=True), "flash", BLOCKED_HALF),
    (Attention((2,), 100, 300, 64), "config", None),
    (Attention((2, 3), 77, 77, 40, causal=True), "config", None),
    (Attention((2,), 64, 128, 128, dtype=BF16, mask=True), "config", None),
]


def _id(case) -> str:
    problem, strategy, knobs = case
    extra = " " + ",".join(f"{k}={v}" for k, v in knobs.items()) if knobs else ""
    return f"{strategy} {problem.label}{extra}"


@pytest.mark.parametrize(("problem", "strategy", "knobs"), CASES, ids=[_id(c) for c in CASES])
def test_attention_strategy_matches_reference(problem: Attention, strategy: str,
                                              knobs: dict[str, str] | None) -> None:
    res = run_problem(problem, strategy, knobs=knobs)
    d = res.as_dict()
    assert d["applied"], d
    targeted = [x for x in d["dispatches"] if "attention" in x["name"]]
    assert len(targeted) == 1 and targeted[0]["strategy"].startswith(
        f"tdkit_attention_{strategy}_"), d["dispatches"]
    assert d["ok"], d["reason"]
    assert d["max_abs_err"] <= d["tolerance"]


def _run_with_inputs(problem: Attention, strategy: str, inputs: list[np.ndarray],
                     tmp_path: Path, knobs: dict[str, str] | None = None
                     ) -> tuple[np.ndarray, object]:
    cfg = HarnessConfig(artifacts=tmp_path)
    expected = problem.reference(inputs)
    b = build(problem, "attention", strategy, knobs, tmp_path / strategy, cfg)
    execute(b, problem, inputs, expected)
    return expected, b


@pytest.mark.parametrize(("dtype", "knobs"), [(F32, None), (BF16, None), (F16, None),
                                              (F32, BLOCKED), (BF16, BLOCKED_HALF)],
                         ids=["f32", "bf16", "f16", "f32 outer products",
                              "bf16 outer products"])
def test_flash_fully_masked_rows_are_the_uniform_average(dtype: DType, knobs, tmp_path: Path
                                                         ) -> None:
    # Every 5th query row of the first batch element masks every key with finfo.min. IREE's
    # own decomposition (exp2, mask x log2(e)) turns those rows into NaN for f32 / bf16;
    # flash decomposes with exp and matches the float64 reference.
    problem = Attention((2,), 100, 300, 64, mask=True, dtype=dtype)
    inputs = problem.make_inputs(0, fully_masked_rows=True)
    _, b = _run_with_inputs(problem, "flash", inputs, tmp_path, knobs)
    assert b.verdict.ok, b.verdict.reason


def test_config_fully_masked_rows_are_nan_for_f32(tmp_path: Path) -> None:
    # Documented limitation of the config family (IREE's DecomposeAttentionPass forces
    # use_exp2): the fully masked rows come out NaN, every other row is correct.
    problem = Attention((2,), 100, 300, 64, mask=True)
    inputs = problem.make_inputs(0, fully_masked_rows=True)
    expected, b = _run_with_inputs(problem, "config", inputs, tmp_path)
    assert not b.verdict.ok
    shape, dt = problem.output_spec()
    (out,) = run_module(b.artifact.vmfb, inputs, [(shape, dt.numpy)], tmp_path / "rerun")
    masked = np.zeros(shape[:-1], dtype=bool)
    masked[0, 1::5] = True
    assert np.isnan(out[masked]).all()
    assert np.abs(out[~masked] - expected[~masked]).max() < 2e-5


_SHAPED = re.compile(r"\b(memref|vector|tensor)<")


def _shaped_types(text: str) -> list[tuple[str, list[int], str]]:
    """Every memref / vector / tensor type in `text`: (kind, static shape, full type text)."""
    found = []
    for match in _SHAPED.finditer(text):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"<": 1, ">": -1}.get(text[i], 0)
            i += 1
        body = text[match.end():i - 1]
        dims = re.match(r"((?:\d+x)+)", body)
        shape = [int(x) for x in dims.group(1).rstrip("x").split("x")] if dims else []
        found.append((match.group(1), shape, body))
    return found


@pytest.mark.parametrize("dtype", [DType.F32, DType.BF16])
def test_causal_flash_computes_its_mask_in_the_dispatch(dtype: DType) -> None:
    """A causal-only problem compiles as one dispatch: the library asks IREE to clone the mask
    generator into the attention dispatch, and flash computes each mask tile in its key loop
    (K2 = 4096: the workgroup's rows x K2 mask would exceed the 32 KiB stack limit)."""
    problem = Attention((1,), 64, 4096, 64, causal=True, dtype=dtype)
    res = run_problem(problem, "flash", compare_default=True)
    d = res.as_dict()
    assert d["ok"] and d["applied"], d
    assert [x["strategy"] for x in d["dispatches"]] == \
        [f"tdkit_attention_flash_nb_boolmask_{dtype.value}"]
    assert res.default is not None and len(res.default.dispatches) == 2  # mask + attention


@pytest.mark.parametrize(("problem", "knobs"), [
    (Attention((2,), 96, 320, 64), None),
    (Attention((2,), 96, 320, 64, causal=True), None),
    (Attention((2,), 96, 320, 64), {"layout": "rows", "lowering": "iree", "rows": "8"}),
    (Attention((2,), 96, 320, 64, causal=True), BLOCKED),
], ids=["flash", "flash causal", "flash rows layout", "flash outer products causal"])
def test_no_m_by_k2_buffer_or_vector_in_the_lowered_dispatch(problem: Attention,
                                                             knobs: dict[str, str] | None,
                                                             tmp_path: Path) -> None:
    text = strategy_ir(problem, "flash", knobs, form=None, cfg=HarnessConfig(artifacts=tmp_path))
    assert "no_pipeline" in text
    m, k2 = problem.m, problem.k2
    offenders = set()
    for kind, shape, body in _shaped_types(text):
        if "#hal.descriptor_type" in body:
            continue  # the dispatch's own input/output bindings (e.g. an M x K2 mask input)
        big = shape and int(np.prod(shape)) >= m * k2
        if big or (m in shape and k2 in shape) or (kind == "memref" and k2 in shape):
            offenders.add(f"{kind}<{body}>")
    assert not offenders, f"M x K2-sized buffers/vectors in the lowered dispatch: {offenders}"


def test_flash_outer_products_keep_a_rolled_head_dim_loop_over_the_packed_query(
        filecheck, tmp_path: Path) -> None:
    # The packed Q tile is a (k1, m) stack buffer, and Q·Kᵀ walks the head dim in a loop (by 4)
    # of contiguous 32-row loads from it: if the pack or the rolled loop went away, the key loop
    # would be unrolled over the head dim again (twice the 32 KiB L1 instruction cache at head
    # dim 128) and Q read by element gathers.
    text = strategy_ir(Attention((2,), 96, 320, 64), "flash", BLOCKED, form=None,
                       cfg=HarnessConfig(artifacts=tmp_path))
    filecheck(text, """
CHECK: %[[Q:.*]] = memref.alloca() alignment = 64 : memref<1x1x64x32xf32>
CHECK: scf.for %{{.*}} = %c0 to %c320 step %c8
CHECK: scf.for %[[D:.*]] = %c0 to %c64 step %c4 iter_args(%{{.*}}) -> (vector<8x32xf32>)
CHECK: vector.load %[[Q]][%c0, %c0, %[[D]], %c0] : memref<1x1x64x32xf32>, vector<32xf32>
""")


@pytest.mark.skipif(not x86_bf16.host_supports(), reason="needs a CPU with AVX512_BF16")
@pytest.mark.parametrize("batch", [(1,), (2,)], ids=["unbatched", "batched"])
def test_flash_bf16_runs_both_matmuls_on_vdpbf16ps(batch, filecheck, tmp_path: Path) -> None:
    # bf16 outer-product blocks: the dispatch right after the strategy calls vdpbf16ps for
    # Q·Kᵀ (8 keys x 2 halves of 32 rows per head-dim pair) and P·V (8 value columns x 2
    # halves per key pair), with no widening multiply left, and rounds the probabilities with
    # vcvtne2ps2bf16; a remainder key tile of 5 (K2 = 133) keeps the widening FMAs for its
    # odd key (and IREE's truncf). Numerics against the float64 reference.
    problem = Attention(batch, 64, 133, 64, dtype=BF16)
    text = strategy_ir(problem, "flash", BLOCKED_HALF, form=None,
                       cfg=HarnessConfig(artifacts=tmp_path / "ir"))
    filecheck(text, """
CHECK: llvm.call_intrinsic "llvm.x86.avx512bf16.dpbf16ps.512"
CHECK-SAME: (vector<16xf32>, vector<32xbf16>, vector<32xbf16>) -> vector<16xf32>
CHECK-NOT: util.func
""")
    assert text.count("llvm.x86.avx512bf16.dpbf16ps.512") >= 2 * 8 * 2
    # The full key tiles' probabilities are rounded by vcvtne2ps2bf16 (8 keys x 32 rows).
    assert text.count("llvm.x86.avx512bf16.cvtne2ps2bf16.512") >= 8
    d = run_problem(problem, "flash", knobs=BLOCKED_HALF,
                    cfg=HarnessConfig(artifacts=tmp_path / "run")).as_dict()
    assert d["applied"] and d["ok"], d
    assert d["max_abs_err"] <= d["tolerance"]


@pytest.mark.parametrize("knobs", [None, BLOCKED], ids=["16 rows", "32-row outer products"])
def test_flash_vectorizes_the_normalize_of_a_partial_row_tile(knobs, filecheck,
                                                             tmp_path: Path) -> None:
    # 197 query rows: the last row tile is partial, so the fused normalize has a dynamic row
    # count in every workgroup; padded to the row tile (`pad_normalize`) it divides whole
    # vectors instead of running IREE's scalar loop (one divf per element).
    problem = Attention((2,), 197, 64, 64)
    text = strategy_ir(problem, "flash", knobs, form=None, cfg=HarnessConfig(artifacts=tmp_path))
    rows = 32 if knobs else 16
    filecheck(text, f"""
CHECK: arith.divf %{{{{.*}}}}, %{{{{.*}}}} : vector<{rows}x64xf32>
CHECK-NOT: arith.divf %{{{{.*}}}}, %{{{{.*}}}} : f32
""")


@pytest.mark.parametrize("problem", [
    Attention((8,), 256, 256, 64),
    Attention((8,), 256, 256, 64, dtype=BF16),
    Attention((2,), 128, 128, 64, causal=True),
], ids=["f32", "bf16", "causal"])
def test_flash_splits_the_running_max_in_the_dispatch(problem: Attention, tmp_path: Path) -> None:
    # The split is guarded by operand types (only full key tiles): if the guard stopped
    # matching, the chain of maxima would silently come back. 16 keys in one chain lower to
    # 16 element-wise maxima per key step; 4 partial chains of 4 plus the combining 4 (and
    # the split's own) are fewer. With `vmaxps` (the default) the full tiles' maxima are
    # vmaxps calls and fewer maximumf are left than without.
    def dispatch(knobs: dict[str, str]) -> str:
        return strategy_ir(problem, "flash", knobs, form=None,
                           cfg=HarnessConfig(artifacts=tmp_path / str(knobs)))

    off = {"vmaxps": "false"}
    assert (dispatch(off).count("arith.maximumf")
            < dispatch({**off, "max_split": "0"}).count("arith.maximumf"))
    default = dispatch({})
    assert "llvm.x86.avx512.max.ps.512" in default
    assert default.count("arith.maximumf") < dispatch(off).count("arith.maximumf")


# --- Matchers before dispatch formation, on the IR a preprocessing spec really sees ----------

PRE_MATCHERS = [
    ("none_b2_f32", dict(batch_rank=2, dtype=F32, mask=MASK_NONE,
                         sizes={"m": [64], "k2": [128]})),
    ("full_b1_f16", dict(batch_rank=1, dtype=F16, mask=MASK_FULL)),
    ("bcast_b1_bf16", dict(batch_rank=1, dtype=BF16, mask=MASK_BROADCAST)),
]


def _marking_spec() -> str:
    """`@__transform_main`: foreach_match over PRE_MATCHERS; each action annotates the matched
    attention op with `tdkit.matched = "<matcher name>"`."""
    with ir.Context(), ir.Location.unknown():
        module = ir.Module.create()
        module.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
        any_op = transform.AnyOpType.get()
        readonly = [{"transform.readonly": ir.UnitAttr.get()}]
        with ir.InsertionPoint(module.body):
            for name, kw in PRE_MATCHERS:
                build_attention_matcher(name, **kw)
                mark = transform.NamedSequenceOp(f"{name}_mark", [any_op], [], arg_attrs=readonly)
                with ir.InsertionPoint(mark.body):
                    param = transform.ParamConstantOp(transform.AnyParamType.get(),
                                                      ir.StringAttr.get(name)).result
                    transform.AnnotateOp(mark.bodyTarget, "tdkit.matched", param=param)
                    transform.YieldOp()
            main = transform.NamedSequenceOp("__transform_main", [any_op], [],
                                             arg_attrs=[{"transform.consumed": ir.UnitAttr.get()}])
            with ir.InsertionPoint(main.body):
                refs = [ir.FlatSymbolRefAttr.get(n) for n, _ in PRE_MATCHERS]
                acts = [ir.FlatSymbolRefAttr.get(f"{n}_mark") for n, _ in PRE_MATCHERS]
                transform.ForeachMatchOp(any_op, [], main.bodyTarget, [], ir.ArrayAttr.get(refs),
                                         ir.ArrayAttr.get(acts))
                transform.YieldOp()
        module.operation.verify()
        return str(module)


@pytest.mark.parametrize(("problem", "expected"), [
    (Attention((2, 3), 64, 128, 32), ["none_b2_f32"]),
    (Attention((2, 3), 64, 100, 32), []),                       # sizes pinned to k2 = 128
    (Attention((2,), 64, 128, 32, mask=True, dtype=F16), ["full_b1_f16"]),
    (Attention((2,), 64, 128, 32, causal=True, dtype=BF16), ["bcast_b1_bf16"]),
    (Attention((2,), 64, 128, 32, causal=True, dtype=F32), []),  # no f32 causal matcher
], ids=lambda x: x.label if isinstance(x, Attention) else str(x))
def test_attention_matchers_before_dispatch_formation(problem: Attention, expected: list[str],
                                                      tmp_path: Path) -> None:
    spec = tmp_path / "spec.mlir"
    spec.write_text(_marking_spec())
    with ir.Context(), ir.Location.unknown():
        payload = str(problem.build_payload("attention"))
    opts = CompileOptions(compile_to="preprocessing", extra_flags=(
        f"--iree-preprocessing-transform-spec-filename={spec}",))
    art = compile_module(payload, tmp_path / "out", opts)
    assert re.findall(r'tdkit.matched = "(\w+)"', art.vmfb.read_text()) == expected
