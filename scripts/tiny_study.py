"""The tiny world's study: the rounds with larger test sets, and the paper's ablations.

    python scripts/tiny_study.py --workdir=runs/study

1. `configs/tiny.py:study` runs the four rounds in <workdir>/ppm: every method evaluated every
   round on the larger test set, an ORM trained beside the PPM every round.
2. The ablation of PPM-augmented search: <workdir>/terminal starts from a copy of rounds 0-2
   of that run and searches rounds 3-4 terminal-guided (no PPM values in the tree), as rounds
   1-2 do; everything else is the same.
3. It prints the tables docs/tiny_world.md quotes: per round, both runs' accuracies, the PPM's
   and ORM's answer-ranking AUC, and the paired differences of round 4.

Both runs resume like any run; rerun the command after a stop.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import sys

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_WORKDIR = flags.DEFINE_string("workdir", "runs/study",
                               "The two runs go in <workdir>/ppm and <workdir>/terminal.")
_VARIANT = flags.DEFINE_string("variant", "study", "The configs/tiny.py variant.")


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _row(x: dict, methods: list[str]) -> str:
    accs = [_pct(x["accuracy"].get(m, {}).get("accuracy")) for m in methods]
    q = x["quality"]
    auc = [f"{q[k]:.3f}" if k in q and not math.isnan(q[k]) else "-"
           for k in ("ppm_auc", "orm_auc")]
    return " | ".join([str(x["round"]), x["mode"], *accs, *auc])


def main(argv):
    del argv
    from configs import tiny
    from rstar_jax import evaluate, evolve
    from rstar_jax.evaluate import BEST_ORM, BEST_PPM, GREEDY, MAJORITY, MCTS, PASS

    top = pathlib.Path(_WORKDIR.value)
    config = tiny.get_config(_VARIANT.value)
    evolve.run(config, top / "ppm")

    ablation = tiny.get_config(_VARIANT.value)
    for r in (3, 4):
        ablation.search[f"round{r}"].mode = "terminal"
    target = top / "terminal"
    if not (target / "config.json").exists():
        # (the run writes it, so a resumed ablation keeps its rounds)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in ("problems", "round_0", "round_1", "round_2"):
            shutil.copytree(top / "ppm" / name, target / name)
    evolve.run(ablation, target)

    methods = [GREEDY, MAJORITY, BEST_PPM, BEST_ORM, MCTS, PASS]
    print(f"\n| run | round | mode | {' | '.join(methods)} | PPM AUC | ORM AUC |")
    print("|---" * (5 + len(methods)) + "|")
    for name in ("ppm", "terminal"):
        for x in json.loads((top / name / "report.json").read_text()):
            if name == "ppm" or x["round"] >= 3:
                print(f"| {name} | {_row(x, methods)} |")
    def line(comparison, c):
        lo, hi = c["ci95"]
        print(f"- {comparison}: {100 * c['difference']:+.1f} points [{100 * lo:+.1f}, "
              f"{100 * hi:+.1f}], wins/losses {c['wins']}/{c['losses']}")

    for name in ("ppm", "terminal"):
        last = json.loads((top / name / "report.json").read_text())[-1]
        print(f"\nPaired differences, round {last['round']}, {name} run:")
        for comparison, c in last["comparisons"].items():
            line(comparison, c)
    # The ablation itself: the same test problems, rounds 3-4 searched with and without the PPM.
    r = config.rounds
    runs = {name: json.loads((top / name / f"round_{r}" / "eval" / "evaluation.json").read_text())
            for name in ("ppm", "terminal")}
    print(f"\nPaired differences, round {r}, PPM-augmented minus terminal-guided rounds 3-{r}:")
    for method in (GREEDY, MAJORITY, BEST_PPM, MCTS):
        a, b = (runs[name]["results"].get(method) for name in ("ppm", "terminal"))
        if a and b:
            line(method, evaluate.compare(runs["ppm"]["problems"], a, b))
    return 0


if __name__ == "__main__":
    app.run(main)
