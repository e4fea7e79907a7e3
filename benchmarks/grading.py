"""Answer-grading throughput of rstar_jax.steps.grading.is_equivalent against plain math-verify.

On the labelled pairs of tests/data/grading_pairs.jsonl (hand-written predictions against real
eval-set reference answers), measures pairs/s of
  - ours: is_equivalent(pred, ref), all of our caches cleared before every run (cold: every
    pair is new; in an MCTS tree the reference parse would be shared, see the warm row);
  - peer: math_verify.verify(parse(ref), parse(pred)) with math-verify's defaults (its
    signal-based timeouts on; gold first, as its API wants); its small internal caches are
    cleared before every run too;
  - limit: a plain normalised string-equality check, our normaliser (uncached) then
    comparing with spaces removed: the floor cost of just reading both strings, and what
    string matching alone gets right.
Each figure is the median of --repeats runs after one warm-up run; accuracy is against the
labels. limit_pct = ours / limit x 100.

    python benchmarks/grading.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import statistics
import time

import math_verify
from math_verify import parse, verify
from math_verify import parser as mv_parser

from rstar_jax.steps import grading
from rstar_jax.steps.grading import clear_caches, is_equivalent

PAIRS_FILE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "grading_pairs.jsonl"


def median_seconds(fn, repeats: int, before=None) -> float:
    if before:
        before()
    fn()  # warm-up (imports, parser tables, sympy's own cache)
    times = []
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def clear_math_verify_caches():
    for cached in (mv_parser.parse_latex_cached, mv_parser.parse_expr_cached, mv_parser.extract_latex):
        cached.cache_clear()


def peer(pred: str, ref: str) -> bool:
    return verify(parse(ref), parse(pred))


def limit(pred: str, ref: str) -> bool:
    a, b = grading._normalize_uncached(pred), grading._normalize_uncached(ref)
    return bool(a) and grading._key(a) == grading._key(b)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its timeout warnings, if any

    rows = [json.loads(line) for line in PAIRS_FILE.read_text().splitlines() if line.strip()]
    pairs = [(r["pred"], r["ref"]) for r in rows]
    labels = [r["label"] for r in rows]

    def run(fn):
        return [fn(pred, ref) for pred, ref in pairs]

    methods = {"ours (is_equivalent, cold caches)": is_equivalent, "peer (math-verify parse+verify)": peer,
               "limit (normalised string equality)": limit}
    clear_caches()
    clear_math_verify_caches()
    answers = {name: run(fn) for name, fn in methods.items()}
    swapped = {name: [fn(ref, pred) for pred, ref in pairs] for name, fn in methods.items()}
    seconds = {
        "ours (is_equivalent, cold caches)": median_seconds(lambda: run(is_equivalent), args.repeats, clear_caches),
        "peer (math-verify parse+verify)": median_seconds(lambda: run(peer), args.repeats, clear_math_verify_caches),
        "limit (normalised string equality)": median_seconds(lambda: run(limit), args.repeats),
    }
    # Warm: the same pairs again without clearing the parse caches (pair cache off): the MCTS case,
    # where one reference is graded against many predictions.
    clear_caches()
    run(is_equivalent)
    warm_name = "ours (warm parse caches)"

    def run_warm():
        grading._grade_cached.cache_clear()
        run(is_equivalent)

    seconds[warm_name] = median_seconds(run_warm, args.repeats)
    answers[warm_name], swapped[warm_name] = answers["ours (is_equivalent, cold caches)"], swapped[
        "ours (is_equivalent, cold caches)"]

    n, positives = len(pairs), sum(labels)
    clear_caches()
    symbolic = sum(grading._decide(grading.normalize_answer(p), grading.normalize_answer(r)) is None
                   for p, r in pairs)
    print(f"{n} labelled pairs ({positives} equivalent, {n - positives} not) from "
          f"{len({(r['source'], r['index']) for r in rows})} reference answers of the rStar eval sets; "
          f"{symbolic} of them ({100 * symbolic / n:.0f}%) reach our sympy stage")
    print(f"math-verify {math_verify.__version__ if hasattr(math_verify, '__version__') else ''}"
          f"median of {args.repeats} runs; limit = plain normalised string equality (ours / limit = limit_pct)")
    print(f"{'':38s}{'pairs/s':>10s}{'ms/pair':>10s}{'accuracy':>10s}{'recall':>9s}{'false+':>8s}"
          f"{'symmetric':>11s}")
    for name, secs in seconds.items():
        got = answers[name]
        correct = sum(g == y for g, y in zip(got, labels))
        recall = sum(g and y for g, y in zip(got, labels)) / positives
        false_pos = sum(g and not y for g, y in zip(got, labels))
        symmetric = sum(a == b for a, b in zip(got, swapped[name]))
        print(f"{name:38s}{n / secs:10.0f}{1000 * secs / n:10.2f}{100 * correct / n:9.1f}%{100 * recall:8.1f}%"
              f"{false_pos:8d}{100 * symmetric / n:10.1f}%")
    ours = n / seconds["ours (is_equivalent, cold caches)"]
    peer_rate = n / seconds["peer (math-verify parse+verify)"]
    limit_rate = n / seconds["limit (normalised string equality)"]
    print(f"RESULT name=grading_pairs value={ours:.0f} unit=pairs/s peer={peer_rate:.0f} "
          f"ratio={ours / peer_rate:.2f} limit_pct={100 * ours / limit_rate:.1f}")


if __name__ == "__main__":
    main()
