"""Training records: what extraction makes of searched trees, and what training reads.

SFTExample: one policy fine-tuning example (question -> response in the step format).
PPMPair: one process-preference pair (shared prefix, a better next step, a worse one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """The policy learns `response` after `fmt.policy_prompt(question)`.

    response: the steps as the policy writes them (root to answer, output blocks included),
        exactly the text after the prompt.
    mean_q, min_q: the trajectory's mean and minimum step Q (NaN for imported data).
    """

    problem_id: str
    question: str
    response: str
    mean_q: float = float("nan")
    min_q: float = float("nan")
    source: str = ""  # "search/round2", "rstar_release", ...
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True)
class PPMPair:
    """The PPM learns score(prompt + positive) > score(prompt + negative).

    prompt: the policy prompt and the steps both candidates share, as text.
    positive, negative: the two continuations (one step, or for kind "final" a whole
        trajectory's remaining steps).
    kind: "step" (siblings in a tree), "final" (whole trajectories, paper's final-step pairs)
        or "released" (imported rStar-Math data, whose pos/neg are whole responses).
    """

    problem_id: str
    prompt: str
    positive: str
    negative: str
    q_positive: float = float("nan")
    q_negative: float = float("nan")
    kind: str = "step"
    source: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
