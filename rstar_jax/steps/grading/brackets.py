r"""Bracket-aware scanning of answer strings: splitting at top-level commas (or ``\cup``), and
recognising one bracketed group. ``\{`` and ``\}`` count as brackets; depth is tracked over
(), [] and {} alike, so "[1,2)" is balanced."""

from __future__ import annotations

from typing import NamedTuple


class Bracketed(NamedTuple):
    r"""One bracketed group: "(1,2]" is ("(", "1,2", "]"); "\{1\}" is ("\{", "1", "\}")."""

    open: str  # "(", "[", "\{" or "\langle"
    inner: str  # what lies between the brackets, unstripped
    close: str  # ")", "]", "\}" or "\rangle"


def split_top(s: str, sep: str = ",") -> list[str] | None:
    """Split at top-level separators (outside (), [], {}); None if brackets are unbalanced."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i].strip())
            start = i + len(sep)
            i = start
            continue
        if depth < 0:
            return None
        i += 1
    if depth != 0:
        return None
    parts.append(s[start:].strip())
    return parts


def bracketed(s: str) -> Bracketed | None:
    r"""(open, inner, close) when s is one bracketed group: (..), [..], (..], \{..\},
    \langle..\rangle."""
    for lo, hi in (("\\{", "\\}"), ("\\langle", "\\rangle")):
        if s.startswith(lo) and s.endswith(hi):
            inner = s[len(lo) : -len(hi)]
            if split_top(inner) is not None:
                return Bracketed(lo, inner, hi)
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0 and i != len(s) - 1:
                return None  # "(1,2)\cup(3,4)" or "(a)(b)": not one group
    if depth != 0:
        return None
    return Bracketed(s[0], s[1:-1], s[-1])
