"""Compare computed outputs with the float64 reference and return a Verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Verdict:
    """The outcome of one numerical comparison."""

    ok: bool
    max_abs_err: float
    tolerance: float
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "max_abs_err": self.max_abs_err, "tolerance": self.tolerance,
                "reason": self.reason}


def compare(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> Verdict:
    """Max absolute error of `actual` (any float storage type) against `expected`."""
    if actual.shape != expected.shape:
        return Verdict(False, float("inf"), tolerance,
                       f"shape {actual.shape} != expected {expected.shape}")
    a = actual.astype(np.float64)
    e = np.asarray(expected, dtype=np.float64)
    bad_a, bad_e = ~np.isfinite(a), ~np.isfinite(e)
    if (bad_a != bad_e).any():
        idx = tuple(int(i) for i in np.argwhere(bad_a != bad_e)[0])
        return Verdict(False, float("inf"), tolerance,
                       f"non-finite value mismatch at {idx}: got {a[idx]}, expected {e[idx]}")
    diff = np.abs(np.where(bad_e, 0.0, a - e))
    err = float(diff.max()) if diff.size else 0.0
    if err > tolerance:
        idx = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape))
        return Verdict(False, err, tolerance,
                       f"max abs error {err:.3g} > {tolerance:g} at {idx}: "
                       f"got {a[idx]:.6g}, expected {e[idx]:.6g}")
    return Verdict(True, err, tolerance)
