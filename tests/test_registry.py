"""The strategy registry: knob parsing, fitting defaults to small problems, explicit values."""

from __future__ import annotations

import pytest

from tdkit.matchers.problems import Softmax
from tdkit.strategies import registry
from tdkit.strategies.base import KnobError


def test_defaults_fit_short_rows_but_explicit_knobs_are_kept() -> None:
    fam = registry.get("softmax_cpu")
    small = Softmax((2, 3, 17, 5))
    fitted = fam.parse_knobs({}, small)
    assert fitted.vector_width <= 5 and fitted.reduction_tile <= 5
    assert fitted.rows_per_workgroup > fam.knobs().rows_per_workgroup
    explicit = fam.parse_knobs({"reduction_tile": "64"}, small)
    assert explicit.reduction_tile == 64
    with pytest.raises(KnobError, match="exceeds the softmax dim"):
        fam.check(small, explicit)


def test_large_rows_keep_the_tuned_defaults() -> None:
    fam = registry.get("softmax_cpu")
    assert fam.parse_knobs({}, Softmax((512, 1024))) == fam.knobs()


def test_unknown_and_mistyped_knobs() -> None:
    fam = registry.get("softmax_cpu")
    with pytest.raises(KnobError, match="unknown knob 'tile'"):
        fam.parse_knobs({"tile": "4"})
    with pytest.raises(KnobError, match="expected a value of type int"):
        fam.parse_knobs({"vector_width": "wide"})


def test_every_family_is_listed_with_its_kinds() -> None:
    fams = registry.families()
    assert {"softmax_cpu", "flash", "config"} <= set(fams)
    assert [f.name for f in registry.for_kind("softmax", "cpu")] == ["softmax_cpu"]
    assert [f.name for f in registry.for_kind("softmax", "rocm:gfx942")] == ["softmax_gpu"]
    with pytest.raises(KeyError, match="unknown strategy"):
        registry.get("nope")
