"""Evaluation of a policy (and a PPM) on problems with reference answers (RSTAR.md section 7).

Every method runs the search driver, so steps are written, executed and given their output
blocks exactly as during search:

- `solve(..., samples=1, temperature=0)`: greedy pass@1, one path per problem;
- `solve(..., samples=n, temperature=T)`: n independent single-path solutions per problem, for
  maj@k (majority vote of the first k) and best-of-N (with a PPM, each solution's score is the
  PPM's value of its whole trajectory; the best-scored answer wins);
- `mcts(...)`: `searches` independent test-time searches with the PPM; each answer node is a
  trajectory scored by the PPM. The answer is chosen by one of the selection rules of
  RSTAR.md section 3: the highest score, a vote among the `top_k` best-scored trajectories, or
  a vote weighted by score.

Answers are grouped by `is_equivalent` before votes, and graded against each problem's
`references`. `accuracy_curve` gives accuracy against the number of trajectories used, and
`report` the markdown table, JSON and plot of a set of results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.search.driver import EnginePolicy, Problem, SearchTree, prompt_ids, run_search
from rstar_jax.steps import format as fmt

RULES = ("highest", "top_k_vote", "weighted_vote", "majority")


@dataclasses.dataclass
class Candidate:
    """One finished trajectory of a problem: its answer (None if it wrote none) and score."""

    answer: str | None
    score: float  # the PPM's value (0 without a PPM)
    correct: bool


@dataclasses.dataclass
class Solutions:
    """Every trajectory found for one problem, in the order they were found."""

    problem: Problem
    candidates: list[Candidate]

    def select(self, rule: str, k: int | None = None, top_k: int = 4) -> Candidate | None:
        """The answer `rule` picks from the first `k` candidates (all by default)."""
        pool = [c for c in self.candidates[:k] if c.answer is not None]
        if not pool:
            return None
        if rule == "highest":
            return max(pool, key=lambda c: c.score)  # the first of equal scores
        if rule == "top_k_vote":
            pool = sorted(pool, key=lambda c: -c.score)[:top_k]
            return _vote(pool, lambda c: 1.0)
        if rule == "weighted_vote":
            return _vote(pool, lambda c: c.score + 1.0)  # scores in [-1, 1]; weights >= 0
        if rule == "majority":
            return _vote(pool, lambda c: 1.0)
        raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(RULES)}")


def _vote(pool: list[Candidate], weight: Callable[[Candidate], float]) -> Candidate:
    """The candidate of the heaviest group of equivalent answers (ties: the group seen first)."""
    from rstar_jax.steps.grading import is_equivalent

    groups: list[list[Candidate]] = []
    for c in pool:
        for g in groups:
            if c.answer == g[0].answer or is_equivalent(c.answer, g[0].answer):
                g.append(c)
                break
        else:
            groups.append([c])
    best = max(groups, key=lambda g: sum(weight(c) for c in g))  # max keeps the first of equal totals
    return max(best, key=lambda c: c.score)


def _answers(tree: SearchTree, graded: bool) -> list[Candidate]:
    """The answer nodes of a tree, in creation order, with their Q (their PPM score at test time)."""
    from rstar_jax.steps.grading import is_equivalent

    out = []
    q = tree.q
    for node in np.flatnonzero(tree.is_answer):
        answer = fmt.extract_answer(tree.texts[node])
        correct = bool(tree.reward[node] > 0) if graded else (
            answer is not None and is_equivalent(answer, tree.problem.references or tree.problem.answer))
        out.append(Candidate(answer, float(q[node]), correct))
    return out


def _engine_policy(policy, tokenizer, config: SearchConfig):
    return policy if hasattr(policy, "sample") else EnginePolicy(policy, tokenizer, config)


def solve(problems: Sequence[Problem], policy, executor, tokenizer, *, samples: int = 1,
          temperature: float = 0.0, scorer=None, search: SearchConfig | None = None,
          batch_size: int | None = None, progress: bool | None = None) -> list[Solutions]:
    """`samples` single-path solutions of each problem (greedy when temperature is 0).

    policy: an `Engine` (or a search `Policy`); scorer: a PPM `ValueScorer` to score each
    finished solution (best-of-N), or None. `search` gives the step budgets (its mode,
    candidates, rollouts, temperature and seed are set here).
    """
    base = search or SearchConfig()
    out = [Solutions(p, []) for p in problems]
    if temperature == 0 and samples > 1:
        raise ValueError(f"greedy decoding gives one solution; ask for samples=1 or a temperature > 0, "
                         f"got samples={samples}")
    for i in range(samples):
        # Graded as in training; the PPM scores each finished solution once, not every step on its way.
        config = dataclasses.replace(base, mode=Mode.TERMINAL, candidates=1, rollouts=1, temperature=temperature,
                                     seed=base.seed + i, capacity=None)
        trees = run_search(problems, _engine_policy(policy, tokenizer, config), executor, tokenizer, config,
                           batch_size=batch_size, progress=progress)
        found = [_answers(tree, graded=True)[:1] for tree in trees]
        ends = [(t, f[0]) for t, f in zip(trees, found) if f]
        scores = np.zeros(len(ends))  # no PPM: no score (a Q here would be the grade itself)
        if scorer is not None and ends:
            scores = scorer.score([prompt_ids(tokenizer, t.problem.question, config.bootstrap)
                                   + [tok for n in t.path(t.answer_node) for tok in t.tokens[n]] for t, _ in ends])
        for (_, c), score in zip(ends, scores):
            c.score = float(score)
        for sol, f in zip(out, found):
            sol.candidates.append(f[0] if f else Candidate(None, -1.0, False))
    return out


def mcts(problems: Sequence[Problem], policy, scorer, executor, tokenizer, search: SearchConfig, *,
         searches: int = 1, batch_size: int | None = None, progress: bool | None = None) -> list[Solutions]:
    """`searches` independent test-time searches of each problem with the PPM (RSTAR.md
    section 3); every answer node found is a candidate, scored by the PPM."""
    if scorer is None:
        raise ValueError("MCTS evaluation needs a PPM scorer: test-time search scores answers with it")
    out = [Solutions(p, []) for p in problems]
    for i in range(searches):
        config = dataclasses.replace(search, mode=Mode.TEST, seed=search.seed + i)
        trees = run_search(problems, _engine_policy(policy, tokenizer, config), executor, tokenizer, config,
                           scorer=scorer, batch_size=batch_size, progress=progress)
        for sol, tree in zip(out, trees):
            sol.candidates += _answers(tree, graded=False)
    return out


def accuracy(solutions: Sequence[Solutions], rule: str = "highest", k: int | None = None, top_k: int = 4) -> float:
    """The fraction of problems whose selected answer is correct."""
    if not solutions:
        return math.nan
    picked = [s.select(rule, k, top_k) for s in solutions]
    return sum(bool(c and c.correct) for c in picked) / len(solutions)


def accuracy_curve(solutions: Sequence[Solutions], rule: str, top_k: int = 4) -> list[tuple[int, float]]:
    """(k, accuracy with the first k trajectories) for k = 1, 2, 4, ... up to the most any problem has."""
    most = max((len(s.candidates) for s in solutions), default=0)
    ks = [2**i for i in range(most.bit_length()) if 2**i < most] + ([most] if most else [])
    return [(k, accuracy(solutions, rule, k, top_k)) for k in ks]


def report(results: dict[str, dict], out_dir: str | pathlib.Path | None = None, title: str = "evaluation") -> str:
    """A markdown table of {method: {"accuracy": a, "curve": [(k, acc), ...], ...}}; with
    `out_dir`, also `results.json`, `results.md` and `accuracy.png` (accuracy against the number
    of trajectories, one line per method with a curve)."""
    lines = [f"| {title} | accuracy | trajectories |", "|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['accuracy']:.1f}% | {r.get('trajectories', 1)} |")
    table = "\n".join(lines) + "\n"
    if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "results.md").write_text(table)
        curves = {name: r["curve"] for name, r in results.items() if len(r.get("curve", ())) > 1}
        if curves:
            _plot(curves, out / "accuracy.png", title)
    return table


def _plot(curves: dict[str, list], path: pathlib.Path, title: str) -> None:
    plot_lines({name: tuple(zip(*curve)) for name, curve in curves.items()}, path, xlabel="trajectories per problem",
               ylabel="accuracy (%)", title=title, log2_x=True)


def plot_lines(lines: dict[str, tuple], path: pathlib.Path, *, xlabel: str, ylabel: str, title: str = "",
               log2_x: bool = False, xticks: Sequence | None = None) -> None:
    """Writes a PNG with one line per {name: (xs, fractions)}; fractions are drawn as percents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (xs, ys) in lines.items():
        ax.plot(xs, [100 * y for y in ys], marker="o", label=name)
    if log2_x:
        ax.set_xscale("log", base=2)
    if xticks is not None:
        ax.set_xticks(list(xticks))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
