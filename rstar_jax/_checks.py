"""Argument checks shared by every layer, so that each wrong value gets the same message."""

from __future__ import annotations

import numbers


def positive_int(value, name: str) -> int:
    """`value` as an int when it is a positive integer (a Python or NumPy int, not a bool); else
    ValueError naming the argument and the value seen."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
