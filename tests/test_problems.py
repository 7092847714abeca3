"""Problem specs: payload IR (FileCheck), validation, seeded inputs and float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from iree.compiler import ir

from tdkit.matchers.dtypes import DType, parse_dtype
from tdkit.matchers.problems import Softmax, parse_shape


def _payload(problem: Softmax, form: str) -> str:
    with ir.Context(), ir.Location.unknown():
        module = problem.build_payload(form)
        assert module.operation.verify()
        return str(module)


def test_softmax_named_op_payload(filecheck) -> None:
    text = _payload(Softmax((7, 3, 1001), 1, DType.F16), "softmax")
    filecheck(text, """
CHECK: func.func @main(%[[X:.*]]: tensor<7x3x1001xf16>) -> tensor<7x3x1001xf16>
CHECK: %[[E:.*]] = tensor.empty() : tensor<7x3x1001xf16>
CHECK: linalg.softmax dimension(1) ins(%[[X]] : tensor<7x3x1001xf16>) outs(%[[E]]
CHECK-NOT: linalg.generic
""")


def test_softmax_decomposed_payload(filecheck) -> None:
    text = _payload(Softmax((333, 1000), -1, DType.F32), "generic")
    filecheck(text, """
CHECK-DAG: #[[FULL:.*]] = affine_map<(d0, d1) -> (d0, d1)>
CHECK-DAG: #[[ROW:.*]] = affine_map<(d0, d1) -> (d0)>
CHECK: %[[NEGINF:.*]] = arith.constant 0xFF800000 : f32
CHECK: %[[MAXINIT:.*]] = linalg.fill ins(%[[NEGINF]] : f32) outs({{.*}} : tensor<333xf32>)
CHECK: %[[MAX:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]
CHECK-SAME: outs(%[[MAXINIT]] : tensor<333xf32>)
CHECK: arith.maximumf
CHECK: %[[SUB:.*]] = linalg.generic {{.*}}ins(%{{.*}}, %[[MAX]] :
CHECK: arith.subf
CHECK-NOT: math.exp
CHECK: linalg.yield
CHECK: %[[EXP:.*]] = linalg.generic {{.*}}ins(%[[SUB]] :
CHECK: math.exp
CHECK: %[[SUM:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]
CHECK-SAME: ins(%[[EXP]] : tensor<333x1000xf32>)
CHECK: arith.addf
CHECK: linalg.generic {{.*}}ins(%[[EXP]], %[[SUM]] :
CHECK: arith.divf
CHECK-NOT: linalg.softmax
""")


def test_softmax_fused_sub_exp_payload(filecheck) -> None:
    text = _payload(Softmax((64, 100), -1, DType.F32), "generic_fused")
    filecheck(text, """
CHECK: %[[MAX:.*]] = linalg.generic
CHECK: arith.maximumf
CHECK: %[[EXP:.*]] = linalg.generic {{.*}}ins(%{{.*}}, %[[MAX]] :
CHECK-NEXT: ^bb0
CHECK-NEXT: arith.subf
CHECK-NEXT: math.exp
CHECK: linalg.generic {{.*}}ins(%[[EXP]] :
CHECK: arith.addf
""")


def test_softmax_validation() -> None:
    with pytest.raises(ValueError, match="rank 1 to 4"):
        Softmax((2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="out of range"):
        Softmax((4, 4), dim=2)
    with pytest.raises(ValueError, match="positive"):
        Softmax((4, 0))
    assert Softmax((4, 5), dim=-2).axis == 0


def test_parse_helpers() -> None:
    assert parse_shape("2x12x128") == (2, 12, 128)
    with pytest.raises(ValueError, match="bad shape"):
        parse_shape("2xx3")
    with pytest.raises(ValueError, match="unsupported dtype"):
        parse_dtype("f64")


@pytest.mark.parametrize("dtype", list(DType))
def test_softmax_inputs_are_seeded_and_reference_is_a_distribution(dtype: DType) -> None:
    p = Softmax((5, 7, 9), dim=1, dtype=dtype)
    a, b = p.make_inputs(3), p.make_inputs(3)
    assert a[0].dtype == dtype.numpy and np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], p.make_inputs(4)[0])
    ref = p.reference(a)
    assert ref.dtype == np.float64 and ref.shape == p.shape
    np.testing.assert_allclose(ref.sum(axis=1), 1.0, rtol=1e-12)
    x = a[0].astype(np.float64)[:, :, 0]
    naive = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ref[:, :, 0], naive, rtol=1e-9)
