"""Evaluates a run's policy and PPM (RSTAR.md section 7): greedy pass@1, maj@k, best-of-N with
the PPM, and MCTS with the PPM, on the config's test problems, a shipped benchmark or a file.

    python launch/evaluate.py --config=configs/tiny.py --workdir=runs/tiny
    python launch/evaluate.py --config=configs/phi3.py --workdir=gs://bucket/run --problems=math500 \
        --methods=greedy,mcts --searches=8

Results go to <workdir>/evaluate/<problems>-round<r>/: results.md, results.json, accuracy.png.
"""

import logging
import pathlib
import re
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory.")
_ROUND = flags.DEFINE_integer("round", -1, "Which round's models (-1: the last finished one; 0: the bootstrap).")
_PROBLEMS = flags.DEFINE_string("problems", "", "A problem spec (benchmark name, file, synthetic:...); "
                                "default: the config's test problems.")
_METHODS = flags.DEFINE_list("methods", ["greedy", "sampled", "mcts"],
                             "greedy, sampled (maj@k and best-of-N over --samples), mcts.")
_SAMPLES = flags.DEFINE_integer("samples", 8, "Sampled solutions per problem for maj@k / best-of-N.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.7, "Sampling temperature for maj@k / best-of-N.")
_SEARCHES = flags.DEFINE_integer("searches", 0, "Independent MCTS searches per problem (0: the config's).")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate only the first N problems (0: all).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "With a URL --workdir (gs://...): the local copy it is worked "
                                  "in (default ~/.cache/rstar_jax/workdirs/<scheme>/<path>).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from rstar_jax import evaluate, evolve
    from rstar_jax.data.sources import load_problems
    from rstar_jax.steps.executor import CodeExecutor

    logging.getLogger("absl").setLevel(logging.WARNING)
    config = _CONFIG.value
    try:
        run = evolve.Evolution(config, _WORKDIR.value, check_workdir=False, cache_dir=_CACHE_DIR.value)
        r = run.last_round() if _ROUND.value < 0 else _ROUND.value
        policy, ppm = run.policy_path(r), run.ppm_path(r)
        problems = load_problems(_PROBLEMS.value) if _PROBLEMS.value else run.problems()[1]
    except (evolve.ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems = [p for p in problems if p.answer is not None][:_LIMIT.value or None]
    unknown = set(_METHODS.value) - {"greedy", "sampled", "mcts"}
    if unknown:
        print(f"error: unknown --methods {sorted(unknown)}; use greedy, sampled, mcts", file=sys.stderr)
        return 2
    needs_ppm = {"mcts"} & set(_METHODS.value)
    if needs_ppm and ppm is None:
        print(f"round {r} has no PPM: skipping {', '.join(sorted(needs_ppm))}", file=sys.stderr)
    budget = evolve.eval_budget(config)
    engine = run.engine(policy)
    scorer = run.scorer(ppm) if ppm is not None else None
    results = {}
    e = config.executor
    with CodeExecutor(num_workers=e.workers, timeout_s=e.timeout_s, memory_mb=e.memory_mb) as executor:
        if "greedy" in _METHODS.value:
            sols = evaluate.solve(problems, engine, executor, run.tokenizer, search=budget,
                                  batch_size=config.eval.batch)
            results["greedy pass@1"] = {"accuracy": evaluate.accuracy(sols), "trajectories": 1}
        if "sampled" in _METHODS.value:
            sols = evaluate.solve(problems, engine, executor, run.tokenizer, samples=_SAMPLES.value,
                                  temperature=_TEMPERATURE.value, scorer=scorer, search=budget,
                                  batch_size=config.eval.batch)
            results[f"maj@{_SAMPLES.value}"] = {"accuracy": evaluate.accuracy(sols, "majority"),
                                                "curve": evaluate.accuracy_curve(sols, "majority"),
                                                "trajectories": _SAMPLES.value}
            if scorer is not None:
                results[f"best-of-{_SAMPLES.value} (PPM)"] = {
                    "accuracy": evaluate.accuracy(sols, "highest"), "curve": evaluate.accuracy_curve(sols, "highest"),
                    "trajectories": _SAMPLES.value}
        if "mcts" in _METHODS.value and scorer is not None:
            search = evolve.eval_search_config(config)
            sols = evaluate.mcts(problems, engine, scorer, executor, run.tokenizer, search,
                                 searches=_SEARCHES.value or config.eval.searches, batch_size=config.eval.batch)
            n = max(len(s.candidates) for s in sols)
            for rule in ("highest", "top_k_vote", "weighted_vote"):
                results[f"MCTS + PPM ({rule})"] = {"accuracy": evaluate.accuracy(sols, rule),
                                                   "curve": evaluate.accuracy_curve(sols, rule), "trajectories": n}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", _PROBLEMS.value or "test")
    out = run.dir / "evaluate" / f"{name}-round{r}"
    print(evaluate.report(results, out, title=f"{len(problems)} problems, round {r}"))
    run.push(out)
    print(f"written to {out}" + (f" and {run.mirror.url}/{out.relative_to(run.dir).as_posix()}" if run.mirror else ""))
    return 0


if __name__ == "__main__":
    app.run(main)
