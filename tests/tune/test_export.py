"""`tdkit export`: the exported library and tuning spec work with plain iree-compile flags, each
problem gets its own tuned entry, and the numerics are right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tdkit.matchers.attention_problem import Attention
from tdkit.matchers.dtypes import TOLERANCES
from tdkit.matchers.problems import Softmax
from tdkit.tools.applied import dispatches
from tdkit.tools.harness import payload_text
from tdkit.tools.toolchain import Artifact, run_module
from tdkit.tools.verify import compare

TDKIT = [sys.executable, "-m", "tdkit.tools.cli"]
IREE_COMPILE = str(Path(sys.executable).parent / "iree-compile")
TARGET = ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
          "--iree-llvmcpu-target-cpu=host"]
SOFTMAXES = (Softmax((64, 256)), Softmax((32, 512)))
ATTENTION = Attention(batch=(2,), m=64, k2=64, d=32)


def _cli(*args: str) -> dict:
    proc = subprocess.run([*TDKIT, *args, "--json"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TDKIT_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("export")
    db = str(tmp / "t.db")
    common = ["--db", db, "--artifacts", str(tmp / "art"), "--search", "grid",
              "--confirm-rounds", "0"]
    for problem, rows in zip(SOFTMAXES, ("2,4", "1,2"), strict=True):
        shape = "x".join(map(str, problem.shape))
        _cli("tune", "softmax", "--shape", shape, "--strategy", "softmax_cpu", *common,
             "--space", f"rows_per_workgroup={rows}", "--space", "reduction_tile=16",
             "--space", "vector_width=16")
    _cli("tune", "attention", "--shape", "2x64x64x32", "--strategy", "config", *common,
         "--space", "rows=16,32", "--space", "key_tile=4")
    out = _cli("export", "--db", db, "-o", str(tmp / "best.mlir"))
    return tmp, out


def _compile_and_run(tmp: Path, problem: object, name: str, flag: str) -> tuple[list, float]:
    where = tmp / name
    where.mkdir()
    (where / "payload.mlir").write_text(payload_text(problem, problem.forms[0]))
    configs = where / "configurations"
    proc = subprocess.run([IREE_COMPILE, "payload.mlir", *TARGET, flag,
                           f"--iree-hal-dump-executable-configurations-to={configs}",
                           "-o", "module.vmfb"], cwd=where, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    art = Artifact(dir=where, vmfb=where / "module.vmfb", payload=where / "payload.mlir",
                   strategy=None, command=[], stderr=proc.stderr, configurations=configs)
    inputs = problem.make_inputs(0)
    shape, dtype = problem.output_spec()
    (out,) = run_module(art.vmfb, inputs, [(shape, dtype.numpy)], where / "run")
    verdict = compare(out, problem.reference(inputs), TOLERANCES[dtype])
    assert verdict.ok, verdict.reason
    return [d.strategy for d in dispatches(art)], verdict.max_abs_err


def test_library_applies_each_problems_own_entry(exported: tuple[Path, dict]) -> None:
    tmp, out = exported
    library = Path(out["library"])
    by_problem = {p["problem"].split(" form=")[0]: p for p in out["problems"]}
    flag = f"--iree-codegen-transform-dialect-library={library}@__kernel_config"
    applied = {}
    for problem in (*SOFTMAXES, ATTENTION):
        strategies, _ = _compile_and_run(tmp, problem, problem.label.replace(" ", "_"), flag)
        applied[problem.label] = strategies
        want = by_problem[problem.label]["entries"]
        assert len(strategies) == 1 and strategies[0] in want, (problem.label, strategies)
    # the two softmaxes share rank and dim but got different tuned entries
    assert applied[SOFTMAXES[0].label] != applied[SOFTMAXES[1].label]


def test_tuning_spec_configures_attention(exported: tuple[Path, dict]) -> None:
    tmp, out = exported
    spec = Path(out["tuning_spec"])
    text = spec.read_text()
    assert "iree_codegen.tuning_spec_with_default_entrypoint" in text
    assert "iree_codegen.tuning_spec_entrypoint" in text
    strategies, _ = _compile_and_run(tmp, ATTENTION, "spec",
                                     f"--iree-codegen-tuning-spec-path={spec}")
    assert strategies == ["tdkit_attention_config_b_f32_t0"]


def test_export_of_an_empty_or_missing_db_is_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([*TDKIT, "export", "--db", str(tmp_path / "none.db"), "-o",
                           str(tmp_path / "x.mlir")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no such results database" in proc.stderr and "Traceback" not in proc.stderr
