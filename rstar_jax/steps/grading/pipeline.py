"""The stages of the package docstring in order, on one pair of strings: ``grade`` runs stages
1-7, ``decide`` the cheap ones on normalised strings (None: go symbolic). Stage 0 (coercion and
canonical order), the pair cache and the deadline are the package's, around ``grade``."""

from __future__ import annotations

import re

from rstar_jax.steps.grading.choices import choice
from rstar_jax.steps.grading.normalize import MAX_INPUT_CHARS, key, last_boxed, normalize_answer
from rstar_jax.steps.grading.numbers import Number, numbers_equal, parse_number
from rstar_jax.steps.grading.structures import compare_structures, parse_structure
from rstar_jax.steps.grading.symbolic import MAX_SYMBOLIC_CHARS, parse_answer, symbolic_equal

_BASE = re.compile(r"^(-?[0-9A-Z]+)_\{?(\d{1,2})\}?$")
_WORDS_RE = re.compile(r"^[A-Za-z]+(?: [A-Za-z]+)*$")


def decide(a: str, b: str) -> bool | None:
    """Stages 2-6 on two normalised strings: True/False if decided, None to go symbolic (a
    structure's elements may themselves be decided symbolically, through `_core`)."""
    if not a or not b:
        return False
    if key(a) == key(b):
        return True
    if len(a) > 1 and _WORDS_RE.match(a) and _WORDS_RE.match(b) and a.lower() == b.lower():
        return True
    ca, cb = choice(a), choice(b)
    if isinstance(ca, str) or isinstance(cb, str) or (ca is not None and cb is not None):
        return ca == cb
    ba, bb = _base_subscript(a), _base_subscript(b)
    if ba or bb:  # "2516_8": same digits, and the same base when both give one
        da = ba.group(1) if ba else key(a)
        db = bb.group(1) if bb else key(b)
        if ba and bb and int(ba.group(2)) != int(bb.group(2)):
            return False
        return da.lower() == db.lower()
    na, nb = _number_of(a), _number_of(b)
    if na is not None and nb is not None:
        if numbers_equal(na, nb):
            return True
        if "," not in a + b:
            return False
        # "70,110" is 70110 or the list 70, 110 (both occur as MATH answers): try the list too.
    return compare_structures(parse_structure(a), parse_structure(b), _core)


def _base_subscript(s: str) -> re.Match | None:
    """Digits and base of "2516_8" or "2516_{10}" (the digits must include a decimal one)."""
    m = _BASE.match(key(s))
    if m and re.search(r"\d", m.group(1)):
        return m
    return None


def _number_of(s: str) -> Number | None:
    if re.search(r"\d\s+\d", s):
        return None
    return parse_number(key(s))


def _short(a: str, b: str) -> bool:
    return len(a) <= MAX_SYMBOLIC_CHARS and len(b) <= MAX_SYMBOLIC_CHARS


def _core(a: str, b: str) -> bool:
    """Stages 2-7 on two element strings (of a tuple, set, matrix...)."""
    na, nb = normalize_answer(a), normalize_answer(b)
    decided = decide(na, nb)
    if decided is not None:
        return decided
    return _short(na, nb) and symbolic_equal(na, nb)


def grade(a: str, b: str) -> bool:
    """The whole pipeline on one pair of strings."""
    if a.strip() == b.strip():
        return bool(a.strip())
    if len(a) > MAX_INPUT_CHARS or len(b) > MAX_INPUT_CHARS:
        return False
    na, nb = normalize_answer(a), normalize_answer(b)
    decided = decide(na, nb)
    if decided is not None:
        return decided
    if _short(na, nb):
        if symbolic_equal(na, nb):
            return True
        if parse_answer(na) and parse_answer(nb) and "=" not in na + nb:
            return False  # read both and said no; raw strings only help with a stripped "y ="
    # The raw strings, in case our normalisation produced something math-verify cannot read.
    ra, rb = last_boxed(a.strip()), last_boxed(b.strip())
    return (ra, rb) != (na, nb) and _short(ra, rb) and symbolic_equal(ra, rb)
