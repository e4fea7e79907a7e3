"""Stage 3 of grading: multiple-choice letters, one ("(A)", "A.", "(A) 12") or a set of them
("A, C, F", "ACF"); the package docstring says when the letters decide."""

from __future__ import annotations

import re

_CHOICE_SINGLE = re.compile(r"^\(?([A-Z])\)?[.:]?$|^\(([A-Z])\)\s*\S.*$|^([A-J])[.):]\s+\S.*$")
_CHOICE_SET = re.compile(r"^\(?[A-H]\)?(?:\s*,?\s*\(?[A-H]\)?)+$")


def choice(s: str) -> str | frozenset | None:
    """A single choice letter, a set of several letters, or None."""
    if _CHOICE_SET.match(s):
        letters = re.findall(r"[A-H]", s)
        if len(set(letters)) == len(letters):
            return frozenset(letters)
    m = _CHOICE_SINGLE.match(s)
    if m:
        return next(g for g in m.groups() if g)
    return None
