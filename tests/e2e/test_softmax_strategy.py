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


@pytest.mark.parametrize(("limit", "exps"), [(2048, 1), (0, 2)])
def test_whole_row_computes_each_exp_once(tmp_path, limit: int, exps: int) -> None:
    """Rows vectorized whole: the sum and the normalization share one `math.exp` of the row
    vector; tiled rows compute exp(x - max) in both loops. Both verify."""
    from tdkit.tools.inspect import strategy_ir

    problem = Softmax((64, 256), -1, F32)
    knobs = {"whole_row_limit": str(limit)}
    cfg = HarnessConfig(artifacts=tmp_path)
    ir_text = strategy_ir(problem, "softmax_cpu", knobs, form=None, cfg=cfg)
    exp_ops = [ln for ln in ir_text.splitlines() if "math.exp" in ln]
    assert len(exp_ops) == exps, exp_ops
    assert ("vector<256xf32>" in exp_ops[0]) == (limit > 0), exp_ops
    res = run_problem(problem, "softmax_cpu", knobs=knobs, cfg=cfg).as_dict()
    assert res["ok"] and res["applied"], res
    assert res["dispatches"][0]["strategy"].endswith("_row") == (limit > 0)
