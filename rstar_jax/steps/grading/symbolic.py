"""Stage 7 of grading: math-verify and sympy on answers of at most ``MAX_SYMBOLIC_CHARS``
characters. Parses that would be expensive to evaluate are screened out before sympy sees them;
sympy's pure-Python work runs under the pair's deadline (see the package docstring)."""

from __future__ import annotations

import functools
import logging
import math

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from rstar_jax.steps.grading.deadline import arm_deadline
from rstar_jax.steps.grading.numbers import REL_TOL

MAX_SYMBOLIC_CHARS = 400  # longer (after normalisation): no sympy
_MAX_EXPONENT = 10_000  # powers of a number or a symbol with a larger exponent are not evaluated
_MAX_COMPOUND_EXPONENT = 64  # (x+1)^n, (1+\sqrt2)^n: expansion grows fast
_MAX_FACTORIAL = 5_000
_MAX_NODES = 2_000

_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())
_UNSAFE_TYPES = (sympy.Sum, sympy.Product, sympy.Integral, sympy.Limit, sympy.Derivative)


def _too_expensive(expr, budget: list[int]) -> bool:
    """True if evaluating expr could take long: big numeric powers or factorials, sums,
    integrals, limits, or just too many nodes. Children are screened before their parent, so
    an exponent is only evaluated once known to be small."""
    budget[0] -= 1
    if budget[0] < 0:
        return True
    if isinstance(expr, sympy.MatrixBase):
        return any(_too_expensive(e, budget) for e in expr)
    if not isinstance(expr, sympy.Basic):
        return False
    if isinstance(expr, _UNSAFE_TYPES):
        return True
    if any(_too_expensive(arg, budget) for arg in expr.args):
        return True
    if isinstance(expr, sympy.Pow):
        base, exponent = expr.args
        if exponent.is_number and not (base.is_number and base in (0, 1, -1)):
            simple = (
                isinstance(base, (sympy.Number, sympy.Symbol, sympy.NumberSymbol))
                or base == sympy.E
            )
            limit = _MAX_EXPONENT if simple else _MAX_COMPOUND_EXPONENT
            return not abs(complex(exponent.evalf(15))) <= limit
    if isinstance(
        expr, (sympy.factorial, sympy.factorial2, sympy.binomial, sympy.gamma, sympy.subfactorial)
    ):
        return any(
            a.is_number and not abs(complex(a.evalf(15))) <= _MAX_FACTORIAL for a in expr.args
        )
    return False


@functools.lru_cache(maxsize=2048)  # only strings of <= MAX_SYMBOLIC_CHARS get here
def parse_answer(s: str) -> tuple[sympy.Basic | sympy.MatrixBase, ...]:
    """math-verify parses of one answer, minus the ones too expensive to evaluate."""
    text = "$" + s.replace("$", " ").replace("\n", " ") + "$"
    parsed = parse(
        text, extraction_config=_EXTRACTION, fallback_mode="no_fallback", parsing_timeout=None
    )
    exprs = (e for e in parsed if isinstance(e, (sympy.Basic, sympy.MatrixBase)) and _cheap(e))
    return tuple(_imaginary_unit(e) for e in exprs)


def _imaginary_unit(expr):
    """A free symbol i is the imaginary unit (math-verify decides per string, so "0.5+0.5i"
    got a real symbol i while "\\frac{1+i}{2}" got a complex one; both mean I)."""
    try:
        units = {s: sympy.I for s in expr.free_symbols if s.name == "i"}
        return expr.xreplace(units) if units else expr
    except Exception:  # noqa: BLE001 - keep the expression as parsed
        return expr


def _cheap(expr) -> bool:
    try:
        return not _too_expensive(expr, [_MAX_NODES])
    except Exception:  # noqa: BLE001 - an expression sympy cannot even inspect: skip it
        return False


def _closed_form_close(x, y) -> bool:
    """Both closed-form numbers, one of them a decimal, within the relative tolerance."""
    try:
        if not (
            isinstance(x, sympy.Expr) and isinstance(y, sympy.Expr) and x.is_number and y.is_number
        ):
            return False
        if not (x.has(sympy.Float) or y.has(sympy.Float)):
            return False
        a, b = complex(x.evalf(30)), complex(y.evalf(30))
        return abs(a - b) <= float(REL_TOL) * max(abs(a), abs(b)) * (1 + 1e-12)
    except Exception:  # noqa: BLE001 - not a number after all
        return False


_PROBE = "0.61803398874989484820458683436563811772"  # values at which _refuted evaluates


def _refuted(x, y) -> bool:
    """A cheap proof that two parsed answers differ, to skip math-verify's simplify(): both
    plain expressions (no relation, set, matrix, float, percent or unknown function) in the
    same variables, whose values at two probe points differ by more than 1e-9 relatively.
    Anything else, or any trouble evaluating, is left to verify()."""
    try:
        for e in (x, y):
            if (not isinstance(e, sympy.Expr) or isinstance(e, sympy.Symbol) or e.has(sympy.Float)
                    or e.has(sympy.UnevaluatedExpr) or e.atoms(sympy.core.function.AppliedUndef)):
                return False
        names = sorted({s.name for s in x.free_symbols})
        if names != sorted({s.name for s in y.free_symbols}) or len(names) > 8:
            return False
        for shift in (0, 1):
            values = {n: sympy.Float(_PROBE, 40) + sympy.Rational(7 * i + 3 * shift, 11)
                      for i, n in enumerate(names)}
            a, b = (
                complex(e.evalf(30, subs={s: values[s.name] for s in e.free_symbols}))
                for e in (x, y)
            )
            if not (math.isfinite(abs(a)) and math.isfinite(abs(b))):
                return False
            if abs(a - b) <= 1e-9 * max(abs(a), abs(b)):
                return False  # agree here: maybe equal, let verify() decide
        return True
    except Exception:  # noqa: BLE001 - cannot tell
        return False


def symbolic_equal(a: str, b: str) -> bool:
    """Whether some parse of a and some parse of b are equivalent: math-verify's verify() in
    both orders, or the relative tolerance for a closed form against a decimal."""
    arm_deadline()
    xs, ys = parse_answer(a), parse_answer(b)
    for x in xs:
        for y in ys:
            if _refuted(x, y):
                continue
            if verify(x, y, timeout_seconds=None) or verify(y, x, timeout_seconds=None):
                return True
            if _closed_form_close(x, y):
                return True
    return False


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns once that its timeouts are off; ours are on (see the package docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())
