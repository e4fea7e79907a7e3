"""Training data from searched trees (RSTAR.md section 4): policy SFT examples and PPM pairs.

Only trees of a graded search (TERMINAL or PPM mode) can be used: an answer node's reward is
+1 when its answer matched the reference and -1 otherwise. Q is the tree's W / N.

A *trajectory* is the path from the root to an answer node; its response is the concatenated
texts of its steps (output blocks included), its mean / min Q are over those steps (the answer
step included), and it *has an error* when a step on it failed (valid = False: its code did not
run, which a search tolerating errors lets through).

SFT (`extract_sft`), per problem:
1. If fewer than `min_correct_fraction` of its trajectories are correct, nothing (the paper
   drops such problems; 0 keeps all).
2. Correct trajectories without an error, ranked by mean Q, then min Q (both higher first),
   then the answer node created first; the first `sft_per_problem` are the examples.

Step pairs (`extract_ppm`, kind "step"), at every expanded node n, over n's children:
- positive candidates: children with a correct answer at or below them, highest Q first;
- negative candidates: children with a wrong answer at or below them, lowest Q first;
- a failing child (valid = False) is neither: its code did not run (the paper excludes it from
  the negatives; as a positive it would teach the PPM to prefer code that fails);
- ties go to the child created first. Each side keeps `pairs_per_side`; when one side has
  exactly one candidate, the other keeps up to `fallback_per_side`;
- every kept positive is paired with every kept negative, except a child with itself (a child
  with both correct and wrong answers below can be on both sides), and a pair stays only if
  Q(pos) - Q(neg) >= `min_margin` and the Levenshtein distance of the two step texts is at
  least `min_distance` characters;
- prompt = the policy prompt + the texts of n's path; positive / negative = the step texts.

Every example says where in its tree it comes from (`metadata`): an SFT example its answer
node ("answer_node"), a step pair n and the two children ("node", "positive_node",
"negative_node"), a final-step pair the two answer nodes ("positive_node", "negative_node").

Final-step pairs (kind "final", the paper's pairs for the last step, from whole trajectories):
correct trajectories without an error, highest mean Q first, against wrong ones without an
error, lowest mean Q first, `final_pairs` of each, every combination, with the same margin
(on mean Q) and distance (on the responses) filters; prompt = the policy prompt, positive /
negative = the whole responses.

Outcome examples (`extract_outcomes`, for the ORM baseline): the trajectories without an
error, distinct responses only, in creation order, correct and wrong ones taken in turn so a
problem with both gives both, at most `outcomes_per_problem`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable

import numpy as np
from rapidfuzz.distance import Levenshtein

from rstar_jax.data.records import OutcomeExample, PPMPair, SFTExample
from rstar_jax.steps import format as fmt

# Qs are float32: 0.7 and 0.2 read as Python floats differ by 0.49999998, and a 0.5 margin must keep
# that pair.
_SLACK = 1e-6


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """The knobs of extraction (module docstring); defaults follow the paper and the reference
    code (margin 0.5, 20 characters)."""

    sft_per_problem: int = 2  # SFT examples kept per problem: its best correct trajectories
    # a problem with a smaller fraction of correct trajectories gives no SFT example (0: keep all)
    min_correct_fraction: float = 0.5
    pairs_per_side: int = 2  # positive / negative children kept at each node for step pairs
    fallback_per_side: int = 4  # ... on the other side when one side has a single candidate
    min_margin: float = 0.5  # a pair's Q(pos) - Q(neg) is at least this
    # a pair's two texts differ by at least this many characters (Levenshtein distance)
    min_distance: int = 20
    final_pairs: int = 2  # correct and wrong trajectories of a problem paired as final-step pairs
    outcomes_per_problem: int = 8  # ORM examples per problem

    def __post_init__(self):
        for name in ("sft_per_problem", "pairs_per_side", "fallback_per_side", "min_distance",
                     "final_pairs", "outcomes_per_problem"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"ExtractConfig.{name} must be an int >= 0, got {value!r}")
        if not 0 <= self.min_correct_fraction <= 1:
            raise ValueError("ExtractConfig.min_correct_fraction must be in [0, 1], got "
                             f"{self.min_correct_fraction!r}")
        if not 0 <= self.min_margin <= 2:
            raise ValueError("ExtractConfig.min_margin must be in [0, 2] (Q is in [-1, 1]), got "
                             f"{self.min_margin!r}")
        if self.fallback_per_side < self.pairs_per_side:
            raise ValueError(f"ExtractConfig.fallback_per_side={self.fallback_per_side} must be at "
                             f"least pairs_per_side={self.pairs_per_side}")


@dataclasses.dataclass(frozen=True)
class Trajectory:
    nodes: tuple[int, ...]  # root's child .. answer node
    response: str
    correct: bool
    mean_q: float
    min_q: float
    has_error: bool


@dataclasses.dataclass
class ExtractStats:
    problems: int = 0
    trajectories: int = 0
    correct: int = 0
    sft: int = 0
    step_pairs: int = 0
    final_pairs: int = 0
    dropped_margin: int = 0
    dropped_distance: int = 0
    low_correct_problems: int = 0  # problems that gave no SFT rows for min_correct_fraction

    def table(self) -> str:
        return "\n".join(f"{f.name:<22} {getattr(self, f.name)}" for f in dataclasses.fields(self))


def _check_graded(tree) -> np.ndarray:
    answers = np.flatnonzero(tree.is_answer)
    bad = [int(a) for a in answers if tree.reward[a] not in (1.0, -1.0)]
    if bad:
        raise ValueError(f"problem {tree.problem.id}: answer nodes {bad[:5]} have rewards "
                         f"{[float(tree.reward[a]) for a in bad[:5]]}, not +1/-1: extraction needs "
                         "a tree from a graded search (Mode.TERMINAL or Mode.PPM), not a test-time "
                         "one")
    return answers


def trajectories(tree) -> list[Trajectory]:
    """Every root-to-answer path of a graded tree, in the answer nodes' creation order."""
    answers = _check_graded(tree)
    q, parent, valid = tree.q.tolist(), tree.parent.tolist(), tree.valid.tolist()
    # One pass in creation order (parents first): Q sum, min Q and errors of each root path.
    total, low, error = [0.0] * len(q), [math.inf] * len(q), [False] * len(q)
    for n in range(1, len(q)):
        p = parent[n]
        total[n], low[n], error[n] = total[p] + q[n], min(low[p], q[n]), error[p] or not valid[n]
    out = []
    for a in answers.tolist():
        path = tree.path(a)
        out.append(Trajectory(nodes=tuple(path), response="".join(tree.texts[n] for n in path),
                              correct=bool(tree.reward[a] > 0), mean_q=total[a] / len(path),
                              min_q=low[a], has_error=error[a]))
    return out


def _far(a: str, b: str, min_distance: int) -> bool:
    """Whether the edit distance of a and b is at least min_distance (rapidfuzz stops counting
    at the cutoff, so long texts cost little)."""
    if min_distance == 0:
        return True
    return Levenshtein.distance(a, b, score_cutoff=min_distance) >= min_distance


def _too_few_correct(trajs: list[Trajectory], config: ExtractConfig) -> bool:
    """Whether fewer than `min_correct_fraction` of a problem's trajectories are correct."""
    return sum(t.correct for t in trajs) < config.min_correct_fraction * len(trajs)


def extract_sft(tree, config: ExtractConfig = ExtractConfig(), *, source: str = "search",
                trajs: list[Trajectory] | None = None) -> list[SFTExample]:
    """The SFT examples of one tree (module docstring)."""
    trajs = trajectories(tree) if trajs is None else trajs
    if not trajs or _too_few_correct(trajs, config):
        return []
    good = sorted((t for t in trajs if t.correct and not t.has_error),
                  key=lambda t: (-t.mean_q, -t.min_q, t.nodes[-1]))
    p = tree.problem
    return [SFTExample(problem_id=p.id, question=p.question, response=t.response, mean_q=t.mean_q,
                       min_q=t.min_q, source=source, metadata={"answer_node": t.nodes[-1]})
            for t in good[:config.sft_per_problem]]


def _sides(pos: list, neg: list, config: ExtractConfig) -> tuple[list, list]:
    keep_pos = config.fallback_per_side if len(neg) == 1 else config.pairs_per_side
    keep_neg = config.fallback_per_side if len(pos) == 1 else config.pairs_per_side
    return pos[:keep_pos], neg[:keep_neg]


def extract_ppm(tree, config: ExtractConfig = ExtractConfig(), *, source: str = "search",
                trajs: list[Trajectory] | None = None,
                stats: ExtractStats | None = None) -> list[PPMPair]:
    """The step and final-step PPM pairs of one tree (module docstring)."""
    stats = ExtractStats() if stats is None else stats
    answers = _check_graded(tree)
    n, q, texts, parent = tree.num_nodes, tree.q, tree.texts, tree.parent
    correct = np.zeros(n, bool)
    wrong = np.zeros(n, bool)
    correct[answers] = tree.reward[answers] > 0
    wrong[answers] = tree.reward[answers] < 0
    for c in range(n - 1, 0, -1):  # children come after their parents: one pass fills the subtrees
        correct[parent[c]] |= correct[c]
        wrong[parent[c]] |= wrong[c]
    usable = correct | wrong
    usable &= tree.valid
    prompt = fmt.policy_prompt(tree.problem.question)
    pid = tree.problem.id
    out = []

    def pair(p_text, n_text, qp, qn, head, kind, where):
        if qp - qn < config.min_margin - _SLACK:
            stats.dropped_margin += 1
        elif not _far(p_text, n_text, config.min_distance):
            stats.dropped_distance += 1
        else:
            out.append(PPMPair(problem_id=pid, prompt=head, positive=p_text, negative=n_text,
                               q_positive=float(qp), q_negative=float(qn), kind=kind,
                               source=source, metadata=where))

    q_list = q.tolist()
    # Only a node with a correct and a wrong answer below can have a pair among its children.
    for node in np.flatnonzero(correct & wrong & (tree.children[:, 0] >= 0)).tolist():
        kids = tree.children[node]
        kids = kids[(kids >= 0)]
        kids = kids[usable[kids]]
        if kids.size < 2:
            continue
        # Stable sorts over creation order: ties go to the child created first.
        pos = [int(c) for c in kids[np.argsort(-q[kids], kind="stable")] if correct[c]]
        neg = [int(c) for c in kids[np.argsort(q[kids], kind="stable")] if wrong[c]]
        pos, neg = _sides(pos, neg, config)
        head = None
        for p in pos:
            for m in neg:
                if p == m:
                    continue
                if head is None:
                    head = prompt + "".join(texts[k] for k in tree.path(node))
                before = len(out)
                pair(texts[p], texts[m], q_list[p], q_list[m], head, "step",
                     {"node": node, "positive_node": p, "negative_node": m})
                stats.step_pairs += len(out) - before
    if config.final_pairs:
        trajs = trajectories(tree) if trajs is None else trajs
        clean = [t for t in trajs if not t.has_error]
        good = sorted((t for t in clean if t.correct), key=lambda t: (-t.mean_q, t.nodes[-1]))
        bad = sorted((t for t in clean if not t.correct), key=lambda t: (t.mean_q, t.nodes[-1]))
        for g in good[:config.final_pairs]:
            for b in bad[:config.final_pairs]:
                before = len(out)
                pair(g.response, b.response, g.mean_q, b.mean_q, prompt, "final",
                     {"positive_node": g.nodes[-1], "negative_node": b.nodes[-1]})
                stats.final_pairs += len(out) - before
    return out


def extract_outcomes(tree, config: ExtractConfig = ExtractConfig(), *, source: str = "search",
                     trajs: list[Trajectory] | None = None) -> list[OutcomeExample]:
    """The outcome (ORM) examples of one tree (module docstring)."""
    trajs = trajectories(tree) if trajs is None else trajs
    sides: tuple[list, list] = ([], [])
    seen = set()
    for t in trajs:
        if not t.has_error and t.response not in seen:
            seen.add(t.response)
            sides[t.correct].append(t)
    wrong, right = sides
    turns = [t for pair in itertools.zip_longest(right, wrong) for t in pair if t is not None]
    p = tree.problem
    return [OutcomeExample(p.id, p.question, t.response, t.correct, source=source)
            for t in turns[:config.outcomes_per_problem]]


def extract(trees: Iterable, config: ExtractConfig = ExtractConfig(), *, source: str = "search"
            ) -> tuple[list[SFTExample], list[PPMPair], ExtractStats]:
    """SFT examples and PPM pairs of many trees, with counts of what was kept and dropped."""
    stats = ExtractStats()
    sft, pairs = [], []
    for tree in trees:
        trajs = trajectories(tree)
        stats.problems += 1
        stats.trajectories += len(trajs)
        stats.correct += sum(t.correct for t in trajs)
        rows = extract_sft(tree, config, source=source, trajs=trajs)
        if trajs and _too_few_correct(trajs, config):
            stats.low_correct_problems += 1
        sft += rows
        pairs += extract_ppm(tree, config, source=source, trajs=trajs, stats=stats)
    stats.sft = len(sft)
    return sft, pairs, stats
