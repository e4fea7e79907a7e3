"""Evaluates a run's policy and PPM (RSTAR.md section 7): greedy pass@1, maj@k, best-of-N with
the PPM, and MCTS with the PPM, on the config's test problems, a shipped benchmark or a file.

    python launch/evaluate.py --config=configs/tiny.py --workdir=runs/tiny
    python launch/evaluate.py --config=configs/phi3.py --workdir=gs://bucket/run --problems=math500 \
        --methods=greedy,mcts --searches=8

Results go to <workdir>/evaluate/<problems>-round<r>/: results.md; results.json, per method the
accuracy, n, its 95% interval (ci95), per level, and the ids of the problems it got right (so two
evaluations of the same problems can be paired); evaluation.json (also the reward models' AUCs and
paired differences between methods); accuracy.png; trees/, the MCTS trees (draw them with
launch/view_tree.py --trees=<that directory>).
"""

import logging
import pathlib
import re
import shutil
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory.")
_ROUND = flags.DEFINE_integer("round", -1,
                              "Which round's models (-1: the last finished one; 0: the bootstrap).")
_PROBLEMS = flags.DEFINE_string("problems", "",
                                "A problem spec (benchmark name, file, synthetic:...); "
                                "default: the config's test problems.")
_METHODS = flags.DEFINE_list("methods", ["greedy", "sampled", "mcts"],
                             "greedy, sampled (maj@N and best-of-N over --samples), mcts.")
_SAMPLES = flags.DEFINE_integer("samples", 0,
                                "Sampled solutions per problem for maj@N / best-of-N (0: the "
                                "config's, or the MCTS trajectory budget, rollouts x searches).")
_TEMPERATURE = flags.DEFINE_float("temperature", None,
                                  "Sampling temperature for maj@N / best-of-N (default: the "
                                  "config's eval.temperature).")
_SEARCHES = flags.DEFINE_integer("searches", 0,
                                 "Independent MCTS searches per problem (0: the config's).")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate only the first N problems (0: all).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None,
                                 "With a URL --workdir (gs://...): the local copy it is worked "
                                 "in (default ~/.cache/rstar_jax/workdirs/<scheme>/<path>).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from rstar_jax import evaluate, evolve
    from rstar_jax.data.load import load_problems

    logging.getLogger("absl").setLevel(logging.WARNING)
    config = _CONFIG.value
    try:
        run = evolve.Evolution(config, _WORKDIR.value, check_workdir=False,
                               cache_dir=_CACHE_DIR.value)
        r = run.last_round() if _ROUND.value < 0 else _ROUND.value
        run.policy_path(r)  # (a round not yet trained fails here, saying which file is missing)
        ppm = run.ppm_path(r)
        problems = load_problems(_PROBLEMS.value) if _PROBLEMS.value else run.problems()[1]
        run.tokenizer  # (a stock model, without the step tokens, fails here saying what to do)
    except (evolve.ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems = [p for p in problems if p.answer is not None][:_LIMIT.value or None]
    unknown = set(_METHODS.value) - set(evaluate.METHODS)
    if unknown:
        print(f"error: unknown --methods {sorted(unknown)}; use {', '.join(evaluate.METHODS)}",
              file=sys.stderr)
        return 2
    if ppm is None and {"mcts", "sampled"} & set(_METHODS.value):
        print(f"round {r} has no PPM: no best-of-N (PPM) or MCTS + PPM", file=sys.stderr)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", _PROBLEMS.value or "test")
    out = run.dir / "evaluate" / f"{name}-round{r}"
    # This evaluation's trees replace the last one's, whichever methods either ran.
    shutil.rmtree(out / "trees", ignore_errors=True)
    (out / "trees").mkdir(parents=True)
    with evolve.code_executor(config.executor) as executor:
        ev = run.evaluate(r, problems, executor, methods=_METHODS.value,
                          samples=_SAMPLES.value or None, temperature=_TEMPERATURE.value,
                          searches=_SEARCHES.value or None, trees_dir=out / "trees")
    print(evaluate.report(ev, out, title=f"{len(problems)} problems, round {r}"))
    run.push(out)
    run.push(out / "trees", delete=True)
    where = f"written to {out}"
    if run.mirror:
        where += f" and {run.mirror.url}/{out.relative_to(run.dir).as_posix()}"
    print(where)
    return 0


if __name__ == "__main__":
    app.run(main)
