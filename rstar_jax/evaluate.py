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
`references`. `accuracy_curve` gives accuracy against the number of trajectories used.

`evaluate_policy` runs them all on one set of problems at equal trajectories (N samples for
maj@N and best-of-N, N = rollouts x searches for MCTS) and gives, per method, the accuracy with
its 95% Wilson interval, per level when problems have one, and the ids of the problems it got
right; the reward models' AUC at ranking the sampled answers (correct above wrong); and paired
bootstrap intervals of the differences between methods on the same problems. `report` writes
the markdown, `results.json` and the plot.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.data.problem import Problem
from rstar_jax.data.tree import SearchTree
from rstar_jax.search.driver import EnginePolicy, run_search
from rstar_jax.steps import format as fmt

RULES = ("highest", "top_k_vote", "weighted_vote", "majority", "oracle")


@dataclasses.dataclass
class Candidate:
    """One finished trajectory of a problem: its answer (None if it wrote none) and score."""

    answer: str | None
    score: float  # the PPM's value (0 without a PPM)
    correct: bool
    ids: tuple[int, ...] = ()  # what a reward model scores: the prompt and the trajectory's steps


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
        if rule == "oracle":  # pass@k: a correct answer if any; the ceiling of every selection rule
            return next((c for c in pool if c.correct), pool[0])
        raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(RULES)}")

    def to_json(self) -> dict:
        return {"problem": self.problem.id, "candidates": [dataclasses.asdict(c)
                                                           for c in self.candidates]}

    @classmethod
    def from_json(cls, d: dict, problem: Problem) -> Solutions:
        if d["problem"] != problem.id:
            raise ValueError(f"solutions of problem {d['problem']!r} read as those of "
                             f"{problem.id!r}")
        return cls(problem, [Candidate(**{**c, "ids": tuple(c["ids"])}) for c in d["candidates"]])


# gather(name, this process's solutions as JSON) -> every process's list, in process order
Gather = Callable[[str, list[dict]], list[list[dict]]]


def share(n: int, index: int, count: int, batch_size: int | None) -> list[int]:
    """The positions, among `n` problems, that process `index` of `count` solves: every
    count-th run of `batch_size` problems (default 32, a search's batch), so that each process
    searches about as many and a process's batches are as wide as a one-process run's. Each
    problem keeps its position as its seed id (`run_search(seed_ids=)`): its samples are those
    of a one-process run."""
    width = int(batch_size or 32)
    return [i for i in range(n) if (i // width) % count == index]


def _everyone(problems: Sequence[Problem], mine: list[Solutions], name: str,
              gather: Gather) -> list[Solutions]:
    """Every problem's solutions, from each process's share (`gather`)."""
    by_id = {d["problem"]: d for part in gather(name, [s.to_json() for s in mine]) for d in part}
    missing = [p.id for p in problems if p.id not in by_id]
    if missing:
        raise RuntimeError(f"{name}: no process returned solutions of {len(missing)} problems, "
                           f"e.g. {missing[:3]}")
    return [Solutions.from_json(by_id[p.id], p) for p in problems]


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
    # max keeps the first of equal totals
    best = max(groups, key=lambda g: sum(weight(c) for c in g))
    return max(best, key=lambda c: c.score)


def _answers(tree: SearchTree, graded: bool) -> list[Candidate]:
    """The answer nodes of a tree, in creation order, with their Q (their PPM score at test
    time)."""
    out = []
    q = tree.q
    right = None if graded else tree.right_answers()
    for node in np.flatnonzero(tree.is_answer):
        answer = fmt.extract_answer(tree.texts[node])
        correct = bool(tree.reward[node] > 0) if graded else bool(right[int(node)])
        ids = (*tree.prompt_ids, *(t for n in tree.path(int(node)) for t in tree.tokens[n]))
        out.append(Candidate(answer, float(q[node]), correct, ids))
    return out


def _engine_policy(policy, tokenizer, config: SearchConfig):
    return policy if hasattr(policy, "sample") else EnginePolicy(policy, tokenizer, config)


def solve(problems: Sequence[Problem], policy, executor, tokenizer, *, samples: int = 1,
          temperature: float = 0.0, scorer=None, search: SearchConfig | None = None,
          batch_size: int | None = None, progress: bool | None = None,
          seed_ids: Sequence[int] | None = None) -> list[Solutions]:
    """`samples` single-path solutions of each problem (greedy when temperature is 0).

    policy: an `Engine` (or a search `Policy`); scorer: a PPM `ValueScorer` to score each
    finished solution (best-of-N), or None. `search` gives the step budgets (its mode,
    candidates, rollouts, temperature and seed are set here).
    """
    base = search or SearchConfig()
    out = [Solutions(p, []) for p in problems]
    if temperature == 0 and samples > 1:
        raise ValueError("greedy decoding gives one solution; ask for samples=1 or a temperature > "
                         f"0, got samples={samples}")
    for i in range(samples):
        # Graded as in training; the PPM scores each finished solution once, not every step on its
        # way.
        config = dataclasses.replace(base, mode=Mode.TERMINAL, candidates=1, rollouts=1,
                                     temperature=temperature, seed=base.seed + i, capacity=None)
        trees = run_search(problems, _engine_policy(policy, tokenizer, config), executor, tokenizer,
                           config, batch_size=batch_size, progress=progress, seed_ids=seed_ids)
        found = [_answers(tree, graded=True)[:1] for tree in trees]
        for sol, f in zip(out, found):
            # No PPM: no score (a Q here would be the grade itself).
            if f:
                sol.candidates.append(dataclasses.replace(f[0], score=0.0))
            else:
                sol.candidates.append(Candidate(None, -1.0, False))
    return rescore(out, scorer) if scorer is not None else out


def rescore(solutions: Sequence[Solutions], scorer) -> list[Solutions]:
    """The same solutions with each answer's score from `scorer` (a `ValueScorer`: a PPM or an
    ORM), all in one call; a trajectory without an answer keeps its score."""
    def answered(c: Candidate) -> bool:
        return c.answer is not None and bool(c.ids)

    scored = [c for s in solutions for c in s.candidates if answered(c)]
    values = iter(scorer.score([c.ids for c in scored]).tolist() if scored else [])

    def rescored(c: Candidate) -> Candidate:
        return dataclasses.replace(c, score=next(values)) if answered(c) else c

    return [Solutions(s.problem, [rescored(c) for c in s.candidates]) for s in solutions]


def mcts(problems: Sequence[Problem], policy, scorer, executor, tokenizer, search: SearchConfig, *,
         searches: int = 1, batch_size: int | None = None, progress: bool | None = None,
         seed_ids: Sequence[int] | None = None,
         keep_trees: Callable[[list[SearchTree]], None] | None = None) -> list[Solutions]:
    """`searches` independent test-time searches of each problem with the PPM (RSTAR.md
    section 3); every answer node found is a candidate, scored by the PPM. `keep_trees` is
    given each search's trees, search by search."""
    if scorer is None:
        raise ValueError("MCTS evaluation needs a PPM scorer: test-time search scores answers with "
                         "it")
    out = [Solutions(p, []) for p in problems]
    for i in range(searches):
        config = dataclasses.replace(search, mode=Mode.TEST, seed=search.seed + i)
        trees = run_search(problems, _engine_policy(policy, tokenizer, config), executor, tokenizer,
                           config, scorer=scorer, batch_size=batch_size, progress=progress,
                           seed_ids=seed_ids)
        for sol, tree in zip(out, trees):
            sol.candidates += _answers(tree, graded=False)
        if keep_trees is not None:
            keep_trees(trees)
    return out


def tree_writer(directory: str | pathlib.Path, process: int = 0
                ) -> Callable[[list[SearchTree]], None]:
    """A `keep_trees` for `mcts` that writes the trees into `directory` as tree records (what
    `launch/view_tree.py` draws), each search's after the previous one's. Shards are named by
    process (`tree-p<process>-*`); this process's shards from an earlier evaluation are
    deleted first, so an evaluation run again replaces its trees."""
    from rstar_jax.data.records import SUFFIX, RecordWriter

    directory = pathlib.Path(directory)
    prefix = f"p{process}"
    for old in directory.glob(f"tree-{prefix}-*{SUFFIX}"):
        old.unlink()

    def keep(trees: list[SearchTree]) -> None:  # the order of the records says which search
        with RecordWriter(directory, "tree", prefix=prefix) as writer:
            for tree in trees:
                writer.write(tree)

    return keep


def accuracy(solutions: Sequence[Solutions], rule: str = "highest", k: int | None = None,
             top_k: int = 4) -> float:
    """The fraction of problems whose selected answer is correct."""
    if not solutions:
        return math.nan
    picked = [s.select(rule, k, top_k) for s in solutions]
    return sum(bool(c and c.correct) for c in picked) / len(solutions)


def accuracy_curve(solutions: Sequence[Solutions], rule: str,
                   top_k: int = 4) -> list[tuple[int, float]]:
    """(k, accuracy with the first k trajectories) for k = 1, 2, 4, ... up to the most any
    problem has."""
    most = max((len(s.candidates) for s in solutions), default=0)
    ks = [2**i for i in range(most.bit_length()) if 2**i < most] + ([most] if most else [])
    return [(k, accuracy(solutions, rule, k, top_k)) for k in ks]


# --- statistics --------------------------------------------------------------------------------

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default). Unlike p +- z se it stays in
    [0, 1] and keeps its coverage at small n and near 0% or 100%. (NaN, NaN) when n = 0."""
    if n == 0:
        return math.nan, math.nan
    p, zz = successes / n, z * z
    center = (p + zz / (2 * n)) / (1 + zz / n)
    half = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n)) / (1 + zz / n)
    return max(0.0, center - half), min(1.0, center + half)


def paired_difference(a: Sequence[float], b: Sequence[float], *, samples: int = 10_000,
                      seed: int = 0, level: float = 0.95) -> dict:
    """mean(a) - mean(b) of two methods' outcomes (1 right, 0 wrong) on the same problems, with
    the percentile interval of a paired bootstrap: problems are resampled with replacement and
    each keeps both its outcomes, so what the two methods share does not widen the interval."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or len(a) != len(b):
        raise ValueError(f"paired outcomes need two sequences of one length, got {len(a)} and "
                         f"{len(b)}")
    if not d.size:
        return {"difference": math.nan, "ci95": [math.nan, math.nan], "n": 0, "wins": 0,
                "losses": 0}
    means = d[np.random.default_rng(seed).integers(0, d.size, size=(samples, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"difference": float(d.mean()), "ci95": [float(lo), float(hi)], "n": int(d.size),
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """The area under the ROC curve of `scores` for `labels`: the chance that a random positive
    scores above a random negative, ties counting half (Mann-Whitney U / (n_pos n_neg)).
    NaN without both a positive and a negative."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        return math.nan
    ranks = rankdata(np.asarray(scores, np.float64))
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def proportion(right: Sequence[bool]) -> dict:
    """{"accuracy", "n", "ci95"} of per-problem outcomes."""
    n, k = len(right), int(sum(right))
    return {"accuracy": k / n if n else math.nan, "n": n, "ci95": list(wilson_interval(k, n))}


def summary(solutions: Sequence[Solutions], rule: str = "highest", k: int | None = None,
            top_k: int = 4) -> dict:
    """One method's figures: `proportion` of the answers `rule` picks, the ids of the problems
    it got right, the mean number of trajectories it chose from, the accuracy curve over
    trajectories, and the same per level when problems carry `metadata["level"]`."""
    right = [bool(c and c.correct) for c in (s.select(rule, k, top_k) for s in solutions)]
    trajectories = float(np.mean([len(s.candidates[:k]) for s in solutions])) if solutions else 0.0
    out = proportion(right) | {
        "correct": [s.problem.id for s, r in zip(solutions, right) if r],
        "trajectories": trajectories}
    if max((len(s.candidates) for s in solutions), default=0) > 1:
        out["curve"] = accuracy_curve(solutions, rule, top_k)
    levels: dict[str, list[bool]] = {}
    for s, r in zip(solutions, right):
        if s.problem.metadata.get("level") is not None:
            levels.setdefault(str(s.problem.metadata["level"]), []).append(r)
    if levels:
        out["levels"] = {level: proportion(v) for level, v in sorted(levels.items())}
    return out


def _ranking_auc(solutions: Sequence[Solutions]) -> dict:
    """How well the candidates' scores put correct answers above wrong ones: over all answers
    pooled, and within each problem that has both (averaged)."""
    answered = [[c for c in s.candidates if c.answer is not None] for s in solutions]
    pooled = auc([c.score for cs in answered for c in cs],
                 [c.correct for cs in answered for c in cs])
    within = [auc([c.score for c in cs], [c.correct for c in cs]) for cs in answered]
    within = [x for x in within if not math.isnan(x)]
    return {"auc": pooled, "auc_within": float(np.mean(within)) if within else math.nan,
            "problems_with_both": len(within)}


# --- one policy, every method -------------------------------------------------------------------

METHODS = ("greedy", "sampled", "mcts")
# Method rows, in the order the report shows them; the comparisons are paired on the same problems.
GREEDY, MAJORITY, MCTS = "greedy", "maj@N", "MCTS + PPM"
BEST_PPM, BEST_ORM = "best-of-N (PPM)", "best-of-N (ORM)"
PASS = "pass@N (oracle)"  # any of the N samples correct: what a perfect verifier would pick
COMPARISONS = ((MCTS, BEST_PPM), (BEST_PPM, MAJORITY), (MAJORITY, GREEDY), (BEST_PPM, BEST_ORM),
               (MCTS, GREEDY))


@dataclasses.dataclass
class Evaluation:
    """What `evaluate_policy` found: per method its `summary` (results), the reward models'
    answer ranking (quality: the PPM's and ORM's AUC over the sampled answers, pooled and within
    a problem, and over the greedy answers, `*_auc_greedy`), and paired
    differences between methods (comparisons, "A vs B": A's accuracy minus B's)."""

    problems: list[str]
    results: dict[str, dict]
    quality: dict[str, float]
    comparisons: dict[str, dict]


def compare(problems: Sequence[str], a: dict, b: dict, **kwargs) -> dict:
    """`paired_difference` of two summaries of the same problems (ids, in any order)."""
    right_a, right_b = set(a["correct"]), set(b["correct"])
    return paired_difference([p in right_a for p in problems], [p in right_b for p in problems],
                             **kwargs)


def evaluate_policy(problems: Sequence[Problem], policy, executor, tokenizer, *,
                    budget: SearchConfig, search: SearchConfig | None = None, ppm=None, orm=None,
                    samples: int | None = None, temperature: float = 0.7, searches: int = 1,
                    methods: Sequence[str] = METHODS,
                    batch_size: int | None = None, progress: bool | None = None,
                    process: tuple[int, int] = (0, 1), gather: Gather | None = None,
                    trees_dir: str | pathlib.Path | None = None) -> Evaluation:
    """Greedy pass@1, maj@N and best-of-N over N sampled solutions (best-of-N with the PPM and,
    given one, an outcome reward model `orm`), and MCTS + PPM with `searches` test-time searches
    of `search`, on `problems`. N defaults to search.rollouts x searches, MCTS's trajectory
    budget, so the methods compare at equal trajectories. MCTS's answer is the highest-scored
    node of its one search, or with several searches the top-k vote (RSTAR.md section 3).
    Methods needing the PPM are skipped without one. `budget` gives single paths' step budgets.

    Several processes (`process` = (index, count), as `jax.process_index()`, `process_count()`)
    each solve their `share` of the problems and `gather` exchanges the solutions, so that every
    process returns the evaluation of them all. With `trees_dir`, the MCTS trees are written
    there (`tree_writer`), each process its own."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    index, count = process
    if count > 1 and gather is None:
        raise ValueError(f"process {index} of {count}: several processes need a gather to exchange "
                         "solutions")
    positions = share(len(problems), index, count, batch_size)  # one process: every problem
    mine = [problems[i] for i in positions]
    kw = {"batch_size": batch_size, "progress": progress, "seed_ids": positions}

    def everyone(name: str, solutions: list[Solutions]) -> list[Solutions]:
        return _everyone(problems, solutions, name, gather) if count > 1 else solutions

    n = samples or (search.rollouts * searches if search is not None else 8)
    results, quality = {}, {}
    if "greedy" in methods:
        greedy = solve(mine, policy, executor, tokenizer, search=budget, **kw)
        results[GREEDY] = summary(everyone("greedy", greedy))
        for name, model in (("ppm", ppm), ("orm", orm)):
            if model is not None:
                # one answer a problem: only the pooled AUC, cheap enough for every round
                scored = everyone(f"greedy scored by the {name}", rescore(greedy, model))
                quality[f"{name}_auc_greedy"] = _ranking_auc(scored)["auc"]
    if "sampled" in methods:
        sampled = solve(mine, policy, executor, tokenizer, samples=n, temperature=temperature,
                        search=budget, **kw)
        everyone_sampled = everyone("sampled", sampled)
        results[MAJORITY] = summary(everyone_sampled, "majority")
        results[PASS] = summary(everyone_sampled, "oracle")
        for name, model in (("ppm", ppm), ("orm", orm)):
            if model is not None:
                scored = everyone(f"sampled scored by the {name}", rescore(sampled, model))
                results[BEST_PPM if name == "ppm" else BEST_ORM] = summary(scored, "highest")
                quality |= {f"{name}_{k}": v for k, v in _ranking_auc(scored).items()}
    if "mcts" in methods and ppm is not None and search is not None:
        keep = tree_writer(trees_dir, index) if trees_dir is not None else None
        found = everyone("mcts", mcts(mine, policy, ppm, executor, tokenizer, search,
                                      searches=searches, keep_trees=keep, **kw))
        results[MCTS] = summary(found, "highest" if searches == 1 else "top_k_vote")
        results[MCTS + " (weighted vote)"] = summary(found, "weighted_vote")
    ids = [p.id for p in problems]
    comparisons = {f"{a} vs {b}": compare(ids, results[a], results[b]) for a, b in COMPARISONS
                   if a in results and b in results}
    return Evaluation(ids, results, quality, comparisons)


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _interval(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{_pct(r['accuracy'])} [{_pct(lo)}, {_pct(hi)}]"


def report(evaluation: Evaluation, out_dir: str | pathlib.Path | None = None,
           title: str = "evaluation") -> str:
    """Markdown of an evaluation: a row per method (accuracy, 95% interval, n, trajectories,
    per level), the reward models' AUCs and the paired differences. With `out_dir`, also
    `results.json` ({method: summary}), `results.md`, `evaluation.json` (all of it) and
    `accuracy.png` (accuracy against trajectories, a line per method with a curve)."""
    results = evaluation.results
    levels = sorted({lv for r in results.values() for lv in r.get("levels", {})})
    head = f"| {title} | accuracy [95% CI] | n | trajectories |"
    head += "".join(f" level {lv} |" for lv in levels)
    lines = [head, "|---" * (4 + len(levels)) + "|"]

    def level_cell(r: dict, lv) -> str:
        if lv not in r.get("levels", {}):
            return " - |"
        return f" {_pct(r['levels'][lv]['accuracy'])} ({r['levels'][lv]['n']}) |"

    for name, r in results.items():
        cells = "".join(level_cell(r, lv) for lv in levels)
        lines.append(f"| {name} | {_interval(r)} | {r['n']} | {r['trajectories']:.1f} |{cells}")
    if evaluation.quality:
        q = evaluation.quality
        lines += ["", "| reward model | AUC (all answers) | AUC (within a problem) |",
                  "|---|---|---|"]
        lines += [f"| {m.upper()} | {q[f'{m}_auc']:.3f} | {q[f'{m}_auc_within']:.3f} |"
                  for m in ("ppm", "orm")
                  if f"{m}_auc" in q]
    if evaluation.comparisons:
        lines += ["", "| paired difference | accuracy points [95% CI] | wins / losses |",
                  "|---|---|---|"]
        for name, c in evaluation.comparisons.items():
            lo, hi = c["ci95"]
            lines.append(f"| {name} | {100 * c['difference']:+.1f} [{100 * lo:+.1f}, "
                         f"{100 * hi:+.1f}] | {c['wins']} / {c['losses']} |")
    table = "\n".join(lines) + "\n"
    if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "evaluation.json").write_text(json.dumps(dataclasses.asdict(evaluation),
                                                        indent=1) + "\n")
        (out / "results.md").write_text(table)
        curves = {name: r["curve"] for name, r in results.items() if len(r.get("curve", ())) > 1}
        if curves:
            _plot(curves, out / "accuracy.png", title)
    return table


def _plot(curves: dict[str, list], path: pathlib.Path, title: str) -> None:
    plot_lines({name: tuple(zip(*curve)) for name, curve in curves.items()}, path,
               xlabel="trajectories per problem", ylabel="accuracy (%)", title=title, log2_x=True)


def plot_lines(lines: dict[str, tuple], path: pathlib.Path, *, xlabel: str, ylabel: str,
               title: str = "", log2_x: bool = False, xticks: Sequence | None = None) -> None:
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
