r"""Stage 6 of grading: answers made of several elements. Matrices, sets ``\{..\}``, bare lists
"1, -2" (and "1 \pm \sqrt2"), tuples and intervals, unions of intervals; the package docstring
says which compare to which. Elements are compared by a function the caller passes in (the
whole pipeline, stages 2-7), so this module needs nothing from the stages after it."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import NamedTuple

from rstar_jax.steps.grading.brackets import bracketed, split_top
from rstar_jax.steps.grading.normalize import key, normalize_answer

MAX_ELEMENTS = 64  # tuples / sets / matrices with more elements are compared as strings
_MAX_DEPTH = 8  # nesting of tuples / sets / matrices
_local = threading.local()  # per-thread: structure depth

Same = Callable[[str, str], bool]  # whether two elements are equivalent


class Structure(NamedTuple):
    """An answer of several elements, as parse_structure reads it."""

    kind: str  # "matrix", "set", "tuple", "union" or "list"
    items: list  # the elements (a union's pieces); a matrix's rows, each a list of cells
    open: str = ""  # a tuple's opening bracket: "(", "[" or "\\langle"
    close: str = ""  # a tuple's closing bracket: ")", "]" or "\\rangle"


_MATRIX_RE = re.compile(
    r"^[\[(]?\s*\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}\s*[\])]?$",
    re.DOTALL,
)


def _matrix(s: str) -> list[list[str]] | None:
    m = _MATRIX_RE.match(s)
    if not m or m.group(1) in ("vmatrix", "Vmatrix"):  # determinants are numbers, not matrices
        return None
    rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
    grid = [[c.strip() for c in r.split("&")] for r in rows]
    if not grid or len({len(r) for r in grid}) != 1 or sum(map(len, grid)) > MAX_ELEMENTS:
        return None
    return grid


def _expand_pm(items: list[str]) -> list[str]:
    r""" "1 \pm \sqrt5" stands for two elements."""
    out = []
    for item in items:
        if item.count("\\pm") == 1 and "\\mp" not in item:
            out += [item.replace("\\pm", "+"), item.replace("\\pm", "-")]
        else:
            out.append(item)
    return out


def parse_structure(s: str) -> Structure | None:
    """Classify s as a "matrix" (items: its rows), a "set", a "tuple" (with its brackets), a
    "union" (items: its pieces) or a "list"; None for a scalar."""
    if grid := _matrix(s):
        return Structure("matrix", grid)
    pieces = split_top(s, "\\cup")
    if pieces and len(pieces) > 1:
        return Structure("union", pieces)
    b = bracketed(s)
    if b:
        items = split_top(b.inner)
        if items is None or len(items) > MAX_ELEMENTS:
            return None
        if b.open == "\\{":
            return Structure("set", _expand_pm(items))
        if len(items) < 2:
            return None
        return Structure("tuple", items, b.open, b.close)
    items = split_top(s)
    if items and all(items) and len(_expand_pm(items)) > 1 and len(items) <= MAX_ELEMENTS:
        return Structure("list", _expand_pm(items))  # "1, 2" or "1 \pm \sqrt2"
    return None


def _match_unordered(xs: list[str], ys: list[str], same: Same) -> bool:
    if len(xs) != len(ys):
        return False
    remaining = list(ys)  # cheap pass first: identical elements
    keys = [key(normalize_answer(y)) for y in remaining]
    rest = []
    for x in xs:
        k = key(normalize_answer(x))
        if k in keys:
            i = keys.index(k)
            del keys[i], remaining[i]
        else:
            rest.append(x)
    for x in rest:
        for j, y in enumerate(remaining):
            if same(x, y):
                del remaining[j]
                break
        else:
            return False
    return True


def _match_ordered(xs: list[str], ys: list[str], same: Same) -> bool:
    return len(xs) == len(ys) and all(same(x, y) for x, y in zip(xs, ys))


def compare_structures(a: Structure | None, b: Structure | None, same: Same) -> bool | None:
    """True/False when both sides are structures that can be compared; None otherwise.
    Structures nested more than _MAX_DEPTH deep are not equal (no real answer is).
    `same` compares two elements."""
    if a is None or b is None:
        return None
    depth = getattr(_local, "depth", 0)
    if depth >= _MAX_DEPTH:
        return False
    _local.depth = depth + 1
    try:
        return _compare_structures_at(a, b, same)
    finally:
        _local.depth = depth


def _cells(grid: list[list[str]]) -> list[str]:
    return [c for r in grid for c in r]


def _ends(t: Structure) -> tuple[str, str]:
    """A tuple's brackets, with \\langle and \\rangle read as ( and )."""
    return t.open.replace("\\langle", "("), t.close.replace("\\rangle", ")")


def _compare_structures_at(a: Structure, b: Structure, same: Same) -> bool | None:
    kind_a, kind_b = a.kind, b.kind
    if kind_a == "matrix" or kind_b == "matrix":
        if kind_a == kind_b:
            ga, gb = a.items, b.items
            return (
                len(ga) == len(gb)
                and len(ga[0]) == len(gb[0])
                and _match_ordered(_cells(ga), _cells(gb), same)
            )
        mat, other = (a, b) if kind_a == "matrix" else (b, a)
        grid = mat.items
        if other.kind == "tuple" and (len(grid) == 1 or len(grid[0]) == 1):
            return _match_ordered(_cells(grid), other.items, same)  # a vector written as a tuple
        return None
    if kind_a == "union" and kind_b == "union":
        return _match_unordered(a.items, b.items, same)
    unordered = {"set", "list"}
    if kind_a in unordered and kind_b in unordered:
        return _match_unordered(a.items, b.items, same)
    if kind_a == "tuple" and kind_b == "tuple":
        xs, ys = a.items, b.items
        if len(xs) != len(ys):
            return False
        if len(xs) == 2 and _ends(a) != _ends(b):
            return False  # intervals with different ends: [1,2) vs [1,2]
        return _match_ordered(xs, ys, same)
    if {kind_a, kind_b} == {"set", "tuple"}:
        return False
    if {kind_a, kind_b} == {"list", "tuple"}:  # "(1,2)" written without its parentheses
        tup, lst = (a, b) if kind_a == "tuple" else (b, a)
        return (
            tup.open in ("(", "\\langle")
            and tup.close in (")", "\\rangle")
            and _match_ordered(tup.items, lst.items, same)
        )
    return None
