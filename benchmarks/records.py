"""Records: trees/s written and read, and SFT rows / PPM pairs extracted per second, for 10,000
searched trees; and extraction + writing as a share of a round's wall time.

Trees come from `rstar_jax.testing.random_search_tree`: graded PPM-mode trees of about 175
nodes (K = 4 candidates, depth 8, ~160-character steps of 40 tokens), the size of a tiny-config
search. The same trees are
1. written as tree records (array_record shards of msgpack, `RecordWriter`) and read back
   (`read_records`);
2. extracted (`extract`: SFT rows and step + final PPM pairs), and the rows and pairs written.

The peer does the same with the standard json module, one JSON object per line (arrays as
lists), the format a user would otherwise reach for. `ratio` is the peer's time over ours for
extraction + writing trees, rows and pairs (> 1: ours is faster).

A round's wall time per tree is measured in the same run: a small search with the tiny steered
policy and PPM (`benchmarks/mcts.py`'s setup), 8 problems x 4 rollouts; the target is that
extraction + writing stays under 5% of it. `limit_pct` is nan: there is no physical limit to
compare with that means more than the 5% target.

    python benchmarks/records.py [--trees 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import statistics
import tempfile
import time

import numpy as np

from rstar_jax.data import records
from rstar_jax.data.extract import ExtractConfig, extract
from rstar_jax.data.tree import NODE_FIELDS
from rstar_jax.testing import random_search_tree


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _json_default(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x))


def _tree_json(tree) -> dict:
    d = {f: getattr(tree, f) for f in tree.__dataclass_fields__ if f != "problem"}
    d["problem"] = tree.problem.to_json()
    return d


def write_ours(directory: pathlib.Path, trees, sft, pairs) -> None:
    for kind, items in (("tree", trees), ("sft", sft), ("ppm", pairs)):
        with records.RecordWriter(directory, kind) as writer:
            for item in items:
                writer.write(item)


def write_json(directory: pathlib.Path, trees, sft, pairs) -> None:
    import dataclasses

    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "trees.jsonl").open("w") as f:
        for t in trees:
            f.write(json.dumps(_tree_json(t), default=_json_default) + "\n")
    for name, items in (("sft", sft), ("ppm", pairs)):
        with (directory / f"{name}.jsonl").open("w") as f:
            for x in items:
                f.write(json.dumps(dataclasses.asdict(x), default=_json_default) + "\n")


def read_json(directory: pathlib.Path) -> int:
    n = 0
    with (directory / "trees.jsonl").open() as f:
        for line in f:
            d = json.loads(line)
            for k in NODE_FIELDS:
                d[k] = np.asarray(d[k])
            n += 1
    return n


def round_seconds_per_tree(problems: int = 8, rollouts: int = 4) -> float:
    """Wall time per problem of a small tiny-policy search, compiled shapes warmed up first."""
    from rstar_jax.data import Problem
    from rstar_jax.engine import Engine, ValueScorer
    from rstar_jax.search.config import Mode, SearchConfig
    from rstar_jax.search.driver import EnginePolicy, run_search
    from rstar_jax.steps.executor import CodeExecutor
    from rstar_jax.testing import steered_tiny_policy, tiny_tokenizer

    tokenizer = tiny_tokenizer(tempfile.mkdtemp(prefix="records-bench-tok-"))
    engine = Engine(steered_tiny_policy(tokenizer, 0), vocab_size=tokenizer.vocab_size,
                    pad_id=tokenizer.pad_id)
    scorer = ValueScorer(steered_tiny_policy(tokenizer, 1, value_head=True),
                         pad_id=tokenizer.pad_id, max_rows=1024)
    config = SearchConfig(mode=Mode.PPM, rollouts=rollouts, candidates=4, max_depth=8,
                          errors_threshold=8, max_step_tokens=32, max_output_tokens=32)
    items = [Problem(f"What is {i} + {i % 7}?", str(i + i % 7)) for i in range(problems)]
    with CodeExecutor(num_workers=2) as executor:
        def once():
            return run_search(items, EnginePolicy(engine, tokenizer, config), executor, tokenizer,
                              config, scorer=scorer, batch_size=problems, progress=False)
        once()
        seconds, _ = _timed(once)
    return seconds / problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    _, trees = _timed(lambda: [random_search_tree(seed) for seed in range(args.trees)])
    nodes = sum(t.num_nodes for t in trees)
    print(f"{len(trees)} random graded trees, {nodes / len(trees):.0f} nodes each on average")
    config = ExtractConfig()
    rows = {k: [] for k in ("extract", "write", "read", "json_write", "json_read")}
    for _ in range(args.repeats):
        root = pathlib.Path(tempfile.mkdtemp(prefix="records-bench-"))
        try:
            t, (sft, pairs, stats) = _timed(lambda: extract(trees, config))
            rows["extract"].append(t)
            rows["write"].append(_timed(lambda: write_ours(root / "ours", trees, sft, pairs))[0])
            t, n = _timed(lambda: sum(1 for _ in records.read_records(root / "ours", "tree")))
            assert n == len(trees), n
            rows["read"].append(t)
            rows["json_write"].append(_timed(lambda: write_json(root / "json", trees, sft,
                                                                pairs))[0])
            rows["json_read"].append(_timed(lambda: read_json(root / "json"))[0])
            size = sum(f.stat().st_size for f in (root / "ours").iterdir())
            json_size = sum(f.stat().st_size for f in (root / "json").iterdir())
        finally:
            shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    n = len(trees)
    print(f"extracted {len(sft)} SFT rows and {len(pairs)} PPM pairs "
          f"({stats.step_pairs} step, {stats.final_pairs} final)")
    print(f"{'':<28}{'seconds':>10}{'trees/s':>12}")
    for name, label in (("extract", "extract (SFT + PPM)"), ("write", "write trees+rows+pairs"),
                        ("read", "read trees"), ("json_write", "json lines: write"),
                        ("json_read", "json lines: read trees")):
        print(f"{label:<28}{med[name]:10.3f}{n / med[name]:12.0f}")
    print(f"pairs extracted per second: {len(pairs) / med['extract']:.0f}; "
          f"on disk: ours {size / 2**20:.1f} MiB, json lines {json_size / 2**20:.1f} MiB")
    ours, peer = med["extract"] + med["write"], med["extract"] + med["json_write"]
    per_tree = round_seconds_per_tree()
    share = ours / n / per_tree
    print(f"a round's search: {per_tree:.2f} s per tree (tiny policy, 4 rollouts, K=4); extraction "
          f"+ writing {1000 * ours / n:.2f} ms per tree = {100 * share:.3f}% of it (target <= 5%)")
    print(f"RESULT name=records_trees_per_s value={n / ours:.0f} unit=trees/s peer={n / peer:.0f} "
          f"ratio={peer / ours:.2f} limit_pct={math.nan}")


if __name__ == "__main__":
    main()
