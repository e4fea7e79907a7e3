"""The round report of a self-evolution run: one row per round, built from its stage summaries.

A row holds what the search found (problems solved, by the first search and after round 4's
second search of the unsolved ones), what training got (SFT examples and steps, PPM pairs and
steps, ORM examples), and the round's evaluation on the test problems: every method's accuracy
(greedy, maj@N, best-of-N with the PPM and the ORM, MCTS + PPM at equal trajectories) overall
and per level, the PPM's held-out step-pair accuracy, the reward models' AUC at ranking the
sampled answers, and paired differences (the methods against each other, this round's greedy
against round 0's). `write` renders it as report.md, report.json and rounds.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Sequence

from rstar_jax import evaluate
from rstar_jax.evaluate import BEST_ORM, BEST_PPM, GREEDY, MAJORITY, MCTS, PASS

_METHODS = (GREEDY, MAJORITY, BEST_PPM, BEST_ORM, MCTS, PASS)


@dataclasses.dataclass
class RoundResult:
    """One row of the report (fields without a value in a round stay NaN, 0 or empty)."""

    round: int
    policy: str
    mode: str = "-"
    problems: int = 0
    solved: int = 0
    # by the round's first search (round 4 searches its unsolved problems again)
    solved_first: int = 0
    sft: int = 0
    sft_steps: int = 0
    pairs: int = 0
    ppm_steps: int = 0
    outcomes: int = 0
    greedy: float = math.nan
    mcts: float = math.nan
    ppm_pair_accuracy: float = math.nan  # held-out step pairs, the problems the PPM never saw
    # method -> evaluate.summary
    accuracy: dict[str, dict] = dataclasses.field(default_factory=dict)
    quality: dict[str, float] = dataclasses.field(default_factory=dict)  # ppm_auc, orm_auc, ...
    comparisons: dict[str, dict] = dataclasses.field(default_factory=dict)  # paired differences
    minutes: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    def set_evaluation(self, evaluation: dict, first: RoundResult | None = None) -> None:
        """Takes the eval stage's `evaluate.Evaluation` (as a dict); with `first` (round 0), adds
        this round's greedy accuracy against round 0's on the same problems."""
        self.accuracy = {name: {k: v for k, v in r.items() if k != "curve"}
                         for name, r in evaluation["results"].items()}
        self.quality = dict(evaluation["quality"])
        self.comparisons = dict(evaluation["comparisons"])
        self.greedy = self.accuracy.get(GREEDY, {}).get("accuracy", math.nan)
        self.mcts = self.accuracy.get(MCTS, {}).get("accuracy", math.nan)
        if first is not None and GREEDY in first.accuracy and GREEDY in self.accuracy:
            self.comparisons[f"greedy: round {self.round} vs round "
                             f"{first.round}"] = evaluate.compare(
                evaluation["problems"], self.accuracy[GREEDY], first.accuracy[GREEDY])


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(results: Sequence[RoundResult]) -> str:
    """The report's markdown: the rounds, accuracy per level, and the paired differences."""
    methods = [m for m in _METHODS if any(m in x.accuracy for x in results)]
    trajectories = next((x.accuracy[MAJORITY]["trajectories"]
                         for x in results if MAJORITY in x.accuracy), None)
    lines = ["| round | search policy | mode | solved (first search) | SFT examples (steps) | PPM "
             "pairs (steps) | ORM examples "
             "| " + " | ".join(methods) + " | PPM held-out pair acc. | PPM AUC | ORM AUC "
             "| PPM AUC (greedy answers) | minutes |", "|---" * (12 + len(methods)) + "|"]
    for x in results:
        solved = "-"
        if x.problems:
            solved = f"{x.solved}/{x.problems} {_pct(x.solved / x.problems)} ({x.solved_first})"
        sft = f"{x.sft} ({x.sft_steps})" if x.sft else "-"
        pairs = f"{x.pairs} ({x.ppm_steps})" if x.pairs else "-"
        accs = " | ".join(_pct(x.accuracy.get(m, {}).get("accuracy")) for m in methods)
        lines.append(f"| {x.round} | {x.policy} | {x.mode} | {solved} | {sft} | {pairs} | "
                     f"{x.outcomes or '-'} | {accs} | {_pct(x.ppm_pair_accuracy)} | "
                     f"{_num(x.quality.get('ppm_auc'))} | {_num(x.quality.get('orm_auc'))} | "
                     f"{_num(x.quality.get('ppm_auc_greedy'))} | {x.minutes:.1f} |")
    n = next((x.accuracy[GREEDY]["n"] for x in results if GREEDY in x.accuracy), 0)
    lines += ["",
              f"Test problems: {n}; maj@N, best-of-N and MCTS + PPM use N = "
              f"{_num(trajectories, 0)} trajectories. AUCs: how often the reward model scores a "
              "right answer above a wrong one, over the sampled answers (PPM, ORM) or the greedy "
              "ones. pass@N (oracle): any of the N samples right, the ceiling of maj@N and "
              "best-of-N. 95% Wilson intervals in report.json; per level below."]
    levels = sorted({lv for x in results for r in x.accuracy.values()
                     for lv in r.get("levels", {})})
    if levels:
        shown = [m for m in (GREEDY, MCTS) if m in methods]
        lines += ["", "| round | " + " | ".join(f"{m} level {lv}" for m in shown
                                                for lv in levels) + " |",
                  "|---" * (1 + len(shown) * len(levels)) + "|"]
        for x in results:
            cells = []
            for m in shown:
                for lv in levels:
                    r = x.accuracy.get(m, {}).get("levels", {}).get(lv)
                    cells.append(f"{_pct(r['accuracy'])} ({r['n']})" if r else "-")
            lines.append(f"| {x.round} | " + " | ".join(cells) + " |")
    last = results[-1]
    if last.comparisons:
        lines += ["",
                  f"Paired differences in round {last.round} (accuracy points, same problems, "
                  "paired bootstrap 95% "
                  "interval):", "", "| comparison | difference [95% CI] | wins / losses |",
                  "|---|---|---|"]
        for name, c in last.comparisons.items():
            lo, hi = c["ci95"]
            lines.append(f"| {name} | {100 * c['difference']:+.1f} [{100 * lo:+.1f}, "
                         f"{100 * hi:+.1f}] | {c['wins']} / {c['losses']} |")
    notes = [n for x in results for n in x.notes]
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


def write(results: Sequence[RoundResult], directory: pathlib.Path, note: str = "") -> list[str]:
    """Writes report.md, report.json and rounds.png in `directory`; returns their names."""
    text = table(results) + (f"\n{note}\n" if note else "")
    (directory / "report.md").write_text(text)
    (directory / "report.json").write_text(json.dumps([dataclasses.asdict(x) for x in results],
                                                      indent=1, default=float) + "\n")
    rounds = [x.round for x in results]
    lines = {m: (rounds, [x.accuracy.get(m, {}).get("accuracy", math.nan) for x in results])
             for m in _METHODS if any(m in x.accuracy for x in results)}
    lines["training problems solved"] = (rounds,
                                         [x.solved / x.problems if x.problems else math.nan
                                          for x in results])
    evaluate.plot_lines(lines, directory / "rounds.png", xlabel="round", ylabel="%", xticks=rounds)
    return ["report.md", "report.json", "rounds.png"]


def scalars(x: RoundResult) -> dict[str, float]:
    """The round's figures for TensorBoard (NaNs left out)."""
    values = {"solved": x.solved / x.problems if x.problems else math.nan, "sft_examples": x.sft,
              "ppm_pairs": x.pairs, "ppm_pair_accuracy": x.ppm_pair_accuracy, "minutes": x.minutes,
              **{f"accuracy/{m}": r["accuracy"] for m, r in x.accuracy.items()},
              **{k: v for k, v in x.quality.items() if k.endswith("auc")}}
    return {k: float(v) for k, v in values.items() if not (isinstance(v, float) and math.isnan(v))}


def log_round(x: RoundResult, logdir: str | pathlib.Path) -> None:
    """The round's figures to TensorBoard under `logdir` (`rounds/...`), beside each stage's
    training curves."""
    from tensorboardX import SummaryWriter  # (slow to import; only a run's process 0 writes)

    with SummaryWriter(str(logdir)) as writer:
        for name, value in scalars(x).items():
            writer.add_scalar(f"rounds/{name}", value, x.round)
