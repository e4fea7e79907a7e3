"""Duplicates and benchmark contamination among training problems.

Two questions match *exactly* when their texts are equal after stripping surrounding
whitespace, and *after normalisation* when `normalize_question` makes them equal: Unicode NFKC,
lower case, LaTeX spacing and sizing commands and `$` delimiters dropped, `\\dfrac`/`\\tfrac` as
`\\frac`, whitespace and sentence punctuation removed (`;:!?`, quotes, and `.` or `,` unless a
digit follows: 1.5 and 15 stay apart). Normalisation catches copies that differ in spacing,
case, math delimiters or a final period; it does not catch paraphrases.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Sequence

from rstar_jax.data.problem import Problem

_LATEX_NOISE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg|displaystyle|textstyle|[,;:! ])"
                          r"(?![a-zA-Z])|\$")
_FRAC = re.compile(r"\\[dt]frac(?![a-zA-Z])")
# a point or comma before a digit is part of a number
_GAPS = re.compile(r"[\s;:!?'\"`]+|[.,](?!\d)")


def normalize_question(text: str) -> str:
    """The form two questions are compared in (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _FRAC.sub(r"\\frac", _LATEX_NOISE.sub(" ", text))
    return _GAPS.sub("", text)


@dataclasses.dataclass
class OverlapReport:
    """What `deduplicate` / `decontaminate` removed: counts per reason, and the ids."""

    kept: int = 0
    # by benchmark
    exact: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    normalized: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    removed_ids: list[str] = dataclasses.field(default_factory=list)

    @property
    def removed(self) -> int:
        return len(self.removed_ids)

    def table(self) -> str:
        names = sorted(set(self.exact) | set(self.normalized))
        lines = [f"{'against':<16} {'exact':>7} {'normalised':>10}"]
        lines += [f"{n:<16} {self.exact[n]:>7} {self.normalized[n]:>10}" for n in names]
        lines.append(f"kept {self.kept}, removed {self.removed}")
        return "\n".join(lines)


def deduplicate(problems: Iterable[Problem]) -> tuple[list[Problem], OverlapReport]:
    """The problems without repeats of an earlier question (exact or normalised: the first
    stays), and what was removed (counted under "self")."""
    kept, report = [], OverlapReport()
    seen_exact, seen_norm = set(), set()
    for p in problems:
        exact, norm = p.question.strip(), normalize_question(p.question)
        if exact in seen_exact:
            report.exact["self"] += 1
        elif norm in seen_norm:
            report.normalized["self"] += 1
        else:
            seen_exact.add(exact)
            seen_norm.add(norm)
            kept.append(p)
            continue
        report.removed_ids.append(p.id)
    report.kept = len(kept)
    return kept, report


def decontaminate(problems: Iterable[Problem],
                  against: Sequence[str] | dict[str, Iterable[Problem]] | None = None
                  ) -> tuple[list[Problem], OverlapReport]:
    """The problems whose question is in none of the benchmarks `against` (names from
    `sources.BENCHMARKS`, default all of them, or {name: problems}), and the counts of
    exact and normalised-only matches per benchmark. A problem matching several benchmarks is
    counted under the first."""
    from rstar_jax.data import sources

    if against is None:
        against = sources.BENCHMARKS
    if not isinstance(against, dict):
        against = {name: sources.load_benchmark(name) for name in against}
    exact, norm = {}, {}
    for name, items in against.items():
        for q in items:
            exact.setdefault(q.question.strip(), name)
            norm.setdefault(normalize_question(q.question), name)
    kept, report = [], OverlapReport()
    for p in problems:
        if (name := exact.get(p.question.strip())) is not None:
            report.exact[name] += 1
        elif (name := norm.get(normalize_question(p.question))) is not None:
            report.normalized[name] += 1
        else:
            kept.append(p)
            continue
        report.removed_ids.append(p.id)
    report.kept = len(kept)
    for name in against:
        report.exact[name] += 0
        report.normalized[name] += 0
    return kept, report
