"""What a round's search found: its trajectories right and in all, per family, level and how
the trajectory's first step begins (for the synthetic generator, its solution style).

    python scripts/search_outcomes.py runs/tiny/round_1 [--level=3]

A round can teach its policy only what its search found: a family whose trajectories at a
level are all wrong is one the next round cannot learn (docs/tiny_world.md).
"""

from __future__ import annotations

import collections
import pathlib
import re
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_LEVEL = flags.DEFINE_integer("level", 0, "Only problems of this level (0: every level).")


def opening(text: str) -> str:
    """A first step's comment up to its first number or parenthesis: "evaluate the parentheses"."""
    comment = next((line for line in text.splitlines() if line.startswith("# Step 1:")),
                   "(no numbered step)")
    return re.split(r"[\d(]", comment.removeprefix("# Step 1:"))[0].strip()


def main(argv):
    from rstar_jax.data import records

    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    right, total = collections.Counter(), collections.Counter()
    for tree in records.read_records(f"{argv[1]}/search", "tree"):
        meta = tree.problem.metadata
        if _LEVEL.value and meta.get("level") != _LEVEL.value:
            continue
        for node in np.flatnonzero(tree.is_answer):
            key = (meta.get("family", "?"), meta.get("level", "?"),
                   opening(tree.texts[tree.path(int(node))[0]]))
            total[key] += 1
            right[key] += int(tree.reward[node] > 0)
    print("| family | level | first step | right / trajectories |\n|---|---|---|---|")
    for key in sorted(total):
        print(f"| {key[0]} | {key[1]} | {key[2]} | {right[key]} / {total[key]} |")
    families = sorted({key[0] for key in total})
    print("\n| family | right / trajectories |\n|---|---|")
    for family in families:
        keys = [key for key in total if key[0] == family]
        print(f"| {family} | {sum(right[k] for k in keys)} / {sum(total[k] for k in keys)} |")
    return 0


if __name__ == "__main__":
    app.run(main)
