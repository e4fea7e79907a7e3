"""Answer-grading throughput of rstar_jax.steps.grading.is_equivalent against plain math-verify.

On the labelled pairs of tests/data/grading_pairs.jsonl (hand-written predictions against real
eval-set reference answers), measures pairs/s and accuracy against the labels of
  - ours: is_equivalent(pred, ref), all our caches cleared before every run (cold: every pair
    is new). A second row keeps the parse caches warm between runs, as when an MCTS tree
    grades many predictions against one reference (the whole-pair cache is still cleared);
  - peer: math_verify.verify(parse(ref), parse(pred)), math-verify's defaults (its
    signal-based timeouts on; gold first, as its API wants), its small internal caches
    cleared before every run. parse() looks for an answer inside model output and on a bare
    answer string ("x^3+3x-6", "(8,-2)") often finds nothing, which makes this peer fast and
    inaccurate. For information, a second row wraps both answers in $...$ first, the usual
    way to hand math-verify a bare answer; the RESULT line uses the plain call;
  - limit: plain normalised string equality (our normaliser, uncached, then comparison with
    spaces removed): the floor cost of reading both strings, and what string matching alone
    gets right. limit_pct = ours / limit x 100.
Each time is the median of --repeats runs after one warm-up run.

    python benchmarks/grading.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import statistics
import time

from math_verify import parse, verify
from math_verify import parser as mv_parser

from rstar_jax.steps import grading
from rstar_jax.steps.grading import clear_caches, is_equivalent, normalize_answer
from rstar_jax.steps.grading.normalize import key, normalize_uncached
from rstar_jax.steps.grading.pipeline import decide

PAIRS_FILE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "grading_pairs.jsonl"
OURS, OURS_WARM = "ours (is_equivalent, cold caches)", "ours (warm parse caches)"
PEER, PEER_WRAPPED = "peer (math-verify parse+verify)", "peer, answers wrapped in $...$"
LIMIT = "limit (normalised string equality)"


def median_seconds(fn, repeats: int, before=lambda: None) -> float:
    before()
    fn()  # warm-up (imports, parser tables, sympy's own cache)
    times = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def clear_math_verify_caches():
    caches = (mv_parser.parse_latex_cached, mv_parser.parse_expr_cached, mv_parser.extract_latex)
    for cached in caches:
        cached.cache_clear()


def peer(pred: str, ref: str) -> bool:
    return verify(parse(ref), parse(pred))


def peer_wrapped(pred: str, ref: str) -> bool:
    return verify(parse(f"${ref}$"), parse(f"${pred}$"))


def limit(pred: str, ref: str) -> bool:
    a, b = normalize_uncached(pred), normalize_uncached(ref)
    return bool(a) and key(a) == key(b)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its timeout warnings, if any

    rows = [json.loads(line) for line in PAIRS_FILE.read_text().splitlines() if line.strip()]
    pairs = [(r["pred"], r["ref"]) for r in rows]
    labels = [r["label"] for r in rows]
    n, positives = len(pairs), sum(labels)

    # name: (grader, what to do before each timed run)
    methods = {
        OURS: (is_equivalent, clear_caches),
        OURS_WARM: (is_equivalent, grading._grade_cached.cache_clear),
        PEER: (peer, clear_math_verify_caches),
        PEER_WRAPPED: (peer_wrapped, clear_math_verify_caches),
        LIMIT: (limit, lambda: None),
    }
    seconds, answers, symmetric = {}, {}, {}
    for name, (grade, before) in methods.items():
        before()
        answers[name] = [grade(p, r) for p, r in pairs]
        symmetric[name] = sum(grade(r, p) == a for (p, r), a in zip(pairs, answers[name]))
        seconds[name] = median_seconds(
            lambda grade=grade: [grade(p, r) for p, r in pairs], args.repeats, before
        )

    clear_caches()
    symbolic = sum(decide(normalize_answer(p), normalize_answer(r)) is None for p, r in pairs)
    sources = len({(r["source"], r["index"]) for r in rows})
    print(f"{n} labelled pairs ({positives} equivalent, {n - positives} not) against {sources} "
          f"reference answers of the rStar eval sets; {symbolic} ({100 * symbolic / n:.0f}%) "
          f"reach our sympy stage")
    print(f"median of {args.repeats} runs; limit = plain normalised string equality "
          f"(limit_pct = ours / limit); false+ = pairs wrongly called equivalent; "
          f"symmetric = pairs graded alike both ways")
    print(f"{'':38s}{'pairs/s':>10s}{'ms/pair':>10s}{'accuracy':>10s}{'recall':>9s}"
          f"{'false+':>8s}{'symmetric':>11s}")
    for name, secs in seconds.items():
        got = answers[name]
        correct = sum(g == y for g, y in zip(got, labels))
        recall = sum(g and y for g, y in zip(got, labels)) / positives
        false_pos = sum(g and not y for g, y in zip(got, labels))
        print(f"{name:38s}{n / secs:10.0f}{1000 * secs / n:10.2f}{100 * correct / n:9.1f}%"
              f"{100 * recall:8.1f}%{false_pos:8d}{100 * symmetric[name] / n:10.1f}%")
    ours, peer_rate, limit_rate = (n / seconds[name] for name in (OURS, PEER, LIMIT))
    print(f"RESULT name=grading_pairs value={ours:.0f} unit=pairs/s peer={peer_rate:.0f} "
          f"ratio={ours / peer_rate:.2f} limit_pct={100 * ours / limit_rate:.1f}")


if __name__ == "__main__":
    main()
