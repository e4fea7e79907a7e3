"""The `Problem` record: what a search, a training set and an evaluation are made of."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any


def problem_id(question: str, source: str = "") -> str:
    """A stable id from the source and the question text: the same problem read twice (or after
    a restart) gets the same id, so finished work can be found and skipped."""
    digest = hashlib.sha1(f"{source}\x1f{question}".encode()).hexdigest()[:16]
    return f"{source}/{digest}" if source else digest


@dataclasses.dataclass(frozen=True)
class Problem:
    """One math problem.

    question: the problem text, as the policy prompt gets it.
    answer: the reference final answer (LaTeX or a number, as a string); None when unknown
        (test-time search needs none, graded search and evaluation do).
    id: unique within a run; defaults to `problem_id(question, source)`.
    source: where it came from ("math500", "synthetic/level2", a file name, ...).
    metadata: anything else the source has (level, subject, a reference solution, ...); it
        must be JSON-like (str, numbers, bools, None, lists and dicts of them) to be written.
    """

    question: str
    answer: str | None = None
    id: str = ""
    source: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        if not isinstance(self.question, str) or not self.question.strip():
            raise TypeError("Problem.question must be a non-empty string, got "
                            f"{self.question!r:.80}")
        if self.answer is not None and not isinstance(self.answer, str):
            raise TypeError("Problem.answer must be a string or None, got "
                            f"{type(self.answer).__name__} {self.answer!r:.40}; convert numbers "
                            "with str()")
        for name in ("id", "source"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Problem.{name} must be a string, got {getattr(self, name)!r:.40}")
        if not isinstance(self.metadata, Mapping):
            raise TypeError("Problem.metadata must be a mapping, got "
                            f"{type(self.metadata).__name__}")
        if not self.id:
            object.__setattr__(self, "id", problem_id(self.question, self.source))

    @property
    def references(self) -> tuple[str, ...]:
        """Every acceptable reference answer: `metadata["references"]` if the source has several
        (a few MATH problems), else `(answer,)`; () when the answer is unknown."""
        refs = self.metadata.get("references")
        if refs:
            return tuple(refs)
        return () if self.answer is None else (self.answer,)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "answer": self.answer,
                "source": self.source, "metadata": dict(self.metadata)}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Problem:
        return cls(question=row["question"], answer=row.get("answer"), id=row.get("id", ""),
                   source=row.get("source", ""), metadata=row.get("metadata") or {})
