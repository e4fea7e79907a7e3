"""The self-evolution rounds (RSTAR.md section 6): the main job.

Each round r = 1..R runs six stages (`stages`), each finished once and never redone:

1. search: MCTS over the training problems with the round's policy (round 1: the bootstrap
   policy; round r: the round r-1 policy), in the round's mode and budget (terminal-guided in
   rounds 1-2, PPM-augmented with the round r-1 PPM after). Trees go to record shards, one shard
   per fixed chunk of problems, so a stopped search keeps every chunk it finished.
2. extract: SFT examples and PPM pairs from the trees (`data.extract`).
3. policy: the base model fine-tuned on the round's SFT examples, exported as a Hugging Face
   directory. Training resumes from its orbax checkpoints.
4. ppm: the new policy with a value head, trained on the round's pairs (5% of the problems held
   out; the checkpoint with the best held-out pair accuracy is exported).
5. orm: in the rounds `train.orm.rounds` names, an outcome reward model trained the same way on
   whole trajectories labelled right or wrong.
6. eval: greedy pass@1 of the policy and MCTS + PPM accuracy on the test problems.

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
    base/                  model/: config.model.checkpoint with the step tokens, when it had
                           none (as downloaded from the hub; converted on first use)  convert.json
    bootstrap/             the "reference" bootstrap policy (its checkpoints and model/)
    round_{r}/
      search/              tree record shards          search.json   stage summary
      data/                sft and ppm record shards   extract.json
      policy/              ckpt/, tb/, model/          policy.json
      ppm/, orm/           ckpt/, best/, tb/, model/   ppm.json, orm.json
      eval/                results.json, results.md    eval.json
    report.md, report.json, rounds.png

A stage is done when its `.json` summary exists; the summary is written last.

The package: `Evolution` (here) runs the rounds; `stages` holds each stage as a function of its
inputs, returning its summary (`summaries`); `rundir` the work directory (a URL's local copy,
the stage summaries, files shared between processes); `loader` the run's models; `config` what
the config means and the checks on it; `plan` the dry run.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import ml_collections

from rstar_jax import evaluate, processes, report
from rstar_jax.data.extract import ExtractConfig
from rstar_jax.data.problem import Problem
from rstar_jax.engine import Engine, ValueScorer
from rstar_jax.evolve import stages
from rstar_jax.evolve.config import ConfigError, check_config, code_executor, eval_budget, \
    eval_search_config, fingerprint, microbatches, problem_sets, search_config, \
    use_compilation_cache
from rstar_jax.evolve.loader import Loader
from rstar_jax.evolve.plan import dry_run
from rstar_jax.evolve.rundir import RunDir
from rstar_jax.evolve.stages import STAGES
from rstar_jax.evolve.summaries import BootstrapSummary, EvalSummary, ExtractSummary, \
    SearchSummary, TrainSummary, round0_result, round_result
from rstar_jax.report import RoundResult
from rstar_jax.steps.executor import CodeExecutor

__all__ = ["STAGES", "ConfigError", "Evolution", "check_config", "code_executor", "dry_run",
           "eval_budget", "eval_search_config", "microbatches", "problem_sets", "run",
           "search_config"]


class Evolution:
    """The rounds of one work directory; `run()` does what is not yet done and returns the
    report. `check_workdir=False`: the run is only read (an evaluation), its config not checked
    against the one it was started with."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                 progress: bool | None = None, check_workdir: bool = True,
                 cache_dir: str | None = None):
        check_config(config)
        self.config = config
        self.progress = progress
        self.files = RunDir(workdir, cache_dir)
        self.dir, self.mirror = self.files.dir, self.files.mirror
        self.models = Loader(config, self.files, reading=not check_workdir)
        self._executor: CodeExecutor | None = None  # the code executor of `run`
        use_compilation_cache(config.get("compilation_cache", ""), self.dir)
        if check_workdir:
            self.files.keep_config(fingerprint(config),
                                   allow_change=config.get("allow_config_change", False))
        elif not (self.dir / "config.json").exists():
            raise ConfigError(f"{self.dir} holds no run (no config.json); pass the --workdir of a "
                              "run")

    # --- the run ---

    def run(self) -> list[RoundResult]:
        train, test = self.problems()
        self.models.base_dirs()  # a stock checkpoint is converted here, once, before any stage
        if self.config.bootstrap.kind == "checkpoint":
            self.models.check_bootstrap_checkpoint()
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

    def _round(self, r: int, train: list[Problem], test: list[Problem],
               first: RoundResult) -> RoundResult:
        """Round r: each stage in order, run unless its summary is written (`RunDir.stage`)."""
        c, files, models, progress = self.config, self.files, self.models, self.progress
        stage = self.files.stage
        rdir = self.round_dir(r)
        search = stage(rdir, "search", SearchSummary, lambda d: stages.search(
            files, models, self._executor, train, d / "search", search_config(c, r), r=r,
            policy=self.policy_path(r - 1), ppm=self.ppm_path(r - 1),
            chunk=int(c.search.chunk), batch=c.search.batch, progress=progress))
        extract = stage(rdir, "extract", ExtractSummary, lambda d: stages.extract(
            d / "search", d / "data", ExtractConfig(**c.extract.to_dict())))
        policy = stage(rdir, "policy", TrainSummary, lambda d: stages.train_policy(
            files, models, c.train.sft, d / "data", d / "policy", r=r,
            start=self.base_checkpoint, previous=self.policy_path(r - 1), progress=progress))
        ppm = stage(rdir, "ppm", TrainSummary, lambda d: stages.train_reward(
            files, models, "ppm", c.train.ppm, d / "data", d / "ppm", r=r,
            policy=self.policy_path(r), previous=self.ppm_path(r - 1), progress=progress))
        orm = stage(rdir, "orm", TrainSummary, lambda d: stages.train_reward(
            files, models, "orm", c.train.orm, d / "data", d / "orm", r=r,
            policy=self.policy_path(r), previous=None, progress=progress))
        ev = stage(rdir, "eval", EvalSummary, lambda d: self._evaluate(d, r, test))
        return round_result(r, search, extract, policy, ppm, orm, ev, first)

    def _round0(self, test: list[Problem]) -> RoundResult:
        """Round 0: the bootstrap policy evaluated alone."""
        ev = self.files.stage(self.round_dir(0), "eval", EvalSummary,
                              lambda d: self._evaluate(d, 0, test))
        return round0_result(self.config.bootstrap.kind, ev)

    def _bootstrap(self, train: list[Problem]) -> BootstrapSummary:
        """The "reference" bootstrap policy, the policy of round 0 and round 1's search."""
        return self.files.stage(self.dir / "bootstrap", "bootstrap", BootstrapSummary,
                                lambda d: stages.bootstrap(
                                    self.files, self.models, self.config.train.sft, d, train,
                                    fraction=self.config.bootstrap.fraction,
                                    start=self.base_checkpoint, progress=self.progress))

    def _evaluate(self, rdir: pathlib.Path, r: int, test: list[Problem]) -> EvalSummary:
        """Round r's evaluation stage, its results in `rdir`/eval."""
        return stages.evaluate_round(
            self.files, self.config.eval, r, rdir / "eval", has_ppm=self.ppm_path(r) is not None,
            run_evaluation=lambda **kw: self.evaluate(r, test, self._executor, **kw))

    def evaluate(self, r: int, problems: Sequence[Problem], executor, *,
                 methods: Sequence[str] | None = None, samples: int | None = None,
                 temperature: float | None = None, searches: int | None = None,
                 process: tuple[int, int] = (0, 1), gather=None,
                 trees_dir: pathlib.Path | None = None) -> evaluate.Evaluation:
        """`evaluate.evaluate_policy` of round r's policy, with its PPM and ORM where trained, on
        `problems`, by `config.eval` (`methods`, `samples`, `temperature`, `searches` override
        it): what each round's evaluation stage and `launch/evaluate.py` run. The MCTS trees go to
        `trees_dir` when given."""
        return stages.evaluate_models(
            self.models, self.config, problems, executor, policy=self.policy_path(r),
            ppm=self.reward_path("ppm", r), orm=self.reward_path("orm", r), methods=methods,
            samples=samples, temperature=temperature, searches=searches, process=process,
            gather=gather, progress=self.progress, trees_dir=trees_dir)

    # --- the work directory ---

    def problems(self) -> tuple[list[Problem], list[Problem]]:
        """(training, test) problems of the run (`stages.problems`)."""
        return stages.problems(self.files, self.config.problems)

    def round_dir(self, r: int) -> pathlib.Path:
        return self.dir / f"round_{r}"

    def push(self, path: pathlib.Path, *, delete: bool = False) -> None:
        """Uploads what changed under `path` (inside the workdir) when the workdir is a URL."""
        self.files.push(path, delete=delete)

    # --- which models a round uses ---

    @property
    def tokenizer(self):
        return self.models.tokenizer

    @property
    def base_checkpoint(self) -> str:
        """The base model: where every SFT starts, and the bootstrap policy of kinds "base" and
        "few_shot". `config.model.checkpoint`, or, when its tokenizer lacks the step tokens (a
        checkpoint as downloaded from the hub), the copy with them this run made on first use:
        <workdir>/base/model (`rstar_jax.models.vocab.convert_checkpoint`)."""
        return self.models.base_checkpoint

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
        summary = self.files.summary(self.round_dir(r), "policy", TrainSummary)
        if summary is None:
            raise FileNotFoundError(self.round_dir(r) / "policy.json")
        return str(self.dir / summary.model)  # (relative, or absolute from an older run)

    def reward_path(self, kind: str, r: int) -> str | None:
        """The PPM (kind "ppm") or ORM ("orm") after round r, or None (none trained yet)."""
        summary = self.files.summary(self.round_dir(r), kind, TrainSummary) if r else None
        if summary is None or summary.model is None:
            return None
        return str(self.dir / summary.model)

    def ppm_path(self, r: int) -> str | None:
        """The PPM after round r, or None (none trained yet)."""
        return self.reward_path("ppm", r)

    def engine(self, path: str) -> Engine:
        """The policy at `path` on this host's inference mesh, for searches and evaluations."""
        return self.models.engine(path)

    def scorer(self, path: str) -> ValueScorer:
        """The reward model at `path` on this host's inference mesh."""
        return self.models.scorer(path)

    # --- the report ---

    def _log_round(self, x: RoundResult) -> None:
        report.log_round(x, self.dir / "tb")
        self.push(self.dir / "tb")

    def write_report(self, results: Sequence[RoundResult]) -> None:
        for name in report.write(results, self.dir, self.config.get("report_note", "")):
            self.push(self.dir / name)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
        progress: bool | None = None, cache_dir: str | None = None) -> list[RoundResult]:
    """Runs (or resumes) the rounds of `config` in `workdir` (a local path or a URL such as
    gs://bucket/run, worked on in `cache_dir`); returns the report's rows."""
    return Evolution(config, workdir, progress=progress, cache_dir=cache_dir).run()
