"""Prefix reuse in the search: tokens the policy and the PPM compute per expansion against the
tokens no earlier expansion of the problem computed, and rollouts/s with reuse against without.

The search is `benchmarks/mcts.py`'s: the tiny steered policy and a random tiny PPM, K = 8,
PPM-augmented, 4 rollouts per problem to depth 8, the real executor; 32 problems, B = 32 at
a time. It runs three times, each in a process of its own; each time one untimed search counts
the tokens (and compiles), a second untimed one compiles what the first did not (the stores
start full), then the timed repeats run without the counting wrappers:
- without: every expansion prefills its prompt and path whole, and the PPM its prefix, and
  each search step decodes its problems in lockstep;
- stores only: the engine's and the PPM's prefix stores (`prefix_rows` = B unless
  `--store_rows` says otherwise), which keep recent prompts, so a prompt runs only what it does
  not share with one of them;
- with reuse: the stores, and continuous batching (`ContinuousDecoder`): a problem's samples
  are decoded in chunks with other problems', it goes on as soon as its own samples stop, and
  a sample's keys and values go to its place's store row when the next prompt continues it.

Tokens (not counting padding):
- new: for the policy, the prompt tokens that no earlier call for the problem computed (as a
  prompt, or as a prompt and one of its samples) plus the tokens sampled; for the PPM, the
  prefix tokens it has not computed for the problem before plus the children's tokens;
- computed: what the models ran (`TokenCounts.computed`): prefill tokens, decode steps of
  every row until its call's (or chunk's) last row stops (a row that stopped early still
  computes), and the PPM's children.
The target is computed / new <= 1.2 for each model. `stopped` is the share of decode steps
spent on rows that had already stopped (the cost of decoding in lockstep, or to the end of a
chunk). Padding, which the token counts leave out:
- `reads`: the prompt positions decode attention read per position a running row needed
  (`TokenCounts.prefix_waste`): rows padded to a bucket, stopped rows, each chunk's cells and
  its places' prompts padded to the longest;
- `slots`: the PPM's children's token slots per child token (rows and widths padded).

RESULT: value = rollouts/s with reuse, peer = without, limit_pct = 100 x new / computed (policy
and PPM together, with reuse): 100 means nothing is computed twice.

    python benchmarks/prefix_reuse.py [--repeats 3] [--problems 32] [--batch 32] [--deep]

`--deep`: steps of up to 112 tokens (a weaker steer), so paths reach hundreds of tokens: where
reuse should gain most.
"""

from __future__ import annotations

import argparse
import copy
import json
import os.path
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from rstar_jax.engine import Engine, TokenCounts, ValueScorer
from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.data.problem import Problem
from rstar_jax.search.driver import EnginePolicy, SearchStats, run_search
from rstar_jax.steps.executor import CodeExecutor
from rstar_jax.testing import steered_tiny_policy, tiny_tokenizer


class Seen:
    """The token sequences a model computed for each problem: a new sequence's novel tokens are
    those past its longest common start with any of them."""

    def __init__(self, prompts: Sequence[Sequence[int]]):
        self.prompts = [list(p) for p in prompts]
        self.sequences: dict[int, list[list[int]]] = {i: [] for i in range(len(prompts))}

    def problem(self, sequence: Sequence[int]) -> int:
        for i, p in enumerate(self.prompts):
            if list(sequence[:len(p)]) == p:
                return i
        raise ValueError("a sequence that starts with no problem's prompt")

    def novel(self, sequence: Sequence[int]) -> int:
        """Tokens of `sequence` not computed before; it is computed from now on."""
        done = self.sequences[self.problem(sequence)]
        known = max((len(os.path.commonprefix([s, list(sequence)])) for s in done), default=0)
        done.append(list(sequence))
        return len(sequence) - known


class CountingPolicy:
    """A `Policy` that counts the new tokens of each call (see the module docstring)."""

    def __init__(self, policy: EnginePolicy, seen: Seen):
        self.policy, self.seen, self.new = policy, seen, 0

    def sample(self, prompts, num_samples, seeds):
        tokens, lengths = self.policy.sample(prompts, num_samples, seeds)
        for b, prompt in enumerate(prompts):
            self.new += self.seen.novel(prompt)
            for s in range(num_samples):
                row = b * num_samples + s
                self.seen.novel([*prompt, *tokens[row, :lengths[row]].tolist()])
                self.new += int(lengths[row])
        return tokens, lengths

    def decoder(self, places, samples):
        decoder = self.policy.decoder(places, samples)
        return None if decoder is None else CountingDecoder(decoder, self.seen, self)


class CountingDecoder:
    """A `ContinuousDecoder` that counts the new tokens of what it admits and returns."""

    def __init__(self, decoder, seen: Seen, counter: CountingPolicy):
        self.decoder, self.seen, self.counter = decoder, seen, counter
        self.prompts: dict[int, list[int]] = {}

    @property
    def busy(self) -> bool:
        return self.decoder.busy

    def admit(self, places, prompts, seeds):
        for place, prompt in zip(places, prompts):
            self.counter.new += self.seen.novel(prompt)
            self.prompts[place] = list(prompt)
        self.decoder.admit(places, prompts, seeds)

    def step(self):
        finished = self.decoder.step()
        for place, (tokens, lengths) in finished.items():
            for row, n in zip(tokens, lengths):
                self.seen.novel([*self.prompts[place], *row[:n].tolist()])
                self.counter.new += int(n)
        return finished


class CountingScorer:
    """A PPM scorer that counts the new tokens of each call; its `store` is the scorer's."""

    def __init__(self, scorer: ValueScorer, seen: Seen):
        self.scorer, self.seen, self.new = scorer, seen, 0
        self.store = scorer.store

    def score(self, sequences):
        self.new += sum(self.seen.novel(s) for s in sequences)
        return self.scorer.score(sequences)

    def score_children(self, prefixes, children):
        for prefix, kids in zip(prefixes, children):
            self.new += self.seen.novel(prefix)
            self.new += sum(self.seen.novel([*prefix, *kid]) for kid in kids)
        return self.scorer.score_children(prefixes, children)


VARIANTS = {  # name: (prefix stores, continuous batching)
    "without": (False, False),
    "stores only": (True, False),
    "with reuse": (True, True),
}


def _run(args, tokenizer, problems, executor, *, stores: bool, continuous: bool) -> dict:
    rows = (args.store_rows or args.batch) if stores else 0
    engine = Engine(steered_tiny_policy(tokenizer, 0, steer=args.steer),
                    vocab_size=tokenizer.vocab_size,
                    pad_id=tokenizer.pad_id, prefix_rows=rows)
    scorer = ValueScorer(steered_tiny_policy(tokenizer, 1, steer=args.steer, value_head=True),
                         pad_id=tokenizer.pad_id, max_rows=1024, prefix_rows=rows)
    config = SearchConfig(mode=Mode.PPM, rollouts=args.rollouts, candidates=8, max_depth=8,
                          errors_threshold=8, max_step_tokens=args.step_tokens,
                          max_output_tokens=32, continuous=continuous)
    prompts = [tokenizer.prompt_ids(p.question) for p in problems]

    def search(policy, ppm) -> SearchStats:
        stats = SearchStats()
        run_search(problems, policy, executor, tokenizer, config, scorer=ppm,
                   batch_size=args.batch, progress=False, stats=stats)
        return stats

    # Counted once (it also compiles every shape the search meets), then timed without the
    # counting wrappers: the search is the same every time.
    engine.counts, scorer.counts = TokenCounts(), TokenCounts()
    policy = CountingPolicy(EnginePolicy(engine, tokenizer, config), Seen(prompts))
    ppm = CountingScorer(scorer, Seen(prompts))
    stats = search(policy, ppm)
    # copies: the timed repeats add to the models' counts
    policy_counts, ppm_counts = copy.copy(engine.counts), copy.copy(scorer.counts)
    policy_new, ppm_new = policy.new, ppm.new
    bare = EnginePolicy(engine, tokenizer, config)
    # A second untimed search: the stores now start with the first search's rows, so a few
    # calls take shapes the first did not compile.
    search(bare, scorer)
    runs = [search(bare, scorer) for _ in range(args.repeats)]
    return {
        "tokens_per_step": (policy_counts.decoded_tokens
                            / max(stats.expansions * config.candidates, 1)),
        "rollouts_per_s": statistics.median(r.rollouts / r.wall for r in runs),
        "expansions": stats.expansions,
        "policy": (policy_counts.computed, policy_new),
        "ppm": (ppm_counts.computed, ppm_new),
        "prompt": (policy_counts.prompt_tokens, policy_counts.prefill_tokens),
        "stopped": policy_counts.stopped_share,
        "prefix_waste": policy_counts.prefix_waste,
        "ppm_slots": ppm_counts.scored_slots / max(ppm_counts.scored_tokens, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--step_tokens", type=int, default=32, help="max_step_tokens")
    parser.add_argument("--steer", type=float, default=1.2,
                        help="how strongly the random policy is pushed to step tokens: lower, "
                             "longer steps")
    parser.add_argument("--store_rows", type=int, default=0,
                        help="rows of each prefix store (default: the batch, a row a problem)")
    parser.add_argument("--deep", action="store_true",
                        help="deep paths: steps of up to 112 tokens (steer 0.25), 2 rollouts")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.deep:
        args.step_tokens, args.steer, args.rollouts = 112, 0.25, 2
    if args.variant:  # one variant, in a process of its own: its figures as JSON
        tokenizer = tiny_tokenizer(tempfile.mkdtemp(prefix="prefix-bench-tok-"))
        problems = [Problem(f"What is {i} + {i % 7}?", str(i + i % 7))
                    for i in range(args.problems)]
        stores, continuous = VARIANTS[args.variant]
        with CodeExecutor(num_workers=2) as executor:
            result = _run(args, tokenizer, problems, executor, stores=stores,
                          continuous=continuous)
        print(json.dumps(result))
        return
    print(f"tiny policy + PPM (random, steer {args.steer}), K=8, PPM mode, {args.rollouts} "
          f"rollouts, depth 8, steps of up to {args.step_tokens} tokens; {args.problems} problems, "
          f"B={args.batch}; medians of {args.repeats}")
    print(f"{'':<14}{'rollouts/s':>11}{'policy tok/exp':>16}{'new/exp':>9}{'ratio':>7}"
          f"{'PPM tok/exp':>13}{'new/exp':>9}{'ratio':>7}{'prefill/prompt':>16}{'stopped':>9}"
          f"{'reads':>7}{'slots':>7}")
    results = {}
    for name in VARIANTS:
        # Each variant in a fresh process: the compiled shapes of all three in one process
        # can pass the kernel's limit on memory maps (each XLA CPU executable holds hundreds).
        run = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", name],
                             check=True, stdout=subprocess.PIPE, text=True)
        r = results[name] = json.loads(run.stdout.strip().splitlines()[-1])
        n = r["expansions"]
        (pc, pn), (vc, vn), (given, ran) = r["policy"], r["ppm"], r["prompt"]
        print(f"{name:<14}{r['rollouts_per_s']:>11.2f}"
              f"{pc / n:>16.0f}{pn / n:>9.0f}{pc / pn:>7.2f}{vc / n:>13.0f}{vn / n:>9.0f}"
              f"{vc / vn:>7.2f}{ran / given:>16.2f}{100 * r['stopped']:>8.1f}%"
              f"{r['prefix_waste']:>7.2f}{r['ppm_slots']:>7.2f}", flush=True)
    ours, peer = results["with reuse"], results["without"]
    print(f"a sampled step: {ours['tokens_per_step']:.0f} tokens on average")
    computed = ours["policy"][0] + ours["ppm"][0]
    new = ours["policy"][1] + ours["ppm"][1]
    print(f"with reuse: computed / new = {ours['policy'][0] / ours['policy'][1]:.2f} (policy), "
          f"{ours['ppm'][0] / ours['ppm'][1]:.2f} (PPM); target <= 1.2 each. Rollouts/s "
          f"{ours['rollouts_per_s'] / peer['rollouts_per_s']:.2f}x without (target >= 2x at "
          f"B = 32). Decode steps on stopped rows: {100 * ours['stopped']:.1f}%.")
    print(f"RESULT name=mcts_prefix_reuse value={ours['rollouts_per_s']:.2f} unit=rollouts/s "
          f"peer={peer['rollouts_per_s']:.2f} "
          f"ratio={ours['rollouts_per_s'] / peer['rollouts_per_s']:.2f} "
          f"limit_pct={100 * new / computed:.1f}")


if __name__ == "__main__":
    main()
