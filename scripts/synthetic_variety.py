"""How varied are the synthetic problems, next to DeepMind's mathematics_dataset?

Counts, over 2000 problems of each: distinct question shapes (the question with every number
replaced by N, so two problems differing only in their numbers share a shape), problem kinds,
mean question length. mathematics_dataset is not a dependency: install it into some
environment (`pip install mathematics_dataset`) and run this script there; it is imported with a
small shim for current sympy and numpy. Without it only our figures print.

    python scripts/synthetic_variety.py [--n 2000]
"""

from __future__ import annotations

import argparse
import collections
import importlib
import random
import re
import sys

import numpy as np

from rstar_jax.data.synthetic import generate


def shape(question: str) -> str:
    return re.sub(r"-?\d+(\.\d+)?", "N", question)


def deepmind(n: int, seed: int = 0) -> list[tuple[str, str]] | None:
    """(kind, question) of n problems from mathematics_dataset's train modules, or None."""
    try:
        dio = importlib.import_module("sympy.solvers.diophantine")
        from sympy.solvers.diophantine.diophantine import base_solution_linear

        dio = sys.modules["sympy.solvers.diophantine"]  # the attribute path yields the function
        dio.base_solution_linear = base_solution_linear  # moved in sympy 1.7
        for name, typ in (("int", int), ("float", float), ("bool", bool)):
            if name not in np.__dict__:
                setattr(np, name, typ)  # removed in numpy 1.24
        from mathematics_dataset.modules import modules
    except ImportError as e:
        print(f"mathematics_dataset not available ({e}); showing our generator only")
        return None
    kinds = []

    def walk(prefix, tree):
        for key, value in tree.items():
            walk(f"{prefix}{key}__", value) if isinstance(value, dict) else kinds.append((prefix + key, value))

    walk("", modules.train(lambda r: r))
    rng, out, failures = random.Random(seed), [], 0
    while len(out) < n:
        name, make = rng.choice(kinds)
        try:
            out.append((name, str(make().question)))
        except Exception:  # some modules break on current sympy even with the shim
            failures += 1
    print(f"mathematics_dataset: {len(kinds)} modules, {failures} generation failures skipped")
    return out


def report(label: str, items: list[tuple[str, str]]) -> None:
    shapes = {shape(q) for _, q in items}
    kinds = collections.Counter(k for k, _ in items)
    print(f"{label:<22}{len(items):>8}{len(shapes):>10}{len(shapes) / len(items):>8.2f}{len(kinds):>7}"
          f"{sum(len(q) for _, q in items) / len(items):>10.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    ours = [(f"{p.metadata['family']}/{p.metadata['level']}", p.question)
            for p in generate(args.n, seed=0)]
    theirs = deepmind(args.n)
    print(f"{'':<22}{'problems':>8}{'shapes':>10}{'ratio':>8}{'kinds':>7}{'mean len':>10}")
    report("rstar_jax synthetic", ours)
    if theirs:
        report("mathematics_dataset", theirs)


if __name__ == "__main__":
    main()
