"""The CPU softmax strategy end to end: compile with the strategy, check it applied, run, and
compare with the float64 reference (non-divisible sizes, non-last dims, ranks 1-4, f32/f16/bf16,
both payload forms)."""

from __future__ import annotations

import pytest

from tdkit.matchers.dtypes import DType
from tdkit.matchers.problems import Softmax
from tdkit.tools.harness import HarnessConfig, run_problem
from tdkit.tools.toolchain import CompileOptions

F32, F16, BF16 = DType.F32, DType.F16, DType.BF16

CASES = [
    (Softmax((512, 1024), -1, F32), "softmax"),
    (Softmax((333, 1000), -1, F32), "softmax"),
    (Softmax((7, 3, 1001), -1, F32), "softmax"),
    (Softmax((1000, 64), 0, F32), "softmax"),
    (Softmax((7, 3, 1001), 1, F32), "softmax"),
    (Softmax((1000,), 0, F32), "softmax"),
    (Softmax((2, 3, 17, 129), -1, F32), "softmax"),
    (Softmax((2, 3, 17, 129), 1, F32), "softmax"),
    (Softmax((512, 1024), -1, F16), "softmax"),
    (Softmax((333, 1000), -1, F16), "softmax"),
    (Softmax((7, 3, 1001), 1, F16), "softmax"),
    (Softmax((333, 1000), -1, BF16), "softmax"),
    (Softmax((333, 1000), -1, F32), "generic"),
    (Softmax((7, 3, 1001), 1, F32), "generic"),
    (Softmax((64, 2048), -1, F16), "generic"),
    (Softmax((333, 1000), -1, F32), "generic_fused"),
    (Softmax((2, 3, 17, 129), 2, F32), "generic_fused"),
]


@pytest.mark.parametrize(("problem", "form"), CASES, ids=[f"{p.label} {f}" for p, f in CASES])
def test_softmax_strategy_matches_reference(problem: Softmax, form: str) -> None:
    res = run_problem(problem, "softmax_cpu", form=form)
    d = res.as_dict()
    assert d["applied"], d
    assert d["dispatches"] and all(x["strategy"].startswith("tdkit_softmax_cpu")
                                   for x in d["dispatches"]), d["dispatches"]
    assert d["ok"], d["reason"]
    assert d["max_abs_err"] <= d["tolerance"]


def test_f16_without_native_f16_max_relinks_with_system_linker() -> None:
    """On CPUs without AVX512-FP16 the f16 max becomes an `fmaxf` libcall that IREE's embedded
    linker cannot resolve; both builds must still succeed, and say how."""
    cfg = HarnessConfig(compile=CompileOptions(cpu="znver4"))
    res = run_problem(Softmax((64, 256), -1, F16), "softmax_cpu", compare_default=True, cfg=cfg)
    assert res.ok, res.as_dict()["reason"]
    for b in (res.main, res.default):
        assert any("link-embedded=false" in n for n in b.notes), b.notes
