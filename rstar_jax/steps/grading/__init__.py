r"""Answer grading: is a predicted final answer equivalent to the reference answer?

rStar-Math (section 8) grades with exact match, else a battery of equivalence checks (numbers
within relative tolerance 1e-4, percent x100 / /100, tuples, intervals, matrices, equations,
sympy on parsed LaTeX) tried in both orders, then multiple-choice handling. This package does
the same with its own MATH-style normaliser, a few cheap decisive checks, and math-verify
(``math_verify.parse`` / ``math_verify.verify``) plus sympy for everything symbolic.

Pipeline of ``is_equivalent(pred, ref)``; the first stage that can decide, decides:

0. Coerce. Non-strings are False, except ints and finite floats (formatted) and a list or
   tuple of strings, which is a set of acceptable alternatives (four MATH_test rows have
   one). The two strings are put in a canonical (sorted) order before anything else, so
   ``is_equivalent(a, b)`` and ``is_equivalent(b, a)`` run the very same computation:
   symmetric by construction. Results for short pairs are kept in an LRU cache.
1. Exact match of the stripped strings.
2. Normalise both (``normalize_answer``): content of the last ``\boxed{}``; ``$``, ``\$``,
   ``\(..\)``, ``\[..\]``; ``\left``/``\right``; ``\dfrac``/``\tfrac`` -> ``\frac``; spacing
   commands; degree signs (a trailing one is dropped; inside \sin etc. it becomes pi/180);
   ``\%``/"percent" -> ``%``; trailing units (``\text{ cm}``, ``\mbox{ inches}^2``,
   "5 apples", "22.1cm^2"); other ``\text{..}``/``\mbox{..}`` unwrapped; a single ``x =``,
   ``f(x) =``, ``\theta =`` or ``x \in`` prefix; ``\{x \mid cond\}`` -> cond; ``\frac12`` and
   ``\sqrt2`` shorthand. Compare with all spaces removed, and case-insensitively when both
   are plain words ("Friday", "\text{odd}").
3. Multiple choice: "(A)", "A", "\text{(A)}", "A)", "A.", "(A) 12" are letter A, and when
   either side is a single letter the letters decide. Letter sets ("\text{ACF}" vs
   "A, C, F") compare as sets.
4. Base subscripts: "2516_8" == "2516", but != "2516_{10}".
5. Plain numbers (integers, decimals, 1e3, a/b, \frac{a}{b}, 3\times10^{5},
   0.1\overline{6}, a trailing %, thousands separators) are compared in exact rational
   arithmetic: two exact numbers must be equal ("27649" != "27648"); if either has a decimal
   point, |a - b| <= 1e-4 * max(|a|, |b|), inclusive, so "0.3333" == "\frac13" (relative
   error exactly 1e-4) while "0.333" is not. Percent: if only one side carries %, the other
   may equal it with or without the /100 ("50\%" == "50" == "0.5"); without a % sign there
   is no rescaling ("50" != "0.5"; the reference grader would say equal). "1,000" and
   "15,\!000" are numbers, "(1,2)" is a tuple, and "70,110" is both 70110 and the list
   70, 110 (MATH uses it both ways).
6. Structures, split at top-level commas, elements compared through stages 2-7: matrices
   (pmatrix/bmatrix/array; shapes must match, a single row or column also matches a tuple),
   sets ``\{..\}`` and bare lists "1, -2" (any order; "1 \pm \sqrt2" is a list of two),
   tuples and vectors (in order; "(1,2)" also equals the bare "1,2"), intervals (bracket
   kinds must match: "[1,2)" != "[1,2]"), unions of intervals (pieces in any order).
7. Symbolic, for strings of at most ``MAX_SYMBOLIC_CHARS``: math-verify parses the
   normalised strings (LaTeX, then plain expressions; LRU cached, so the reference of an
   MCTS tree is parsed once). Parses that would be expensive to evaluate are dropped (see
   below). Two plain expressions in the same variables whose values differ at two probe
   points are unequal without further ado, which spares simplify() on most wrong answers;
   otherwise ``verify`` is called in both orders, and two closed-form numbers of which one
   is a decimal are compared with the 1e-4 tolerance ("8.9443" == "4\sqrt5", which
   math-verify's 6-digit rounding rejects). "y = 2x+3" vs "y=3+2x" arrive here as "2x+3" vs
   "3+2x". If all that fails, the raw strings get the same treatment, but only when
   math-verify could not read a normalised one or one side is still an equation
   ("y=2x+3" vs "2x-y+3=0").

What bounds time, honestly:

* Inputs longer than ``MAX_INPUT_CHARS`` are only compared by exact match (stage 1). On the
  rest, normalisation is linear-time string and regex work (adversarial 10k-character
  inputs take well under 0.1 s), and stages 1-6 do no symbolic algebra: numbers are parsed
  by our own regexes with capped exponents, so "1e999999" cannot blow up.
* Stage 7 only sees short strings, and drops parses with numeric powers whose exponent
  exceeds 1e4 (64 for a compound base such as (x+1)^n), factorials above 5000, sums,
  products, integrals, limits, or more than 2000 nodes. This screen is what keeps
  big-integer arithmetic ("9^{9^9}", "100000!") from starting at all: it runs in C, and
  nothing can interrupt it.
* A pair that reaches stage 7 runs under one deadline of ``TIME_LIMIT_SECONDS`` of wall
  time, in any thread: a watchdog thread raises an exception in the grading thread through
  CPython's ``PyThreadState_SetAsyncExc`` (again every 50 ms while the pair is still being
  graded), and the answer is False. Like a signal handler, this interrupts between
  bytecodes only, so it bounds sympy's pure-Python work (simplify, solve), and the screen
  covers the C parts. On a Python without ``ctypes.pythonapi`` there is no deadline, only
  the caps and the screen.
* We deliberately do not use math-verify's own timeouts (``signal.alarm``): they work in
  the main thread only, come in whole seconds, are armed separately for each parse and each
  comparison (several times the limit for one pair), and would take over the host
  program's SIGALRM handler. math-verify is always called with its timeouts disabled.

The deadline is wall time, so a slow pair can come out differently on a loaded machine (many
grading threads share the GIL); the pair cache keeps repeated calls consistent within a
process. Only inputs of up to ``CACHE_MAX_CHARS`` characters are cached, so memory stays
bounded whatever the input.

The input is a final answer, not a whole solution: the last ``\boxed{}`` is unwrapped, but
no answer is extracted from prose.

Modules: ``normalize`` (stage 2), ``choices`` (3), ``numbers`` (5), ``structures`` (6, with
``brackets`` for splitting at top-level commas), ``symbolic`` (7), ``pipeline`` (the stages in
order, base subscripts of stage 4 included) and ``deadline`` (the watchdog). This one adds
stage 0, the pair cache and the deadline of ``TIME_LIMIT_SECONDS``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from rstar_jax.steps.grading.deadline import grade_within
from rstar_jax.steps.grading.normalize import CACHE_MAX_CHARS, normalize_answer, normalize_cached
from rstar_jax.steps.grading.pipeline import grade
from rstar_jax.steps.grading.symbolic import parse_answer

__all__ = ["clear_caches", "is_equivalent", "is_equivalent_batch", "normalize_answer"]

TIME_LIMIT_SECONDS = 3.0  # deadline per pair, any thread (see the module docstring)


def _grade_guarded(a: str, b: str) -> bool:
    """grade under the deadline; False on timeout or on any error."""
    return grade_within(grade, a, b, TIME_LIMIT_SECONDS)  # read here: tests shorten it


_grade_cached = functools.lru_cache(maxsize=65536)(_grade_guarded)


def _as_alternatives(x) -> list[str] | None:
    if isinstance(x, str):
        return [x]
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int) or (isinstance(x, float) and math.isfinite(x)):
        return [repr(x)]
    if isinstance(x, (list, tuple)) and x and all(isinstance(e, str) for e in x):
        return list(x)
    return None


def is_equivalent(pred, ref) -> bool:
    r"""Whether two final answers are mathematically the same, as rStar-Math grades them.

    Symmetric; never raises (anything that is not an answer gives False); bounded time per
    pair as described in the module docstring. A list/tuple of strings on either side is a
    set of acceptable alternatives (any match). ``is_equivalent("0.3333", r"\frac13")`` is
    True, ``is_equivalent("[1,2)", "[1,2]")`` is False.
    """
    try:
        xs, ys = _as_alternatives(pred), _as_alternatives(ref)
        if not xs or not ys:
            return False
        for x in xs:
            for y in ys:
                a, b = (x, y) if x <= y else (y, x)  # canonical order: symmetric by construction
                cached = len(a) + len(b) <= CACHE_MAX_CHARS
                if (_grade_cached if cached else _grade_guarded)(a, b):
                    return True
        return False
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - a grader must not take the caller down
        return False


def is_equivalent_batch(preds: Sequence, refs: Sequence) -> list[bool]:
    """``[is_equivalent(p, r) for p, r in zip(preds, refs)]``; the lengths must match.
    Parsed answers are cached, so grading many predictions against one reference (an MCTS
    tree) parses the reference once."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    return [is_equivalent(p, r) for p, r in zip(preds, refs)]


def clear_caches() -> None:
    """Empty the pair, parse and normalisation caches (for benchmarks and tests)."""
    _grade_cached.cache_clear()
    parse_answer.cache_clear()
    normalize_cached.cache_clear()
