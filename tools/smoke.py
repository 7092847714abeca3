"""The smoke matrix: built-in problems x strategies x dtypes, each compiled, run, verified and
timed against IREE's default pipeline; a pass/fail table, JUnit XML, non-zero exit on failure.
With a GPU `--target`, the GPU matrix: compiled and checked here, run where the GPU exists.

It is how a user checks a new IREE release, a local compiler build (`--compiler`), or their own
strategy."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdkit.matchers.dtypes import DType
from tdkit.matchers.problems import Softmax
from tdkit.tools.errors import EXIT_FAILED, EXIT_OK, BadInputError, TdkitError, ToolError
from tdkit.tools.harness import HarnessConfig, run_problem


@dataclass(frozen=True)
class Case:
    """One row of the matrix."""

    problem: Any
    strategy: str
    form: str | None = None
    levels: tuple[str, ...] = ("quick", "full")

    @property
    def name(self) -> str:
        form = f" [{self.form}]" if self.form else ""
        return f"{self.problem.label}{form} :: {self.strategy}"


def _attention(batch: tuple[int, ...], m: int, k2: int, d: int, dtype: DType, **kw: Any) -> Any:
    from tdkit.matchers.attention_problem import Attention

    return Attention(batch=batch, m=m, k2=k2, d=d, dtype=dtype, **kw)


def matrix() -> list[Case]:
    """Every built-in case; `levels` says which runs include it."""
    f32, f16, bf16 = DType.F32, DType.F16, DType.BF16
    sm = "softmax_cpu"
    full = ("full",)
    cases = [
        Case(Softmax((512, 1024), -1, f32), sm),
        Case(Softmax((333, 1000), -1, f32), sm),
        Case(Softmax((7, 3, 1001), -1, f32), sm),
        Case(Softmax((1000, 64), 0, f32), sm),
        Case(Softmax((512, 1024), -1, f16), sm),
        Case(Softmax((333, 1000), -1, f32), sm, form="generic"),
        Case(Softmax((1000,), -1, f32), sm, levels=full),
        Case(Softmax((2, 3, 17, 129), -1, f32), sm, levels=full),
        Case(Softmax((7, 3, 1001), 1, f32), sm, levels=full),
        Case(Softmax((333, 1000), -1, f16), sm, levels=full),
        Case(Softmax((64, 32768), -1, f32), sm, levels=full),
        Case(Softmax((512, 1024), -1, bf16), sm, levels=full),
        Case(Softmax((7, 3, 1001), -1, f16), sm, form="generic", levels=full),
        Case(_attention((2,), 128, 128, 64, f32), "flash"),
        Case(_attention((2, 2), 77, 197, 64, f32, causal=True), "flash"),
        Case(_attention((2,), 128, 128, 64, bf16), "flash"),
        Case(_attention((2,), 100, 300, 64, f32), "config"),
        Case(_attention((2, 2), 64, 64, 64, f16, causal=True), "config"),
        Case(_attention((2,), 100, 300, 40, f32, mask=True), "flash", levels=full),
        Case(_attention((1, 2), 128, 128, 128, f16, causal=True), "flash", levels=full),
        Case(_attention((2,), 197, 197, 80, f32, n=64), "flash", levels=full),
        Case(_attention((2,), 128, 256, 64, bf16, causal=True), "config", levels=full),
        Case(_attention((2,), 64, 64, 32, f32), "default"),
        Case(_attention((2, 3), 37, 53, 16, f16, causal=True), "default"),
        Case(_attention((2,), 100, 300, 64, f32), "default", levels=full),
        Case(_attention((1, 2), 128, 128, 64, f32, causal=True), "default", form="chain",
             levels=full),
        Case(_attention((2,), 64, 64, 32, bf16), "default", levels=full),
    ]
    return cases


def gpu_matrix() -> list[Case]:
    """The GPU cases (`--target cuda:...|rocm:...`): compiled and checked everywhere, run,
    verified and timed where the GPU exists."""
    f32, f16, bf16 = DType.F32, DType.F16, DType.BF16
    sm, fl, full = "softmax_gpu", "flash_gpu", ("full",)
    return [
        Case(Softmax((512, 1024), -1, f32), sm),
        Case(Softmax((333, 1000), -1, f16), sm),
        Case(Softmax((4, 8, 128, 256), -1, bf16), sm, levels=full),
        Case(Softmax((64, 32768), -1, f32), sm, levels=full),
        Case(_attention((2, 4), 256, 256, 64, f16), fl),
        Case(_attention((1, 4), 197, 197, 64, bf16, causal=True), fl),
        Case(_attention((2, 4), 256, 256, 64, f32), fl, levels=full),
        Case(_attention((2, 2), 256, 256, 128, f16, mask=True), fl, levels=full),
        Case(_attention((2,), 128, 128, 64, f16), "default"),
    ]


def _row(case: Case, cfg: HarnessConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        res = run_problem(case.problem, case.strategy, form=case.form,
                          compare_default=case.strategy != "default", timing=True, cfg=cfg)
        row = res.as_dict()
    except ToolError as err:
        row = {"ok": False, "reason": err.one_line()}
    except TdkitError as err:
        row = {"ok": False, "reason": str(err)}
    row.update(case=case.name, seconds=time.perf_counter() - t0)
    row.setdefault("strategy", case.strategy)
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'case':<60} {'applied':>7} {'max err':>9} {'ms':>9} {'default':>9} "
            f"{'speedup':>8}  result")
    lines = [head, "-" * len(head)]
    def fmt(v: Any, spec: str, suffix: str = "") -> str:
        return "-" if v is None else format(v, spec) + suffix

    for r in rows:
        lines.append(
            f"{r['case']:<60} {str(r.get('applied', '-')):>7} "
            f"{fmt(r.get('max_abs_err'), '.2e'):>9} {fmt(r.get('time_ms'), '.4f'):>9} "
            f"{fmt(r.get('default_time_ms'), '.4f'):>9} {fmt(r.get('speedup'), '.2f', 'x'):>8}  "
            f"{_result(r)}")
        if not r["ok"] and r.get("reason"):
            lines.append(f"    reason: {r['reason']}")
    passed = sum(r["ok"] for r in rows)
    lines.append(f"{passed}/{len(rows)} passed")
    return "\n".join(lines)


def _result(row: dict[str, Any]) -> str:
    if not row["ok"]:
        return "FAIL"
    return "PASS (compiled only)" if row.get("not_run") else "PASS"


def write_junit(rows: list[dict[str, Any]], path: Path) -> None:
    """JUnit XML with one testcase per row, failures carrying their reason."""
    suite = ET.Element("testsuite", name="tdkit-smoke", tests=str(len(rows)),
                       failures=str(sum(not r["ok"] for r in rows)))
    for r in rows:
        tc = ET.SubElement(suite, "testcase", classname=f"tdkit.smoke.{r['strategy']}",
                           name=r["case"], time=f"{r['seconds']:.3f}")
        if not r["ok"]:
            ET.SubElement(tc, "failure", message=r.get("reason") or "failed")
        props = ET.SubElement(tc, "properties")
        for key in ("max_abs_err", "tolerance", "time_ms", "default_time_ms", "speedup"):
            if r.get(key) is not None:
                ET.SubElement(props, "property", name=key, value=str(r[key]))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def run_smoke(*, level: str, strategies: list[str] | None, junit: Path | None, as_json: bool,
              cfg: HarnessConfig) -> int:
    """Run the matrix at `level` ("quick" or "full"), print the table (or JSON), write JUnit."""
    cases = [c for c in (gpu_matrix() if cfg.compile.is_gpu else matrix()) if level in c.levels
             and (not strategies or c.strategy in strategies)]
    if not cases:
        raise BadInputError(f"no smoke case uses strategy {', '.join(strategies or [])}")
    rows = []
    for case in cases:
        row = _row(case, cfg)
        rows.append(row)
        if not as_json:
            print(f"[{len(rows)}/{len(cases)}] {_result(row)} {case.name} "
                  f"({row['seconds']:.1f} s)", flush=True)
    if junit:
        write_junit(rows, junit)
    if as_json:
        print(json.dumps({"ok": all(r["ok"] for r in rows), "cases": rows}, default=str))
    else:
        print()
        print(_table(rows))
        if any(r.get("not_run") for r in rows):
            print(next(r["not_run"] for r in rows if r.get("not_run")))
    return EXIT_OK if all(r["ok"] for r in rows) else EXIT_FAILED
