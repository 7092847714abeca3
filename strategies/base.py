"""Shared vocabulary of strategy families: the knob-validation error."""

from __future__ import annotations


class KnobError(ValueError):
    """A strategy knob value, or a combination of knobs, that cannot produce a correct kernel."""


def require(cond: bool, msg: str) -> None:
    """Raise KnobError(msg) unless `cond` holds."""
    if not cond:
        raise KnobError(msg)
