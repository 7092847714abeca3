"""The compiling subcommands end to end: emit, run --json --compare-default, apply, bench, smoke."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tdkit.tools.cli import main


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    rc = main(argv)
    out = capsys.readouterr()
    assert out.out.strip(), out.err
    return rc, json.loads(out.out)


def test_emit_prints_verified_library(tmp_path: Path, filecheck) -> None:
    path = tmp_path / "lib.mlir"
    assert main(["emit", "softmax", "--shape", "64x300", "-o", str(path)]) == 0
    filecheck(path.read_text(), """
CHECK: module attributes {transform.with_named_sequence}
CHECK: transform.named_sequence @tdkit_softmax_cpu_r2_d1(
CHECK: transform.named_sequence @__kernel_config(
CHECK: transform.foreach_match in
""")


def test_run_json_compare_default(capsys: pytest.CaptureFixture[str]) -> None:
    rc, d = _json(capsys, ["run", "softmax", "--shape", "96x700", "--compare-default", "--json",
                           "--rounds", "1", "--repetitions", "2"])
    assert rc == 0, d
    for key in ("ok", "strategy", "applied", "dispatches", "max_abs_err", "tolerance",
                "time_ms", "default_time_ms", "speedup"):
        assert d.get(key) is not None, key
    assert d["strategy"] == "softmax_cpu" and d["applied"] is True
    assert d["dispatches"][0]["strategy"].startswith("tdkit_softmax_cpu")
    assert d["speedup"] == pytest.approx(d["default_time_ms"] / d["time_ms"])


def test_apply_shows_lowered_dispatch(capsys: pytest.CaptureFixture[str], filecheck) -> None:
    assert main(["apply", "softmax", "--shape", "64x300"]) == 0
    filecheck(capsys.readouterr().out, """
CHECK: IR Dump After {{.*}}iree-codegen-lower-executable-using-transform-dialect
CHECK: translation_info = #iree_codegen.translation_info<pipeline = #iree_codegen.no_pipeline>
CHECK-NOT: linalg.generic
CHECK: hal.interface.workgroup.id
CHECK: vector.load {{.*}} vector<{{[0-9]+}}xf32>
CHECK: math.exp {{.*}} : vector<{{[0-9]+}}xf32>
""")


def test_bench_json_has_side_by_side_rates(capsys: pytest.CaptureFixture[str]) -> None:
    rc, d = _json(capsys, ["bench", "softmax", "--shape", "64x1024", "--json", "--rounds", "2",
                           "--repetitions", "2"])
    assert rc == 0, d
    for key in ("time_ms", "min_ms", "gbps", "default_time_ms", "speedup", "copy_gbps",
                "fraction_of_copy"):
        assert d[key] > 0, key
    assert d["min_ms"] <= d["time_ms"]


def test_bench_threads_reaches_every_timed_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    """--threads 1: IREE times with one local-task worker, the BLAS peers and torch with one
    thread; the record and the table say so."""
    rc, d = _json(capsys, ["bench", "attention", "--shape", "1x64x64x32", "--strategy",
                           "flash", "--threads", "1", "--json", "--rounds", "1",
                           "--repetitions", "1"])
    assert rc == 0, d
    assert d["timing"]["threads"] == 1
    assert d["builds"]["flash"]["ok"] and d["builds"]["default"]["ok"]
    for peer in ("sgemm_2048", "numpy"):
        assert d["peers"][peer]["time_ms"] > 0, peer
    from tdkit.tools.bench import bench_table
    assert "threads: 1 (IREE workers, BLAS, torch)" in bench_table(d).splitlines()[0]


def test_bench_variants_are_verified_and_timed_side_by_side(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Each --variant is one more verified build of the strategy, in the same rounds, with
    its speed relative to the strategy's own knobs."""
    rc, d = _json(capsys, ["bench", "attention", "--shape", "2x64x64x32", "--strategy",
                           "flash", "--knob", "value_tile=0", "--variant", "key_tile=8",
                           "--variant", "key_tile=8,max_split=0", "--json", "--no-peers",
                           "--rounds", "1", "--repetitions", "1"])
    assert rc == 0, d
    rows = d["builds"]
    assert list(rows) == ["flash", "default", "flash[key_tile=8]",
                          "flash[key_tile=8,max_split=0]"]
    for name in ("flash[key_tile=8]", "flash[key_tile=8,max_split=0]"):
        r = rows[name]
        assert r["ok"] and r["applied"] and r["max_abs_err"] < 2e-5, name
        assert r["vs_strategy"] == pytest.approx(rows["flash"]["time_ms"] / r["time_ms"])
        assert r["speedup"] == pytest.approx(rows["default"]["time_ms"] / r["time_ms"])
    # The variants' libraries carry their knobs on top of --knob.
    lib = Path(rows["flash[key_tile=8,max_split=0]"]["artifacts"]) / "strategy.mlir"
    assert "tile_sizes [0, 0, 0, 8, 0]" in lib.read_text()
    assert "split_reduction" not in lib.read_text()
    assert "split_reduction" in (Path(rows["flash[key_tile=8]"]["artifacts"])
                                 / "strategy.mlir").read_text()


def test_smoke_writes_junit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "smoke.xml"
    rc = main(["smoke", "--quick", "--strategy", "default", "--junit", str(junit)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "passed" in out
    suite = ET.parse(junit).getroot()
    cases = suite.findall("testcase")
    assert cases and int(suite.get("failures")) == 0
    assert all("default" in c.get("name") for c in cases)
