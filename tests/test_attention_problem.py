"""Tests of the attention problem: validation, payload IR (FileCheck), reference, end to end."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from iree.compiler import ir

from tdkit.matchers.attention_problem import FULLY_MASKED_ROWS, Attention
from tdkit.matchers.dtypes import TOLERANCES, DType
from tdkit.tools.toolchain import compile_module, run_module

from .conftest import run_filecheck


def _ir_text(problem: Attention, form: str) -> str:
    with ir.Context(), ir.Location.unknown():
        module = problem.build_payload(form)
        assert module.operation.verify()
        return str(module)


def _filecheck(text: str, checks: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_filecheck(text, checks, Path(tmp))


# ------------------------------------------------------------------------- validation & sizes


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(batch=(), m=4, k2=4, d=4), "at least one batch dimension"),
    (dict(batch=(2, 0), m=4, k2=4, d=4), "batch[1] must be a positive integer"),
    (dict(batch=(2,), m=-1, k2=4, d=4), "size m must be a positive integer"),
    (dict(batch=(2,), m=4, k2=4.0, d=4), "size k2 must be a positive integer"),
    (dict(batch=(2,), m=4, k2=4, d=4, n=0), "size n must be a positive integer"),
    (dict(batch=(2,), m=4, k2=4, d=True), "size d must be a positive integer"),
    (dict(batch="2", m=4, k2=4, d=4), "batch must be a tuple"),
    (dict(batch=(2,), m=4, k2=4, d=4, dtype="f64"), "unsupported attention dtype"),
    (dict(batch=(2,), m=4, k2=4, d=4, scale=float("inf")), "not finite"),
    (dict(batch=(2,), m=4, k2=4, d=4, scale=1e6, dtype=DType.F16), "not finite in f16"),
    (dict(batch=(2,), m=4, k2=4, d=4, scale="0.5"), "scale must be a number"),
])
def test_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Attention(**kwargs)


def test_normalization_and_properties() -> None:
    p = Attention([2, np.int64(12)], 128, 256, 64, dtype="f16", causal=1)
    assert p.batch == (2, 12) and isinstance(p.batch[1], int)
    assert p.dtype is DType.F16 and p.causal is True
    assert p.value_dim == 64 and p.effective_scale == 0.125
    assert p.kind == "attention" and p.forms == ("attention", "chain")
    assert p.flops == 4 * 24 * 128 * 256 * 64
    assert p.label == "attention 2x12x128x256x64 causal f16"
    assert p.input_specs() == [((2, 12, 128, 64), DType.F16), ((2, 12, 256, 64), DType.F16),
                               ((2, 12, 256, 64), DType.F16)]
    assert p.output_spec() == ((2, 12, 128, 64), DType.F16)
    assert p.bytes == 2 * 24 * (128 * 64 + 2 * 256 * 64 + 128 * 64)
    hash(p)  # frozen and hashable

    q = Attention((3,), 5, 7, 48, n=8, mask=True, scale=0.3)
    assert q.value_dim == 8
    assert q.flops == 2 * 3 * 5 * 7 * 48 + 2 * 3 * 5 * 7 * 8
    assert q.input_specs()[3] == ((3, 5, 7), DType.F32)
    assert q.bytes == 4 * 3 * (5 * 48 + 7 * 48 + 7 * 8 + 5 * 7 + 5 * 8)
    assert q.label == "attention 3x5x7x48 n=8 scale=0.3 mask f32"
    assert q.effective_scale == float(np.float32(0.3))
    # 1/sqrt(48) is not representable: the payload and reference use the rounded value.
    r = Attention((1,), 2, 2, 48, dtype=DType.BF16)
    assert r.effective_scale == float(ml_dtypes.bfloat16(1 / math.sqrt(48)))


def test_unknown_form() -> None:
    with ir.Context(), ir.Location.unknown(), pytest.raises(ValueError, match="unknown attention"):
        Attention((1,), 2, 2, 2).build_payload("flash")


# ------------------------------------------------------------------------- payload IR

PAYLOAD_CASES = [
    Attention((2,), 8, 12, 16),
    Attention((2, 3), 5, 7, 4, n=6, causal=True),
    Attention((2, 3), 5, 7, 4, mask=True, dtype=DType.F16),
    Attention((2, 2, 2), 5, 7, 4, n=3, causal=True, mask=True, dtype=DType.BF16),
]


@pytest.mark.parametrize("form", ["attention", "chain"])
@pytest.mark.parametrize("problem", PAYLOAD_CASES, ids=lambda p: p.label.replace(" ", "_"))
def test_payload_verifies_and_roundtrips(problem: Attention, form: str) -> None:
    text = _ir_text(problem, form)
    with ir.Context():
        reparsed = ir.Module.parse(text)
        assert reparsed.operation.verify()
        assert str(reparsed) == text
    main = text[text.index("func.func @main"):]
    assert main.count("%arg") >= len(problem.input_specs())


def test_filecheck_attention_plain() -> None:
    text = _ir_text(Attention((2,), 8, 12, 16, n=24), "attention")
    _filecheck(text, """
CHECK-DAG: #[[Q:.+]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d2)>
CHECK-DAG: #[[K:.+]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d3, d2)>
CHECK-DAG: #[[V:.+]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d3, d4)>
CHECK-DAG: #[[S:.+]] = affine_map<(d0, d1, d2, d3, d4) -> ()>
CHECK-DAG: #[[O:.+]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d4)>
CHECK: func.func @main(%[[QA:.+]]: tensor<2x8x16xf32>, %[[KA:.+]]: tensor<2x12x16xf32>,
CHECK-SAME: %[[VA:.+]]: tensor<2x12x24xf32>) -> tensor<2x8x24xf32>
CHECK: %[[SC:.+]] = arith.constant 2.500000e-01 : f32
CHECK: %[[INIT:.+]] = tensor.empty() : tensor<2x8x24xf32>
CHECK: iree_linalg_ext.attention <indexing_maps = [#[[Q]], #[[K]], #[[V]], #[[S]], #[[O]]]>
CHECK-SAME: ins(%[[QA]], %[[KA]], %[[VA]], %[[SC]] :
CHECK-SAME: outs(%[[INIT]] : tensor<2x8x24xf32>)
CHECK-NEXT: ^bb0(%[[X:.+]]: f32):
CHECK-NEXT: iree_linalg_ext.yield %[[X]] : f32
CHECK: -> tensor<2x8x24xf32>
CHECK-NOT: linalg.generic
""")


def test_filecheck_attention_causal_is_i1_mask() -> None:
    text = _ir_text(Attention((2, 3), 5, 7, 4, causal=True, dtype=DType.F16), "attention")
    _filecheck(text, """
CHECK-DAG: #[[MASK:.+]] = affine_map<(d0, d1, d2, d3, d4, d5) -> (d2, d4)>
CHECK: func.func @main
CHECK: arith.constant 5.000000e-01 : f16
CHECK: %[[KEEP:.+]] = linalg.generic
CHECK-SAME: outs(%{{.+}} : tensor<5x7xi1>)
CHECK: %[[I:.+]] = linalg.index 0
CHECK: %[[J:.+]] = linalg.index 1
CHECK: arith.cmpi ule, %[[J]], %[[I]]
CHECK: iree_linalg_ext.attention <indexing_maps = [{{.*}}, #[[MASK]], {{.*}}]>
CHECK-SAME: %[[KEEP]] : {{.*}} f16, tensor<5x7xi1>)
CHECK-SAME: outs(%{{.+}} : tensor<2x3x5x4xf16>)
CHECK-NEXT: ^bb0(%{{.+}}: f32):
""")


def test_filecheck_attention_causal_with_user_mask() -> None:
    text = _ir_text(Attention((2,), 5, 7, 4, causal=True, mask=True), "attention")
    _filecheck(text, """
CHECK: func.func @main({{.*}}, %[[M:.+]]: tensor<2x5x7xf32>)
CHECK-DAG: %[[NEGINF:.+]] = arith.constant 0xFF800000 : f32
CHECK: %[[COMB:.+]] = linalg.generic {{.*}} ins(%[[M]] : tensor<2x5x7xf32>)
CHECK: ^bb0(%[[IN:.+]]: f32, %{{.+}}: f32):
CHECK: arith.cmpi ule
CHECK: arith.select %{{.+}}, %[[IN]], %[[NEGINF]] : f32
CHECK: iree_linalg_ext.attention
CHECK-SAME: %[[COMB]] : {{.*}}, tensor<2x5x7xf32>)
""")


def test_filecheck_chain_f16_multi_batch() -> None:
    text = _ir_text(Attention((2, 3), 5, 7, 4, n=6, causal=True, mask=True, dtype=DType.F16),
                    "chain")
    _filecheck(text, """
CHECK-DAG: #[[MQ:.+]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>
CHECK-DAG: #[[MK:.+]] = affine_map<(d0, d1, d2, d3) -> (d0, d2, d3)>
CHECK-DAG: #[[MS:.+]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>
CHECK: func.func @main(%[[Q:.+]]: tensor<2x3x5x4xf16>, %[[K:.+]]: tensor<2x3x7x4xf16>,
CHECK-SAME: %[[V:.+]]: tensor<2x3x7x6xf16>, %[[M:.+]]: tensor<2x3x5x7xf16>)
CHECK-SAME: -> tensor<2x3x5x6xf16>
CHECK: %[[Q3:.+]] = tensor.collapse_shape %[[Q]] {{\\[\\[}}0, 1], [2], [3]]
CHECK-SAME: : tensor<2x3x5x4xf16> into tensor<6x5x4xf16>
CHECK: %[[K3:.+]] = tensor.collapse_shape %[[K]]
CHECK: %[[V3:.+]] = tensor.collapse_shape %[[V]]
CHECK: %[[M3:.+]] = tensor.collapse_shape %[[M]]
CHECK: %[[S:.+]] = linalg.batch_matmul indexing_maps = [#[[MQ]], #[[MK]], #[[MS]]]
CHECK-SAME: ins(%[[Q3]], %[[K3]] : tensor<6x5x4xf16>, tensor<6x7x4xf16>)
CHECK-SAME: outs(%{{.+}} : tensor<6x5x7xf32>)
CHECK: %[[SM:.+]] = linalg.generic
CHECK-SAME: ins(%[[S]], %[[M3]] : tensor<6x5x7xf32>, tensor<6x5x7xf16>)
CHECK: arith.mulf
CHECK: arith.extf
CHECK: arith.addf
CHECK: arith.cmpi ule
CHECK: arith.select
CHECK: %[[P:.+]] = linalg.softmax dimension(2) ins(%[[SM]] : tensor<6x5x7xf32>)
CHECK: %[[PH:.+]] = linalg.generic
CHECK-SAME: ins(%[[P]] : tensor<6x5x7xf32>) outs(%{{.+}} : tensor<6x5x7xf16>)
CHECK: arith.truncf
CHECK: %[[O:.+]] = linalg.batch_matmul
CHECK-SAME: ins(%[[PH]], %[[V3]] : tensor<6x5x7xf16>, tensor<6x7x6xf16>)
CHECK-SAME: outs(%{{.+}} : tensor<6x5x6xf32>)
CHECK: %[[OH:.+]] = linalg.generic
CHECK-SAME: ins(%[[O]] : tensor<6x5x6xf32>) outs(%{{.+}} : tensor<6x5x6xf16>)
CHECK: %[[R:.+]] = tensor.expand_shape %[[OH]] {{\\[\\[}}0, 1], [2], [3]] output_shape [2, 3, 5, 6]
CHECK: return %[[R]] : tensor<2x3x5x6xf16>
""")


def test_filecheck_chain_f32_single_batch() -> None:
    text = _ir_text(Attention((4,), 8, 8, 16), "chain")
    _filecheck(text, """
CHECK: func.func @main
CHECK-NOT: tensor.collapse_shape
CHECK: linalg.batch_matmul indexing_maps
CHECK: arith.constant 2.500000e-01 : f32
CHECK: linalg.generic
CHECK-NOT: arith.select
CHECK: linalg.softmax dimension(2)
CHECK-NOT: arith.truncf
CHECK: %[[O:.+]] = linalg.batch_matmul ins
CHECK-NOT: tensor.expand_shape
CHECK: return %[[O]] : tensor<4x8x16xf32>
""")


# ------------------------------------------------------------------------- inputs & reference


def _naive(problem: Attention, inputs: list[np.ndarray]) -> np.ndarray:
    """Row by row with Python loops over keys: the obvious definition."""
    q, k, v = (x.astype(np.float64) for x in inputs[:3])
    mask = inputs[3].astype(np.float64) if problem.mask else None
    out = np.zeros(problem.output_spec()[0])
    for b in np.ndindex(*problem.batch):
        for i in range(problem.m):
            keys = [j for j in range(problem.k2) if not problem.causal or j <= i]
            s = [problem.effective_scale * float(q[b][i] @ k[b][j])
                 + (mask[b][i, j] if mask is not None else 0.0) for j in keys]
            top = max(s)
            w = [math.exp(x - top) for x in s]
            total = sum(w)
            out[b][i] = sum(wj / total * v[b][j] for wj, j in zip(w, keys, strict=True))
    return out


@pytest.mark.parametrize("problem", [
    Attention((2,), 5, 7, 4),
    Attention((2, 2), 6, 4, 3, n=5, causal=True, mask=True, scale=0.7),
    Attention((1,), 4, 9, 8, causal=True, dtype=DType.BF16),
    Attention((3,), 5, 5, 4, mask=True, dtype=DType.F16),
], ids=lambda p: p.label.replace(" ", "_"))
def test_reference_matches_naive(problem: Attention) -> None:
    inputs = problem.make_inputs(seed=3)
    ref = problem.reference(inputs)
    assert ref.dtype == np.float64 and ref.shape == problem.output_spec()[0]
    np.testing.assert_allclose(ref, _naive(problem, inputs), rtol=1e-12, atol=1e-12)


def test_reference_probabilities() -> None:
    # With V = identity (N = K2) the output is P itself: rows sum to 1, causal zeros above.
    p = Attention((2,), 6, 6, 4, causal=True)
    q, k, _ = p.make_inputs(seed=1)
    eye = np.broadcast_to(np.eye(6, dtype=np.float32), (2, 6, 6))
    probs = p.reference([q, k, eye])
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=0, atol=1e-14)
    assert np.all(probs >= 0)
    assert np.all(probs[:, np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0)
    # Row 0 attends only key 0, so it equals V row 0.
    qq, kk, vv = p.make_inputs(seed=2)
    np.testing.assert_array_equal(p.reference([qq, kk, vv])[:, 0], vv[:, 0].astype(np.float64))


def test_reference_fully_masked_rows() -> None:
    # f32/bf16 finfo.min swamps the scores in float64 too: a uniform average of the V rows.
    for dtype in (DType.F32, DType.BF16):
        p = Attention((1,), 11, 9, 4, dtype=dtype, mask=True)
        ins = p.make_inputs(seed=0, fully_masked_rows=True)
        ref = p.reference(ins)
        np.testing.assert_allclose(ref[0, 1], ins[2][0].astype(np.float64).mean(axis=0),
                                   rtol=0, atol=1e-12)
    # f16 finfo.min = -65504 keeps the scores: the row equals the unmasked row.
    p = Attention((1,), 11, 9, 4, dtype=DType.F16, mask=True)
    ins = p.make_inputs(seed=0, fully_masked_rows=True)
    unmasked = Attention((1,), 11, 9, 4, dtype=DType.F16).reference(ins[:3])
    np.testing.assert_allclose(p.reference(ins)[0, 1], unmasked[0, 1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", list(DType))
def test_make_inputs(dtype: DType) -> None:
    p = Attention((2, 3), 10, 20, 8, n=5, mask=True, dtype=dtype)
    a, b = p.make_inputs(seed=7), p.make_inputs(seed=7)
    c = p.make_inputs(seed=8)
    assert len(a) == 4
    for x, y, z, (shape, dt) in zip(a, b, c, p.input_specs(), strict=True):
        assert x.shape == shape and x.dtype == dt.numpy
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)
    for x in a[:3]:
        assert np.all(np.abs(x.astype(np.float64)) <= 1.0)
    mask = a[3].astype(np.float64)
    lowest = float(ml_dtypes.finfo(dtype.numpy).min)
    hidden = mask == lowest
    assert 0.1 < hidden.mean() < 0.3
    assert not hidden[..., 0].any()  # key 0 stays visible: no fully masked rows by default
    assert np.all((mask[~hidden] >= -2.0) & (mask[~hidden] <= 0.0))
    full = p.make_inputs(seed=7, fully_masked_rows=True)[3].astype(np.float64)
    assert np.all(full[0, 0, 1::5] == lowest)
    assert not (full == lowest).all(axis=-1)[0, 0, 0]
    with pytest.raises(ValueError, match="mask=True"):
        Attention((1,), 2, 2, 2).make_inputs(fully_masked_rows=True)


def test_reference_rejects_wrong_input_count() -> None:
    p = Attention((1,), 2, 2, 2, mask=True)
    with pytest.raises(ValueError, match="needs 4 inputs"):
        p.reference(p.make_inputs()[:3])


# ------------------------------------------------------------------------- end to end

def _compile_and_run(problem: Attention, form: str, inputs: list[np.ndarray],
                     workdir: Path) -> np.ndarray:
    """Compile `form` with IREE's default pipeline for the host CPU, run `main` and return the
    output as float64 (through tdkit's one door to the iree-* tools)."""
    art = compile_module(_ir_text(problem, form), workdir)
    shape, dt = problem.output_spec()
    (out,) = run_module(art.vmfb, inputs, [(shape, dt.numpy)], workdir / "run")
    return out.astype(np.float64)


@pytest.mark.parametrize("form", ["attention", "chain"])
@pytest.mark.parametrize("dtype", list(DType))
@pytest.mark.parametrize(("causal", "mask"), [(False, False), (True, False), (False, True),
                                              (True, True)])
def test_e2e(form: str, dtype: DType, causal: bool, mask: bool, tmp_path: Path) -> None:
    problem = Attention((2, 3), 37, 53, 16, n=24, dtype=dtype, causal=causal, mask=mask)
    inputs = problem.make_inputs(seed=0)
    got = _compile_and_run(problem, form, inputs, tmp_path)
    err = float(np.max(np.abs(got - problem.reference(inputs))))
    assert err <= TOLERANCES[dtype], f"{problem.label} {form}: max error {err:.3g}"


@pytest.mark.parametrize("form", ["attention", "chain"])
@pytest.mark.parametrize("problem", [
    Attention((1,), 53, 37, 16, causal=True),                      # M > K2
    Attention((2,), 1, 19, 8, causal=True, mask=True),             # M = 1
    Attention((2, 2, 2), 9, 11, 5, n=7, scale=0.3, mask=True),     # 3 batch dims, odd D
    Attention((2,), 48, 48, 48, n=40, scale=0.1, mask=True, dtype=DType.F16),
], ids=lambda p: p.label.replace(" ", "_"))
def test_e2e_shapes(problem: Attention, form: str, tmp_path: Path) -> None:
    inputs = problem.make_inputs(seed=1)
    got = _compile_and_run(problem, form, inputs, tmp_path)
    err = float(np.max(np.abs(got - problem.reference(inputs))))
    assert err <= TOLERANCES[problem.dtype], f"{problem.label} {form}: max error {err:.3g}"


@pytest.mark.parametrize("form", ["attention", "chain"])
@pytest.mark.parametrize("dtype", list(DType))
def test_e2e_fully_masked_rows(form: str, dtype: DType, tmp_path: Path) -> None:
    """Records what each form does with fully masked rows (see FULLY_MASKED_ROWS)."""
    problem = Attention((2, 3), 37, 53, 16, dtype=dtype, causal=True, mask=True)
    inputs = problem.make_inputs(seed=0, fully_masked_rows=True)
    got = _compile_and_run(problem, form, inputs, tmp_path)
    ref = problem.reference(inputs)
    rows = np.zeros(problem.output_spec()[0][:-1], dtype=bool)
    rows[0, 0, 1::5] = True
    tol = TOLERANCES[dtype]
    # Rows with a visible key are always right.
    assert float(np.max(np.abs(got[~rows] - ref[~rows]))) <= tol
    outcome = FULLY_MASKED_ROWS[(form, dtype)]
    if outcome == "nan":
        assert np.isnan(got[rows]).all()
    elif outcome.startswith("reference"):
        assert float(np.max(np.abs(got[rows] - ref[rows]))) <= tol
    else:  # finite but imprecise
        assert np.isfinite(got[rows]).all()
        assert float(np.max(np.abs(got[rows] - ref[rows]))) <= 0.05
