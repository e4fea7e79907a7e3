"""The self-evolution rounds (RSTAR.md section 6): the main job.

Each round r = 1..R runs five stages, each finished once and never redone:

1. search: MCTS over the training problems with the round's policy (round 1: the bootstrap
   policy; round r: the round r-1 policy), in the round's mode and budget (terminal-guided in
   rounds 1-2, PPM-augmented with the round r-1 PPM after). Trees go to record shards, one shard
   per fixed chunk of problems, so a stopped search keeps every chunk it finished.
2. extract: SFT examples and PPM pairs from the trees (`data.extract`).
3. policy: the base model fine-tuned on the round's SFT examples, exported as a Hugging Face
   directory. Training resumes from its orbax checkpoints.
4. ppm: the new policy with a value head, trained on the round's pairs (5% of the problems held
   out; the checkpoint with the best held-out pair accuracy is exported).
5. evaluate: greedy pass@1 of the policy and MCTS + PPM accuracy on the test problems.

Round 0 evaluates the bootstrap policy alone, so the report shows where the rounds started.

The bootstrap policy (`config.bootstrap.kind`):
- "base": the base model with the zero-shot policy prompt (the tiny world's base has been
  pretrained on reference solutions, see scripts/pretrain_tiny.py);
- "few_shot": the base model with the round-1 few-shot prompt (RSTAR.md section 2);
- "checkpoint": a separate, larger local checkpoint (`bootstrap.checkpoint`, the paper's
  choice) with the few-shot prompt;
- "reference": the base model first fine-tuned on the generator's reference solutions of
  `bootstrap.fraction` of the training problems (a stand-in for a large bootstrap model, for
  synthetic problems only).

Work directory:

    config.json            the config of the run (a resumed run must match it)
    problems/              train.jsonl, test.jsonl: the problems used, after decontamination
    base/                  model/: config.model.checkpoint with the step tokens, when it had none
                           (a checkpoint as downloaded from the hub; converted on first use)   convert.json
    bootstrap/             the "reference" bootstrap policy (its checkpoints and model/)
    round_{r}/
      search/              tree record shards          search.json   stage summary
      data/                sft and ppm record shards   extract.json
      policy/              ckpt/, tb/, model/          policy.json
      ppm/                 ckpt/, best/, tb/, model/   ppm.json
      eval/                results.json, results.md    eval.json
    report.md, report.json, rounds.png

A stage is done when its `.json` summary exists; the summary is written last.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import time
import zlib
from collections.abc import Callable, Sequence

import ml_collections

from rstar_jax.data import records
from rstar_jax.data.problem import Problem
from rstar_jax import processes, report
from rstar_jax._files import write_text_atomic
from rstar_jax.evolve.config import BOOTSTRAP_KINDS, ConfigError, check_config, code_executor, \
    eval_budget, eval_search_config, fingerprint, microbatches, prefix_rows, problem_sets, \
    search_config, use_compilation_cache
from rstar_jax.evolve.plan import dry_run
from rstar_jax.report import RoundResult
from rstar_jax.workdir import Mirror, is_url


__all__ = ["BOOTSTRAP_KINDS", "STAGES", "ConfigError", "Evolution", "check_config",
           "code_executor", "dry_run", "eval_budget", "eval_search_config", "microbatches",
           "prefix_rows", "problem_sets", "run", "search_config", "use_compilation_cache"]
STAGES = ("search", "extract", "policy", "ppm", "orm", "eval")


# --- problems ---------------------------------------------------------------------------------


def _write_problems(path: pathlib.Path, problems: Sequence[Problem]) -> None:
    write_text_atomic(path, "".join(json.dumps(p.to_json()) + "\n" for p in problems))


def _read_problems(path: pathlib.Path) -> list[Problem]:
    return [Problem.from_json(json.loads(line)) for line in path.read_text().splitlines() if line]


# --- the run ----------------------------------------------------------------------------------


class Evolution:
    """The rounds of one work directory; `run()` does what is not yet done and returns the report."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                 progress: bool | None = None, check_workdir: bool = True, cache_dir: str | None = None):
        check_config(config)
        self.config = config
        self.progress = progress
        self._tokenizer = None
        self._base = None  # (model, tokenizer) directories of the base checkpoint: `_base_dirs`
        self._reading = not check_workdir
        self._executor = None
        self.mirror = None  # a URL workdir (gs://...) is worked on in a local copy: `rstar_jax.workdir`
        if is_url(workdir):
            try:
                self.mirror = Mirror(str(workdir), cache_dir)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            self.dir = self.mirror.local
            # Models, checkpoints and curves come down when a step needs them (`_stage`, `_model`).
            self.mirror.pull(skip=lambda rel: not {"model", "ckpt", "best", "tb"}.isdisjoint(rel.split("/")[:-1]))
        else:
            self.dir = pathlib.Path(workdir).expanduser().absolute()
        use_compilation_cache(config.get("compilation_cache", ""), self.dir)
        if not check_workdir:  # reading a run (evaluation): its config is not ours to check
            if not (self.dir / "config.json").exists():
                raise ConfigError(f"{self.dir} holds no run (no config.json); pass the --workdir of a run")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self.dir / "config.json"
        current = fingerprint(config)
        if saved.exists():
            before = json.loads(saved.read_text())
            changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
            if changed and not config.get("allow_config_change", False):
                raise ConfigError(
                    f"{self.dir} holds a run with another config (fields {', '.join(changed)} differ); use a new "
                    f"--workdir, or pass --config.allow_config_change=True to continue with the new values")
        if processes.is_first():
            saved.write_text(json.dumps(current, indent=2) + "\n")
            self.push(saved)

    # --- shared pieces ---

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from rstar_jax.tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_dir(self._base_dirs()[1])
        return self._tokenizer

    @property
    def base_checkpoint(self) -> str:
        """The base model: where every SFT starts, and the bootstrap policy of kinds "base" and
        "few_shot". `config.model.checkpoint`, or, when its tokenizer lacks the step tokens (a
        checkpoint as downloaded from the hub), the copy with them this run made on first use:
        <workdir>/base/model (`rstar_jax.models.vocab.convert_checkpoint`)."""
        return self._base_dirs()[0]

    def _base_dirs(self) -> tuple[str, str]:
        """(model, tokenizer) directories of the base checkpoint; converts it on first use."""
        if self._base is None:
            self._base = self._find_base()
        return self._base

    def _find_base(self) -> tuple[str, str]:
        from rstar_jax.models import vocab
        from rstar_jax.tokenizer import Tokenizer

        checkpoint = self.config.model.checkpoint
        given = self.config.get("tokenizer", {}).get("path", "")
        done = self.dir / "base" / "convert.json"
        # Converted by an earlier try of this run: the source is not read again (`_stage` reads the summary).
        if not processes.agreed("base converted", done.exists):
            field, source = ("tokenizer.path", given) if given else ("model.checkpoint", checkpoint)
            try:
                tokenizer = Tokenizer.from_dir(source)
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"config.{field}={source!r}: {e}") from e
            missing = vocab.missing_step_tokens(tokenizer)
            if not missing:
                if given:
                    self._check_tokenizer_pairing(tokenizer)
                return checkpoint, source
            if self._reading:
                raise ConfigError(
                    f"config.{field}={source!r} has no step tokens ({', '.join(missing)}: a checkpoint as "
                    f"downloaded from the hub) and the run in {self.dir} holds no converted copy "
                    "(base/convert.json). Pass the --workdir of a run launch/tpu_evolve.py started (it converts "
                    f"the checkpoint on first use), or convert it: `python launch/convert_checkpoint.py "
                    f"--source={checkpoint}{f' --tokenizer={given}' if given else ''} --out=DIR`, then pass "
                    "--config.model.checkpoint=DIR")
        summary = self._stage(self.dir / "base", "convert", lambda d: self._convert_base(d, given))
        path = self.dir / summary["model"]
        self._pull(path)
        return str(path), str(path)

    def _convert_base(self, directory: pathlib.Path, tokenizer: str) -> dict:
        """config.model.checkpoint (with the tokenizer of config.tokenizer.path, if set) given the
        step tokens, written to `directory`/model by process 0 while the others wait."""
        from rstar_jax.models import vocab

        out = directory / "model"

        def convert() -> dict:
            shutil.rmtree(out, ignore_errors=True)  # what an earlier try left before its summary
            try:
                summary = vocab.convert_checkpoint(self.config.model.checkpoint, out, tokenizer=tokenizer or None)
            except (FileNotFoundError, FileExistsError, ValueError) as e:
                raise ConfigError(f"config.model.checkpoint={self.config.model.checkpoint!r}: {e}") from e
            print(f"  {self.config.model.checkpoint} has no step tokens: added {summary['added']}, embedding rows "
                  f"{summary['rows_before']} -> {summary['rows_after']}; the run uses {out}", flush=True)
            return summary

        summary = processes.by_process_0("base conversion", convert) or {}
        keep = ("source", "tokenizer", "dtype", "added", "present", "rows_before", "rows_after")
        return {"model": self._rel(str(out)), **{k: summary[k] for k in keep if k in summary}}

    def _check_tokenizer_pairing(self, tokenizer) -> None:
        """A config.tokenizer.path that has the step tokens must belong to config.model.checkpoint:
        paired with a model that never had them, their ids would index untrained padding rows."""
        from rstar_jax.models import read_config, vocab
        from rstar_jax.tokenizer import Tokenizer, backend_of

        checkpoint, given = self.config.model.checkpoint, self.config.tokenizer.path
        if backend_of(checkpoint) is not None:
            own = vocab.missing_step_tokens(Tokenizer.from_dir(checkpoint))
            if own:
                raise ConfigError(
                    f"config.tokenizer.path={given!r} has the step tokens but config.model.checkpoint="
                    f"{checkpoint!r} does not ({', '.join(own)}), so its rows for them were never set. Unset "
                    "config.tokenizer.path (the run then converts the checkpoint with its own tokenizer once, into "
                    "<workdir>/base/model), or point config.model.checkpoint at the model that tokenizer was saved "
                    "with")
        rows = read_config(checkpoint).vocab_size
        if tokenizer.vocab_size > rows:
            raise ConfigError(f"config.tokenizer.path={given!r} has {tokenizer.vocab_size} ids but "
                              f"config.model.checkpoint={checkpoint!r} only {rows} embedding rows; they do not belong "
                              "together")

    def _check_bootstrap_checkpoint(self) -> None:
        """The "checkpoint" bootstrap policy is run with the run's tokenizer: its own tokenizer, if it
        has one, must give the step tokens the same ids (it is not converted here)."""
        from rstar_jax.tokenizer import Tokenizer, backend_of

        path = self.config.bootstrap.checkpoint
        if backend_of(path) is None:
            return  # no tokenizer of its own
        own = Tokenizer.from_dir(path)
        ours = self.tokenizer.step_token_ids
        theirs = {t: own.token_to_id(t) for t in ours}
        if theirs != ours:
            raise ConfigError(
                f"config.bootstrap.checkpoint={path!r} gives the step tokens the ids {theirs}, the run's tokenizer "
                f"{ours} (None: it has no such token, as a checkpoint downloaded from the hub). If it shares the "
                f"base's vocabulary, convert it: `python launch/convert_checkpoint.py --source={path} --out=DIR` "
                "gives the same ids; then pass --config.bootstrap.checkpoint=DIR")

    def problems(self) -> tuple[list[Problem], list[Problem]]:
        train_path, test_path = self.dir / "problems" / "train.jsonl", self.dir / "problems" / "test.jsonl"
        self._pull(train_path.parent)
        if not processes.agreed("problems written", lambda: train_path.exists() and test_path.exists()):

            def write():  # one writer; the others read what it wrote
                train, test = problem_sets(self.config.problems)
                if not train:
                    raise ConfigError(f"config.problems.train={self.config.problems.train!r} gave no training problems")
                _write_problems(test_path, test)
                _write_problems(train_path, train)
                self.push(train_path.parent)

            processes.by_process_0("problems written", write)
            self._pull(train_path.parent)
        return _read_problems(train_path), _read_problems(test_path)

    def round_dir(self, r: int) -> pathlib.Path:
        return self.dir / f"round_{r}"

    def _stage(self, directory: pathlib.Path, name: str, fn: Callable[[pathlib.Path], dict]) -> dict:
        """The summary of stage `name` (`directory/name.json`), running `fn(directory)` first if it is not done."""
        done = directory / f"{name}.json"
        if processes.agreed(f"{self._rel(str(directory))} {name} done", done.exists):
            self._pull(done)
            return json.loads(done.read_text())
        self._pull(directory)  # what an interrupted try (perhaps on another machine) left: records, checkpoints
        directory.mkdir(parents=True, exist_ok=True)
        begin = time.time()
        print(f"{directory.name}: {name}", flush=True)
        summary = fn(directory) | {"seconds": round(time.time() - begin, 1)}
        if processes.is_first():
            write_text_atomic(done, json.dumps(summary, indent=2) + "\n")
        self.push(directory)  # every process: what it wrote
        processes.barrier(f"{self._rel(str(directory))} {name}")  # (keys the same on hosts with other local paths)
        if not processes.is_first():
            self._pull(done)  # (a URL workdir: what process 0 wrote, later steps read)
        return summary

    def _gather(self, directory: pathlib.Path) -> Callable[[str, list], list[list]]:
        """`evaluate.Gather` through files: each process writes its part of `name` under
        `directory`, and after a barrier reads every process's."""

        def gather(name: str, mine: list) -> list[list]:
            index, count = processes.index_and_count()
            stem = name.replace(" ", "_")
            write_text_atomic(directory / f"{stem}.{index}.json", json.dumps(mine) + "\n")
            self.push(directory)
            if self.mirror is not None:  # copies an earlier try left would pass for this try's parts
                for i in set(range(count)) - {index}:
                    (directory / f"{stem}.{i}.json").unlink(missing_ok=True)
            processes.barrier(f"{self._rel(str(directory))} {name}")
            self._pull(directory)
            return [json.loads((directory / f"{stem}.{i}.json").read_text()) for i in range(count)]

        return gather

    def push(self, path: pathlib.Path, *, delete: bool = False) -> None:
        """Uploads what changed under `path` (inside the workdir) when the workdir is a URL."""
        if self.mirror is not None:
            self.mirror.push(pathlib.Path(path).relative_to(self.dir).as_posix(), delete=delete)

    def _pull(self, path: pathlib.Path) -> None:
        if self.mirror is not None:
            self.mirror.pull(pathlib.Path(path).relative_to(self.dir).as_posix())

    def _rel(self, path: str | None) -> str | None:
        """A model path as a summary keeps it: relative when inside the workdir, so the workdir can move."""
        if path is None or not pathlib.Path(path).is_relative_to(self.dir):
            return path
        return pathlib.Path(path).relative_to(self.dir).as_posix()

    def _checkpoints(self, directory: pathlib.Path, **kwargs):
        """Orbax checkpoints under `directory`; with a URL workdir each save is uploaded as it completes
        (on several hosts orbax writes to the URL itself, as its processes must share one directory)."""
        from rstar_jax.train import Checkpoints

        if self.mirror is None:
            return Checkpoints(directory, **kwargs)
        if processes.index_and_count()[1] > 1:
            return Checkpoints(f"{self.mirror.url}/{directory.relative_to(self.dir).as_posix()}", **kwargs)
        return Checkpoints(directory, on_save=lambda: self.push(directory, delete=True), **kwargs)

    def _model(self, path, *, value_head=None, training=False):
        import jax.numpy as jnp

        from rstar_jax.models import from_pretrained
        from rstar_jax.train import inference_mesh, mesh_from_config

        m = self.config.model
        if pathlib.Path(path).is_relative_to(self.dir):
            self._pull(pathlib.Path(path))  # a URL workdir's model comes down when first used
        if training:
            mesh, param_dtype = mesh_from_config(self.config.mesh), m.param_dtype
        else:  # searches and evaluations: weights in the compute dtype, on this host's inference mesh
            mesh, param_dtype = inference_mesh(self.config.inference_mesh), m.dtype
        return from_pretrained(path, dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(param_dtype), mesh=mesh,
                               attention=m.attention, remat=m.remat and training,
                               scan_layers=training and m.get("scan_layers", False), value_head=value_head,
                               value_tanh=self.config.train.ppm.value_tanh if value_head else None)

    def engine(self, path):
        from rstar_jax.engine import Engine

        tok = self.tokenizer
        # A store row for each problem a search or an evaluation has in its batch: a path's keys
        # and values are computed once, not again at each of its expansions.
        return Engine(self._model(path, value_head=False), vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                      prefix_rows=prefix_rows(self.config))

    def scorer(self, path):
        from rstar_jax.engine import ValueScorer

        return ValueScorer(self._model(path, value_head=True), pad_id=self.tokenizer.pad_id,
                           prefix_rows=prefix_rows(self.config))

    # --- which models a round uses ---

    def last_round(self) -> int:
        """The last round whose policy and PPM are trained (0 if none)."""
        r = 0
        while (self.round_dir(r + 1) / "ppm.json").exists():
            r += 1
        return r

    def policy_path(self, r: int) -> str:
        """The policy after round r (r = 0: the bootstrap policy)."""
        if r == 0:
            kind = self.config.bootstrap.kind
            if kind == "checkpoint":
                return self.config.bootstrap.checkpoint
            if kind == "reference":
                return str(self.dir / "bootstrap" / "model")
            return self.base_checkpoint
        summary = json.loads((self.round_dir(r) / "policy.json").read_text())
        return str(self.dir / summary["model"])  # (a relative path, or an absolute one from an older run)

    def reward_path(self, kind: str, r: int) -> str | None:
        """The PPM (kind "ppm") or ORM ("orm") after round r, or None (none trained yet)."""
        done = self.round_dir(r) / f"{kind}.json"
        if r == 0 or not done.exists():
            return None
        summary = json.loads(done.read_text())
        return summary["model"] and str(self.dir / summary["model"])

    def ppm_path(self, r: int) -> str | None:
        """The PPM after round r, or None (none trained yet)."""
        return self.reward_path("ppm", r)

    # --- the run ---

    def run(self) -> list[RoundResult]:
        train, test = self.problems()
        self._base_dirs()  # a stock checkpoint is converted here, once, before any stage uses it
        if self.config.bootstrap.kind == "checkpoint":
            self._check_bootstrap_checkpoint()
        with code_executor(self.config.executor) as executor:
            self._executor = executor
            if self.config.bootstrap.kind == "reference":
                self._bootstrap(train)
            results = [self._round0(test)]
            if processes.is_first():
                self._log_round(results[0])
            for r in range(1, self.config.rounds + 1):
                results.append(self._round(r, train, test, results[0]))
                if processes.is_first():
                    self.write_report(results)
                    self._log_round(results[-1])
        print(report.table(results), flush=True)
        return results

    def _round0(self, test) -> RoundResult:
        ev = self._stage(self.round_dir(0), "eval", lambda d: self._evaluate(d, 0, test))
        x = RoundResult(0, f"bootstrap ({self.config.bootstrap.kind})", minutes=ev["seconds"] / 60,
                        notes=ev.get("notes", []))
        x.set_evaluation(ev["evaluation"])
        return x

    def _round(self, r: int, train, test, first: RoundResult) -> RoundResult:
        rdir = self.round_dir(r)
        search = self._stage(rdir, "search", lambda d: self._search(d, r, train))
        extract = self._stage(rdir, "extract", self._extract)
        policy = self._stage(rdir, "policy", lambda d: self._train_policy(d, r))
        ppm = self._stage(rdir, "ppm", lambda d: self._train_reward(d, r, "ppm"))
        orm = self._stage(rdir, "orm", lambda d: self._train_reward(d, r, "orm"))
        ev = self._stage(rdir, "eval", lambda d: self._evaluate(d, r, test))
        stages = (search, extract, policy, ppm, orm, ev)
        name = "bootstrap" if r == 1 else f"SLM-r{r - 1}" + (" + PPM" if search["mode"] != "terminal" else "")
        x = RoundResult(r, name, search["mode"], search["problems"], search["solved"],
                        search.get("solved_first", search["solved"]), extract["sft"], policy.get("steps", 0),
                        extract["pairs"], ppm.get("steps", 0), extract.get("outcomes", 0),
                        ppm_pair_accuracy=ppm.get("held_out_step_accuracy") or math.nan,
                        minutes=sum(s["seconds"] for s in stages) / 60,
                        notes=[n for s in stages for n in s.get("notes", [])])
        x.set_evaluation(ev["evaluation"], first)
        return x

    # --- stages ---

    def _search(self, rdir: pathlib.Path, r: int, train: list[Problem]) -> dict:
        from rstar_jax.search.config import Mode
        from rstar_jax.search.driver import EnginePolicy, run_search

        config = search_config(self.config, r)
        out = rdir / "search"
        chunk = int(self.config.search.chunk)
        chunks = [train[i:i + chunk] for i in range(0, len(train), chunk)]
        done = records.written_problem_ids(out) if out.exists() else set()
        index, count = processes.index_and_count()  # several hosts: chunk i is searched by process i mod count
        todo = [(i, c) for i, c in enumerate(chunks) if i % count == index and not all(p.id in done for p in c)]
        notes = []
        ppm = self.ppm_path(r - 1) if config.mode.uses_ppm else None
        if config.mode.uses_ppm and ppm is None:
            config = dataclasses.replace(config, mode=Mode.TERMINAL)
            notes.append(f"round {r}: no PPM was trained before it, so it searched terminal-guided")
        if todo:
            engine = self.engine(self.policy_path(r - 1))
            scorer = self.scorer(ppm) if ppm is not None else None
            for i, problems in todo:
                # A chunk's seed is fixed, so a resumed search gives the trees an uninterrupted one would.
                cfg = dataclasses.replace(config, seed=(config.seed + 1_000_003 * i) % 2**32)
                trees = run_search(problems, EnginePolicy(engine, self.tokenizer, cfg), self._executor,
                                   self.tokenizer, cfg, scorer=scorer, batch_size=self.config.search.batch,
                                   progress=self.progress)
                records.write_records(out, "tree", trees, shard_size=len(trees) + 1,
                                      prefix=f"p{index}" if count > 1 else "")
                self.push(out)
                print(f"  chunk {i + 1}/{len(chunks)}: {sum(t.solved for t in trees)}/{len(trees)} solved",
                      flush=True)
        processes.barrier(f"round {r} search written")
        self._pull(out)  # the other processes' shards
        solved = first = n = again = 0
        for tree in records.read_records(out, "tree"):
            n += 1
            solved += tree.solved
            first += tree.solved and tree.searches == 1
            again += tree.searches > 1
        return {"mode": config.mode.value, "problems": n, "solved": solved, "solved_first": first,
                "rollouts": config.rollouts, "candidates": config.candidates,
                "unsolved_rollouts": config.unsolved_rollouts, "searched_again": again, "notes": notes}

    def _extract(self, rdir: pathlib.Path) -> dict:
        from rstar_jax.data.extract import ExtractConfig, extract, extract_outcomes

        out = rdir / "data"
        config = ExtractConfig(**self.config.extract.to_dict())
        sft, pairs, stats = extract(records.read_records(rdir / "search", "tree"), config)
        outcomes = [x for tree in records.read_records(rdir / "search", "tree") for x in extract_outcomes(tree, config)]
        if processes.is_first():
            shutil.rmtree(out, ignore_errors=True)  # a half-written earlier try
            records.write_records(out, "sft", sft)
            records.write_records(out, "ppm", pairs)
            records.write_records(out, "orm", outcomes)
        kinds = {kind: sum(p.kind == kind for p in pairs) for kind in ("step", "final")}
        return {"sft": len(sft), "pairs": len(pairs), "pair_kinds": kinds, "outcomes": len(outcomes),
                "problems_with_sft": len({x.problem_id for x in sft}), "stats": dataclasses.asdict(stats)}

    def _train_config(self, c, steps: int, task: str):
        from rstar_jax.train import TrainConfig, batch_shards, mesh_from_config

        shards = batch_shards(mesh_from_config(self.config.mesh))
        return TrainConfig(learning_rate=c.learning_rate, warmup_steps=min(steps, int(c.warmup_fraction * steps)),
                           total_steps=steps, schedule=c.schedule, weight_decay=c.weight_decay,
                           clip_norm=c.clip_norm, microbatches=microbatches(c, task, shards),
                           end_lr_fraction=c.get("end_lr_fraction", 0.0), loss_chunk=c.get("loss_chunk", 0))

    def _export(self, model, out: pathlib.Path) -> str:
        from rstar_jax.models import save_pretrained

        tmp = out.with_name(out.name + ".tmp")
        first = processes.is_first()
        if first:
            shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(model, tmp)  # every process takes part; process 0 writes
        if first:
            self.tokenizer.save(tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            self.push(out, delete=True)
        processes.barrier(f"export {self._rel(str(out))}")
        return self._rel(str(out))

    def _sft(self, directory: pathlib.Path, start: str, examples: list, seed: int) -> tuple[str, dict]:
        """The model at `start` fine-tuned on `examples`; returns its exported path and metrics."""
        from rstar_jax.train import Trainer, epochs, fit, pack_sft, tokenize_sft

        c = self.config.train.sft
        sequences = list(tokenize_sft(examples, self.tokenizer))

        def pack(order):
            return pack_sft(order, rows=c.batch, length=c.max_length, pad_id=self.tokenizer.pad_id)

        steps = c.steps or max(1, int(math.ceil(c.epochs * sum(1 for _ in pack(sequences)))))

        trainer = Trainer(self._model(start, value_head=False, training=True), self._train_config(c, steps, "sft"), "sft")
        with self._checkpoints(directory / "ckpt", keep=2, every=max(1, c.get("save_every", 100))) as ckpt:
            # The same order on every try: a resumed run skips what it consumed.
            history = fit(trainer, epochs(sequences, seed, pack), steps=steps, checkpoints=ckpt,
                          logdir=directory / "tb", progress=self.progress, log_every=0)
            ckpt.save(trainer, data_position=steps, force=True)
        path = self._export(trainer.model(), directory / "model")
        last = history[-1]["loss"] if history else math.nan
        return path, {"steps": steps, "examples": len(examples), "final_loss": last}

    def _bootstrap(self, train: list[Problem]) -> None:
        def run(d):
            from rstar_jax.data.synthetic import reference_examples

            examples = reference_examples(train)
            if not examples:
                raise ConfigError("config.bootstrap.kind='reference' needs problems with reference solutions "
                                  "(metadata['solution'], as the synthetic generator writes); these have none")
            examples = examples[:max(1, int(self.config.bootstrap.fraction * len(examples)))]
            path, metrics = self._sft(d, self.base_checkpoint, examples, seed=0)
            return {"model": path, **metrics}

        self._stage(self.dir / "bootstrap", "bootstrap", run)

    def _train_policy(self, rdir: pathlib.Path, r: int) -> dict:
        examples = list(records.read_records(rdir / "data", "sft"))
        if not examples:
            prev = self.policy_path(r - 1)
            return {"model": self._rel(prev), "trained": False,
                    "notes": [f"round {r}: no SFT examples (no problem solved often enough); "
                              "the policy is carried over"]}
        path, metrics = self._sft(rdir / "policy", self.base_checkpoint, examples, seed=r)
        return {"model": path, "trained": True, **metrics}

    def _train_reward(self, rdir: pathlib.Path, r: int, kind: str) -> dict:
        """The round's PPM (kind "ppm": step pairs) or outcome reward model ("orm": whole trajectories
        labelled right or wrong, only in the rounds `train.orm.rounds` names): policy r with a value
        head, trained on the round's records of that kind. `held_out` of the problems are held out;
        the checkpoint with the best held-out accuracy is exported."""
        from rstar_jax.train import Trainer, epochs, fit, outcome_batches, ppm_batches

        c = self.config.train[kind]
        if kind == "orm" and r not in c.rounds:
            return {"model": None, "trained": False}
        items = list(records.read_records(rdir / "data", kind))
        if not items:
            prev = self.reward_path(kind, r - 1) if kind == "ppm" else None
            what = "PPM pairs; the PPM is carried over" if prev else f"{kind} data; no {kind.upper()} this round"
            return {"model": self._rel(prev), "trained": False, "notes": [f"round {r}: no {what}"]}
        held = {x.problem_id for x in items if zlib.crc32(x.problem_id.encode()) % 10_000 < c.held_out * 10_000}
        if len(held) == len({x.problem_id for x in items}):
            held = set()  # too few problems to hold any out
        train_items = [x for x in items if x.problem_id not in held]
        held_items = [x for x in items if x.problem_id in held]
        tok = self.tokenizer
        make = ppm_batches if kind == "ppm" else outcome_batches

        def batches(order):  # the last batch is filled with padding rows of weight 0
            return make(order, tok, c.batch, c.max_length, pad_id=tok.pad_id)

        steps = c.steps or max(1, int(math.ceil(c.epochs * math.ceil(len(train_items) / c.batch))))
        evals = list(batches(held_items)) if held_items else None
        trainer = Trainer(self._model(self.policy_path(r), value_head=True, training=True),
                          self._train_config(c, steps, kind), kind)
        d = rdir / kind
        with self._checkpoints(d / "ckpt", keep=2, every=max(1, c.get("save_every", 100))) as ckpt, \
                self._checkpoints(d / "best", keep=1, async_save=False) as best:
            history = fit(trainer, epochs(train_items, r, batches), steps=steps, checkpoints=ckpt,
                          best=best if evals else None, eval_batches=evals,
                          eval_every=max(1, steps // 4) if evals else 0, logdir=d / "tb", progress=self.progress,
                          log_every=0)
            ckpt.save(trainer, data_position=steps, force=True)
            held_metrics = {}
            if evals:
                best.restore_latest(trainer)
                held_metrics["held_out_accuracy"] = trainer.evaluate(evals)["accuracy"]
                step_pairs = [x for x in held_items if kind == "ppm" and x.kind == "step"]
                if step_pairs:
                    held_metrics["held_out_step_accuracy"] = trainer.evaluate(list(batches(step_pairs)))["accuracy"]
        path = self._export(trainer.model(), d / "model")
        return {"model": path, "trained": True, "steps": steps, "examples": len(train_items),
                "held_out": len(held_items), "final_loss": history[-1]["loss"] if history else None, **held_metrics}

    def _evaluate(self, rdir: pathlib.Path, r: int, test: list[Problem]) -> dict:
        from rstar_jax import evaluate

        e = self.config.eval
        if r in e.skip_rounds:  # a time budget: the round's training is reported, not its policy
            return {"evaluation": dataclasses.asdict(evaluate.Evaluation([], {}, {}, {})),
                    "notes": [f"round {r}: not evaluated (config.eval.skip_rounds)"]}
        ppm = self.reward_path("ppm", r)
        notes = [f"round {r}: no PPM, so no best-of-N (PPM) or MCTS + PPM evaluation"] if r and ppm is None else []
        methods = e.light_methods if r in e.light_rounds else e.methods
        if tuple(methods) != tuple(e.methods):
            notes.append(f"round {r}: evaluated with {', '.join(methods)} only (config.eval.light_rounds)")
        ev = self.evaluate(r, test, self._executor, methods=methods, process=processes.index_and_count(),
                           gather=self._gather(rdir / "eval" / "parts"))
        evaluate.report(ev, rdir / "eval" if processes.is_first() else None, title=f"round {r}")
        return {"evaluation": dataclasses.asdict(ev), "notes": notes}

    def evaluate(self, r: int, problems: Sequence[Problem], executor, *, methods: Sequence[str] | None = None,
                 samples: int | None = None, temperature: float | None = None, searches: int | None = None,
                 process: tuple[int, int] = (0, 1), gather=None):
        """`evaluate.evaluate_policy` of round r's policy, with its PPM and ORM where trained, on
        `problems`, by `config.eval` (`methods`, `samples`, `temperature`, `searches` override it):
        what each round's evaluation stage and `launch/evaluate.py` run."""
        from rstar_jax import evaluate

        e = self.config.eval
        ppm, orm = self.reward_path("ppm", r), self.reward_path("orm", r)
        return evaluate.evaluate_policy(
            problems, self.engine(self.policy_path(r)), executor, self.tokenizer, budget=eval_budget(self.config),
            search=eval_search_config(self.config), ppm=self.scorer(ppm) if ppm else None,
            orm=self.scorer(orm) if orm else None, samples=samples or e.samples or None,
            temperature=e.temperature if temperature is None else temperature, searches=searches or e.searches,
            methods=e.methods if methods is None else methods, batch_size=e.batch, progress=self.progress,
            process=process, gather=gather)

    # --- the report ---

    def _log_round(self, x: RoundResult) -> None:
        report.log_round(x, self.dir / "tb")
        self.push(self.dir / "tb")

    def write_report(self, results: Sequence[RoundResult]) -> None:
        for name in report.write(results, self.dir, self.config.get("report_note", "")):
            self.push(self.dir / name)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, progress: bool | None = None,
        cache_dir: str | None = None) -> list[RoundResult]:
    """Runs (or resumes) the rounds of `config` in `workdir` (a local path or a URL such as gs://bucket/run,
    worked on in `cache_dir`); returns the report's rows."""
    return Evolution(config, workdir, progress=progress, cache_dir=cache_dir).run()
