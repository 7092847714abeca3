"""A strategy that did not run is an error: iree-compile's silent fallback must be caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from iree.compiler import ir

from tdkit.matchers.problems import Softmax
from tdkit.tools.applied import LOAD_FAILURE, check_applied
from tdkit.tools.errors import NotAppliedError
from tdkit.tools.toolchain import compile_module


def _softmax_payload() -> str:
    with ir.Context(), ir.Location.unknown():
        return str(Softmax((64, 128)).build_payload())


def _is_softmax(d) -> bool:
    return "softmax" in d.name


# Tiny hand-written fixtures: a library that does not parse, and one that parses but whose
# matcher never fires. Real libraries are built with the bindings (strategies/).
BROKEN_LIBRARY = """module attributes {transform.with_named_sequence} {
  transform.named_sequence @__kernel_config(%root: !transform.any_op {transform.consumed})
      -> !transform.any_op {
    this is not valid transform IR
  }
}"""

NEVER_MATCHES = """module attributes {transform.with_named_sequence} {
  transform.named_sequence @tdkit_never(%v: !transform.any_op {transform.consumed}) {
    transform.yield
  }
  transform.named_sequence @match_nothing(%op: !transform.any_op {transform.readonly})
      -> !transform.any_op {
    transform.match.operation_name %op ["tdkit.no_such_op"] : !transform.any_op
    transform.yield %op : !transform.any_op
  }
  transform.named_sequence @annotate(%op: !transform.any_op {transform.readonly}) {
    transform.yield
  }
  transform.named_sequence @__kernel_config(%root: !transform.any_op {transform.consumed})
      -> !transform.any_op {
    %r = transform.foreach_match in %root @match_nothing -> @annotate
        : (!transform.any_op) -> !transform.any_op
    transform.yield %r : !transform.any_op
  }
}"""


def test_iree_compile_silently_falls_back_and_tdkit_catches_it(tmp_path: Path) -> None:
    art = compile_module(_softmax_payload(), tmp_path, strategy=BROKEN_LIBRARY)
    # The premise: iree-compile exited 0 and built a module anyway.
    assert art.vmfb.is_file()
    assert LOAD_FAILURE in art.stderr
    with pytest.raises(NotAppliedError, match="could not load the transform library"):
        check_applied(art, _is_softmax)


def test_library_that_matches_nothing_is_not_applied(tmp_path: Path) -> None:
    art = compile_module(_softmax_payload(), tmp_path, strategy=NEVER_MATCHES)
    assert art.vmfb.is_file() and LOAD_FAILURE not in art.stderr
    with pytest.raises(NotAppliedError, match="not applied to: .*softmax.*default:"):
        check_applied(art, _is_softmax)


def test_expected_count_mismatch(tmp_path: Path) -> None:
    art = compile_module(_softmax_payload(), tmp_path)
    with pytest.raises(NotAppliedError, match="expected 2 targeted"):
        check_applied(art, _is_softmax, expected=2)


def test_default_dispatches_name_their_pipeline(tmp_path: Path) -> None:
    from tdkit.tools.applied import dispatches

    art = compile_module(_softmax_payload(), tmp_path)
    (d,) = dispatches(art)
    assert "softmax" in d.name and not d.by_tdkit
    assert d.strategy.startswith("default:#iree_cpu.pipeline<") and d.strategy.endswith(">")
