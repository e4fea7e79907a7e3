r"""Stage 5 of grading: plain numbers (integers, decimals, 1e3, a/b, \frac{a}{b}, 3\times10^{5},
0.1\overline{6}, a trailing %, thousands separators), read by our own regexes with capped
exponents and compared in exact rational arithmetic. The package docstring gives the rules."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import NamedTuple

REL_TOL = Fraction(1, 10_000)


class Number(NamedTuple):
    """A plain number as written."""

    value: Fraction  # without the percent: "50%" has value 50
    exact: bool  # no decimal point (nor exponent, for "1e3")
    percent: bool  # written with a trailing %


_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_DECIMAL_RE = re.compile(rf"^({_NUM})(?:[eE]([-+]?\d{{1,3}}))?$")
_SLASH_RE = re.compile(rf"^({_NUM})\s*/\s*({_NUM})$")
_FRAC_RE = re.compile(rf"^([-+]?)\\frac\{{\s*({_NUM})\s*\}}\{{\s*({_NUM})\s*\}}$")
_REPEATING_RE = re.compile(r"^([-+]?)(\d*)\.(\d*)\\overline\{(\d{1,20})\}$")
_SCI_RE = re.compile(
    rf"^({_NUM})\s*(?:\\times|\\cdot|\*|×)\s*10\s*\^\s*\{{?\s*([-+]?\d{{1,3}})\s*\}}?$"
)


def parse_number(s: str) -> Number | None:
    """(value, exact, percent) of a plain number, else None. Exact means no decimal point."""
    percent = s.endswith("%")
    if percent:
        s = s[:-1].strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if len(s) > 80:
        return None
    try:
        if m := _DECIMAL_RE.match(s):
            value = Fraction(m.group(1)) * Fraction(10) ** int(m.group(2) or 0)
            return Number(value, not re.search(r"[.eE]", s), percent)
        if m := _SCI_RE.match(s):
            value = Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
            return Number(value, "." not in m.group(1), percent)
        if m := _SLASH_RE.match(s):
            value = Fraction(m.group(1)) / Fraction(m.group(2))
            return Number(value, "." not in s, percent)
        if m := _REPEATING_RE.match(s):  # 0.1\overline{6} = 1/6
            sign, whole, fixed, period = m.groups()
            scale = Fraction(10) ** len(fixed)
            value = int(whole or 0) + Fraction(int(fixed or 0)) / scale
            value += Fraction(int(period), 10 ** len(period) - 1) / scale
            return Number(-value if sign == "-" else value, True, percent)
        if m := _FRAC_RE.match(s):
            value = Fraction(m.group(2)) / Fraction(m.group(3))
            return Number(-value if m.group(1) == "-" else value, "." not in s, percent)
    except (ZeroDivisionError, ValueError, OverflowError):
        return None
    return None


def _close(a: Fraction, b: Fraction, exact: bool) -> bool:
    if exact:
        return a == b
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def numbers_equal(x: Number, y: Number) -> bool:
    exact = x.exact and y.exact
    if _close(x.value, y.value, exact):
        return True
    if x.percent != y.percent:  # one side is "50%": the other may be 50 or 0.5
        pct, other = (x.value, y.value) if x.percent else (y.value, x.value)
        return _close(pct / 100, other, exact)
    return False
