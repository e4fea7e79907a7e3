"""The stages of a round (and the bootstrap policy's), each a function of its inputs returning
its summary (`summaries`). `Evolution` calls each through `RunDir.stage`, which runs it only
when its summary is not yet written.

Every process of a job calls every stage: a search splits its chunks between the processes,
training shards over all of them, and process 0 alone writes what they share.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import zlib
from collections.abc import Callable, Sequence

import ml_collections

from rstar_jax import evaluate, processes
from rstar_jax._files import write_text_atomic
from rstar_jax.data import records
from rstar_jax.data.extract import ExtractConfig, extract_outcomes
from rstar_jax.data.extract import extract as extract_records
from rstar_jax.data.problem import Problem
from rstar_jax.data.synthetic import reference_examples
from rstar_jax.evolve.config import ConfigError, eval_budget, eval_search_config, problem_sets
from rstar_jax.evolve.config import train_config
from rstar_jax.evolve.loader import Loader
from rstar_jax.evolve.rundir import RunDir
from rstar_jax.evolve.summaries import BootstrapSummary, EvalSummary, ExtractSummary, \
    SearchSummary, TrainSummary
from rstar_jax.search import driver  # (called through the module: tests stand in for run_search)
from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.steps.executor import CodeExecutor
from rstar_jax.train import Trainer, epochs, fit, outcome_batches, pack_sft, ppm_batches, \
    tokenize_sft

STAGES = ("search", "extract", "policy", "ppm", "orm", "eval")  # a round's, in order


# --- the problems -----------------------------------------------------------------------------


def problems(files: RunDir, c: ml_collections.ConfigDict) -> tuple[list[Problem], list[Problem]]:
    """(training, test) problems of the `problems` block `c` (`config.problem_sets`), written
    once to problems/ by process 0, then read from there by every process and every resumed
    try."""
    directory = files.dir / "problems"
    train_path, test_path = directory / "train.jsonl", directory / "test.jsonl"
    files.pull(directory)
    if not processes.agreed("problems written", lambda: train_path.exists() and test_path.exists()):

        def write():  # one writer; the others read what it wrote
            train, test = problem_sets(c)
            if not train:
                raise ConfigError(f"config.problems.train={c.train!r} gave no training problems")
            _write_problems(test_path, test)
            _write_problems(train_path, train)
            files.push(directory)

        processes.by_process_0("problems written", write)
        files.pull(directory)
    return _read_problems(train_path), _read_problems(test_path)


def _write_problems(path: pathlib.Path, problems: Sequence[Problem]) -> None:
    write_text_atomic(path, "".join(json.dumps(p.to_json()) + "\n" for p in problems))


def _read_problems(path: pathlib.Path) -> list[Problem]:
    lines = path.read_text().splitlines()
    return [Problem.from_json(json.loads(line)) for line in lines if line]


# --- 1. search --------------------------------------------------------------------------------


def search(files: RunDir, models: Loader, executor: CodeExecutor, problems: Sequence[Problem],
           out: pathlib.Path, config: SearchConfig, *, r: int, policy: str, ppm: str | None,
           chunk: int, batch: int, progress: bool | None) -> SearchSummary:
    """Round r's MCTS over `problems` with the policy at `policy` and, in a PPM-augmented mode,
    the PPM at `ppm` (None: none trained yet, so the search is terminal-guided). The trees go to
    record shards in `out`, one per `chunk` problems; the chunks already there are kept, and with
    several processes chunk i is searched by process i mod count."""
    chunks = [problems[i:i + chunk] for i in range(0, len(problems), chunk)]
    done = records.written_problem_ids(out) if out.exists() else set()
    index, count = processes.index_and_count()
    todo = [(i, c) for i, c in enumerate(chunks)
            if i % count == index and not all(p.id in done for p in c)]
    notes = []
    if not config.mode.uses_ppm:
        ppm = None
    elif ppm is None:
        config = dataclasses.replace(config, mode=Mode.TERMINAL)
        notes.append(f"round {r}: no PPM was trained before it, so it searched terminal-guided")
    if todo:
        engine, tokenizer = models.engine(policy), models.tokenizer
        scorer = models.scorer(ppm) if ppm is not None else None
        for i, part in todo:
            # A chunk's seed is fixed, so a resumed search gives the trees an uninterrupted one
            # would.
            cfg = dataclasses.replace(config, seed=(config.seed + 1_000_003 * i) % 2**32)
            trees = driver.run_search(part, driver.EnginePolicy(engine, tokenizer, cfg), executor,
                                      tokenizer, cfg, scorer=scorer, batch_size=batch,
                                      progress=progress)
            records.write_records(out, "tree", trees, shard_size=len(trees) + 1,
                                  prefix=f"p{index}" if count > 1 else "")
            files.push(out)
            solved = sum(t.solved for t in trees)
            print(f"  chunk {i + 1}/{len(chunks)}: {solved}/{len(trees)} solved", flush=True)
    processes.barrier(f"round {r} search written")
    files.pull(out)  # the other processes' shards
    solved = first = n = again = 0
    for tree in records.read_records(out, "tree"):
        n += 1
        solved += tree.solved
        first += tree.solved and tree.searches == 1
        again += tree.searches > 1
    return SearchSummary(mode=config.mode.value, problems=n, solved=solved, solved_first=first,
                         rollouts=config.rollouts, candidates=config.candidates,
                         unsolved_rollouts=config.unsolved_rollouts, searched_again=again,
                         notes=tuple(notes))


# --- 2. extract -------------------------------------------------------------------------------


def extract(trees: pathlib.Path, out: pathlib.Path, config: ExtractConfig) -> ExtractSummary:
    """SFT examples, PPM pairs and ORM examples of the trees in `trees`, written to `out` by
    process 0."""
    sft, pairs, stats = extract_records(records.read_records(trees, "tree"), config)
    outcomes = [x for tree in records.read_records(trees, "tree")
                for x in extract_outcomes(tree, config)]
    if processes.is_first():
        shutil.rmtree(out, ignore_errors=True)  # a half-written earlier try
        records.write_records(out, "sft", sft)
        records.write_records(out, "ppm", pairs)
        records.write_records(out, "orm", outcomes)
    kinds = {kind: sum(p.kind == kind for p in pairs) for kind in ("step", "final")}
    return ExtractSummary(sft=len(sft), pairs=len(pairs), pair_kinds=kinds, outcomes=len(outcomes),
                          problems_with_sft=len({x.problem_id for x in sft}),
                          stats=dataclasses.asdict(stats))


# --- 3. policy (and the "reference" bootstrap policy) -----------------------------------------


def sft(files: RunDir, models: Loader, c: ml_collections.ConfigDict, directory: pathlib.Path,
        start: str, examples: list, *, seed: int, progress: bool | None) -> tuple[str, int, float]:
    """The model at `start` fine-tuned on `examples` by the `train.sft` block `c`, checkpointed in
    `directory`/ckpt and exported to `directory`/model; returns (its path, steps, final loss)."""
    tok = models.tokenizer
    sequences = list(tokenize_sft(examples, tok))

    def pack(order):
        return pack_sft(order, rows=c.batch, length=c.max_length, pad_id=tok.pad_id)

    steps = c.steps or max(1, int(math.ceil(c.epochs * sum(1 for _ in pack(sequences)))))
    trainer = Trainer(models.model(start, value_head=False, training=True),
                      train_config(c, steps, "sft", models.batch_shards()), "sft")
    every = max(1, c.get("save_every", 100))
    with files.checkpoints(directory / "ckpt", keep=2, every=every) as ckpt:
        # The same order on every try: a resumed run skips what it consumed.
        history = fit(trainer, epochs(sequences, seed, pack), steps=steps, checkpoints=ckpt,
                      logdir=directory / "tb", progress=progress, log_every=0)
        ckpt.save(trainer, data_position=steps, force=True)
    path = models.export(trainer.model(), directory / "model")
    return path, steps, history[-1]["loss"] if history else math.nan


def bootstrap(files: RunDir, models: Loader, c: ml_collections.ConfigDict,
              directory: pathlib.Path, problems: Sequence[Problem], *, fraction: float,
              start: str, progress: bool | None) -> BootstrapSummary:
    """The "reference" bootstrap policy: the model at `start` fine-tuned (`train.sft` block `c`)
    on the reference solutions of the first `fraction` of `problems` that have one."""
    examples = reference_examples(problems)
    if not examples:
        raise ConfigError("config.bootstrap.kind='reference' needs problems with reference "
                          "solutions (metadata['solution'], as the synthetic generator writes); "
                          "these have none")
    examples = examples[:max(1, int(fraction * len(examples)))]
    path, steps, loss = sft(files, models, c, directory, start, examples, seed=0,
                            progress=progress)
    return BootstrapSummary(model=path, steps=steps, examples=len(examples), final_loss=loss)


def train_policy(files: RunDir, models: Loader, c: ml_collections.ConfigDict,
                 data: pathlib.Path, directory: pathlib.Path, *, r: int, start: str,
                 previous: str, progress: bool | None) -> TrainSummary:
    """Round r's policy: the model at `start` (the base) fine-tuned (`train.sft` block `c`) on
    the SFT examples in `data`; without any, `previous` (round r-1's policy) carried over."""
    examples = list(records.read_records(data, "sft"))
    if not examples:
        return TrainSummary(model=files.rel(previous), trained=False,
                            notes=(f"round {r}: no SFT examples (no problem solved often "
                                   "enough); the policy is carried over",))
    path, steps, loss = sft(files, models, c, directory, start, examples, seed=r,
                            progress=progress)
    return TrainSummary(model=path, trained=True, steps=steps, examples=len(examples),
                        final_loss=loss)


# --- 4. reward models -------------------------------------------------------------------------


def train_reward(files: RunDir, models: Loader, kind: str, c: ml_collections.ConfigDict,
                 data: pathlib.Path, directory: pathlib.Path, *, r: int, policy: str,
                 previous: str | None, progress: bool | None) -> TrainSummary:
    """Round r's PPM (kind "ppm": step pairs) or outcome reward model ("orm": whole
    trajectories labelled right or wrong, only in the rounds `c.rounds` names): the policy at
    `policy` with a value head, trained (`train.<kind>` block `c`) on the records of that kind
    in `data`. `c.held_out` of the problems are held out; the checkpoint with the best held-out
    accuracy is exported. Without records, `previous` (the PPM of round r-1) is carried over."""
    if kind == "orm" and r not in c.rounds:
        return TrainSummary(model=None, trained=False)
    items = list(records.read_records(data, kind))
    if not items:
        if previous:
            what = "PPM pairs; the PPM is carried over"
        else:
            what = f"{kind} data; no {kind.upper()} this round"
        return TrainSummary(model=files.rel(previous), trained=False,
                            notes=(f"round {r}: no {what}",))
    held = {x.problem_id for x in items
            if zlib.crc32(x.problem_id.encode()) % 10_000 < c.held_out * 10_000}
    if len(held) == len({x.problem_id for x in items}):
        held = set()  # too few problems to hold any out
    train_items = [x for x in items if x.problem_id not in held]
    held_items = [x for x in items if x.problem_id in held]
    tok = models.tokenizer
    make = ppm_batches if kind == "ppm" else outcome_batches

    def batches(order):  # the last batch is filled with padding rows of weight 0
        return make(order, tok, c.batch, c.max_length, pad_id=tok.pad_id)

    steps = c.steps or max(1, int(math.ceil(c.epochs * math.ceil(len(train_items) / c.batch))))
    evals = list(batches(held_items)) if held_items else None
    trainer = Trainer(models.model(policy, value_head=True, training=True),
                      train_config(c, steps, kind, models.batch_shards()), kind)
    every = max(1, c.get("save_every", 100))
    with files.checkpoints(directory / "ckpt", keep=2, every=every) as ckpt, \
            files.checkpoints(directory / "best", keep=1, async_save=False) as best:
        history = fit(trainer, epochs(train_items, r, batches), steps=steps, checkpoints=ckpt,
                      best=best if evals else None, eval_batches=evals,
                      eval_every=max(1, steps // 4) if evals else 0, logdir=directory / "tb",
                      progress=progress, log_every=0)
        ckpt.save(trainer, data_position=steps, force=True)
        accuracy = step_accuracy = None
        if evals:
            best.restore_latest(trainer)
            accuracy = trainer.evaluate(evals)["accuracy"]
            step_pairs = [x for x in held_items if kind == "ppm" and x.kind == "step"]
            if step_pairs:
                step_accuracy = trainer.evaluate(list(batches(step_pairs)))["accuracy"]
    path = models.export(trainer.model(), directory / "model")
    return TrainSummary(model=path, trained=True, steps=steps, examples=len(train_items),
                        held_out=len(held_items),
                        final_loss=history[-1]["loss"] if history else None,
                        held_out_accuracy=accuracy, held_out_step_accuracy=step_accuracy)


# --- 5. evaluate ------------------------------------------------------------------------------


def evaluate_models(models: Loader, config: ml_collections.ConfigDict,
                    problems: Sequence[Problem], executor: CodeExecutor, *, policy: str,
                    ppm: str | None, orm: str | None, methods: Sequence[str] | None = None,
                    samples: int | None = None, temperature: float | None = None,
                    searches: int | None = None, process: tuple[int, int] = (0, 1),
                    gather: evaluate.Gather | None = None,
                    progress: bool | None = None,
                    trees_dir: pathlib.Path | None = None) -> evaluate.Evaluation:
    """`evaluate.evaluate_policy` of the policy at `policy`, with the PPM and ORM at `ppm` and
    `orm` where given, on `problems`, by `config.eval` (`methods`, `samples`, `temperature`,
    `searches` override it); the MCTS trees are written to `trees_dir` when given."""
    e = config.eval
    return evaluate.evaluate_policy(
        problems, models.engine(policy), executor, models.tokenizer, budget=eval_budget(config),
        search=eval_search_config(config), ppm=models.scorer(ppm) if ppm else None,
        orm=models.scorer(orm) if orm else None, samples=samples or e.samples or None,
        temperature=e.temperature if temperature is None else temperature,
        searches=searches or e.searches, methods=e.methods if methods is None else methods,
        batch_size=e.batch, progress=progress, process=process, gather=gather,
        trees_dir=trees_dir)


def evaluate_round(files: RunDir, e: ml_collections.ConfigDict, r: int, out: pathlib.Path,
                   run_evaluation: Callable[..., evaluate.Evaluation], *,
                   has_ppm: bool) -> EvalSummary:
    """Round r's evaluation by the `eval` block `e`: `run_evaluation(methods=, process=,
    gather=, trees_dir=)` (round r's policy, `Evolution.evaluate`) with this process's share of
    the problems, its results written to `out` by process 0 and its MCTS trees to `out/trees`.
    Rounds in `e.skip_rounds` are not evaluated; rounds in `e.light_rounds` only by
    `e.light_methods`."""
    if r in e.skip_rounds:  # a time budget: the round's training is reported, not its policy
        return EvalSummary(evaluation=dataclasses.asdict(evaluate.Evaluation([], {}, {}, {})),
                           notes=(f"round {r}: not evaluated (config.eval.skip_rounds)",))
    notes = []
    if r and not has_ppm:
        notes.append(f"round {r}: no PPM, so no best-of-N (PPM) or MCTS + PPM evaluation")
    methods = e.light_methods if r in e.light_rounds else e.methods
    if tuple(methods) != tuple(e.methods):
        notes.append(f"round {r}: evaluated with {', '.join(methods)} only "
                     "(config.eval.light_rounds)")
    ev = run_evaluation(methods=methods, process=processes.index_and_count(),
                         gather=files.gather(out / "parts"), trees_dir=out / "trees")
    evaluate.report(ev, out if processes.is_first() else None, title=f"round {r}")
    return EvalSummary(evaluation=dataclasses.asdict(ev), notes=tuple(notes))
