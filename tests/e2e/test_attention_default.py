"""IREE's default pipeline on attention, through tdkit's harness: compile, run, verify against
the float64 reference (f32 and f16, causal and not, both payload forms)."""

from __future__ import annotations

import pytest

from tdkit.matchers.attention_problem import Attention
from tdkit.matchers.dtypes import DType
from tdkit.tools.harness import run_problem

CASES = [
    (Attention(batch=(2,), m=64, k2=64, d=32), "attention"),
    (Attention(batch=(2, 3), m=37, k2=53, d=16, causal=True), "attention"),
    (Attention(batch=(2,), m=40, k2=72, d=32, dtype=DType.F16), "attention"),
    (Attention(batch=(1, 2), m=33, k2=33, d=16, dtype=DType.F16, causal=True), "attention"),
    (Attention(batch=(2,), m=48, k2=80, d=16, n=24, mask=True), "attention"),
    (Attention(batch=(2, 2), m=32, k2=64, d=16, causal=True), "chain"),
]


@pytest.mark.parametrize(("problem", "form"), CASES, ids=[f"{p.label} {f}" for p, f in CASES])
def test_default_pipeline_attention(problem: Attention, form: str) -> None:
    res = run_problem(problem, "default", form=form)
    d = res.as_dict()
    assert d["ok"], d["reason"]
    assert d["strategy"] == "default" and d["applied"]
    assert d["max_abs_err"] <= d["tolerance"]
