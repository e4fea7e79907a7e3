"""MCTS throughput: rollouts/s of the batched search at B = 1, 8, 32, 128 problems, and where
the wall time goes.

The tiny preset (random weights, steered towards step tokens by `rstar_jax.testing`, so steps
end after about ten tokens), K = 8 candidates per expansion, PPM-augmented mode with a random
tiny PPM, the real sandboxed executor (2 workers) and grader. Random text is rarely valid
Python, so failing steps are tolerated (errors_threshold = max_depth, as the bootstrap round
tolerates some): every rollout then descends to max_depth, executing every candidate on the
way, the shape of a search whose policy writes mostly valid code. Each size searches
max(B, 32) problems, B at a time, 4 rollouts each, after two untimed warm-up runs of the same
shapes (the second starts with the prefix stores the first filled, and meets a few shapes of
its own); figures are medians over repeats.

Each size runs twice: `plain` prefills every prompt whole and decodes each search step in
lockstep; `reuse` gives the policy and the PPM prefix stores of B rows (`Engine(prefix_rows=)`)
and decodes with continuous batching (`SearchConfig(continuous=True)`); `reuse/plain` is their
rollouts/s ratio (`benchmarks/prefix_reuse.py` breaks it down into tokens).

The peer is the plain search one problem at a time (B = 1, the same 32 problems); `ratio` is
rollouts/s at B = 32 over B = 1. The limit is the work that cannot be avoided: generation and execution;
`limit_pct` is their share of the wall time at B = 32 (the rest being tree ops, grading, PPM
and host glue).

    python benchmarks/mcts.py [--repeats 3] [--sizes 1,8,32,128]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile

import jax

from rstar_jax.engine import Engine, ValueScorer
from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.search.driver import EnginePolicy, Problem, SearchStats, run_search
from rstar_jax.steps.executor import CodeExecutor
from rstar_jax.testing import steered_tiny_policy, tiny_tokenizer

PARTS = ("tree_ops", "generation", "execution", "grading", "ppm", "host")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="1,8,32,128")
    parser.add_argument("--rollouts", type=int, default=4)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    tokenizer = tiny_tokenizer(tempfile.mkdtemp(prefix="mcts-bench-tok-"))
    config = SearchConfig(mode=Mode.PPM, rollouts=args.rollouts, candidates=8, max_depth=8,
                          errors_threshold=8, max_step_tokens=32, max_output_tokens=32)
    print(f"tiny policy + PPM (random, steered), K={config.candidates}, {config.rollouts} rollouts "
          f"per problem, max depth {config.max_depth}, {config.max_step_tokens} tokens per step, "
          "executor 2 workers; each size searches max(B, 32) problems, B at a time")
    print(f"{'B':>4s}{'':>7s}{'rollouts/s':>12s}{'ms/rollout':>12s}"
          + "".join(f"{p:>12s}" for p in PARTS) + f"{'nodes':>8s}{'reuse/plain':>13s}")
    results = {}
    with CodeExecutor(num_workers=2) as executor:
        for b in sizes:
            problems = [Problem(f"What is {i} + {i % 7}?", str(i + i % 7))
                        for i in range(max(b, 32))]
            for reuse in (False, True):
                rows = b if reuse else 0
                engine = Engine(steered_tiny_policy(tokenizer, 0), vocab_size=tokenizer.vocab_size,
                                pad_id=tokenizer.pad_id, prefix_rows=rows)
                scorer = ValueScorer(steered_tiny_policy(tokenizer, 1, value_head=True),
                                     pad_id=tokenizer.pad_id, max_rows=1024, prefix_rows=rows)
                c = dataclasses.replace(config, continuous=reuse)
                policy = EnginePolicy(engine, tokenizer, c)

                def once(problems=problems, b=b, policy=policy, scorer=scorer, c=c):
                    stats = SearchStats()
                    run_search(problems, policy, executor, tokenizer, c, scorer=scorer,
                               batch_size=b, progress=False, stats=stats)
                    return stats

                once()  # compile every shape this size meets
                once()  # and those of a search that starts with full prefix stores
                runs = [once() for _ in range(args.repeats)]
                rate = statistics.median(r.rollouts / r.wall for r in runs)
                share = {p: statistics.median(getattr(r, p) / r.wall for r in runs)
                         for p in PARTS}
                results[b, reuse] = rate, share
                gain = f"{rate / results[b, False][0]:13.2f}" if reuse else ""
                print(f"{b:4d}{'reuse' if reuse else 'plain':>7s}{rate:12.1f}{1000 / rate:12.1f}"
                      + "".join(f"{100 * share[p]:11.1f}%" for p in PARTS)
                      + f"{runs[0].nodes:8d}{gain}", flush=True)
                # each compiled shape holds memory maps: a process has a limited number
                jax.clear_caches()
    results = {b: results[b, False] for b in sizes}
    if 1 in results and 32 in results:
        (peer, _), (ours, share) = results[1], results[32]
        overhead = share["tree_ops"] + share["host"]
        print(f"B=32: tree ops + host glue {100 * overhead:.1f}% of the wall time (target <= 10%); "
              f"rollouts/s {ours / peer:.1f}x B=1 (target >= 6x)")
        print(f"RESULT name=mcts_rollouts_per_s value={ours:.2f} unit=rollouts/s peer={peer:.2f} "
              f"ratio={ours / peer:.2f} "
              f"limit_pct={100 * (share['generation'] + share['execution']):.1f}")


if __name__ == "__main__":
    main()
