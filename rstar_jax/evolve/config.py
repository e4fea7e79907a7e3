"""What a run's config means: its problems, each round's search, the evaluation's budgets,
training steps and microbatches, the code executor; and the checks that fail early, naming the
field, on what would fail hours into a run."""

from __future__ import annotations

import json
import logging
import pathlib

import jax
import ml_collections

from rstar_jax.data.dedup import decontaminate
from rstar_jax.data.load import load_problems
from rstar_jax.data.problem import Problem
from rstar_jax.search.config import SearchConfig
from rstar_jax.steps.executor import CodeExecutor, host_workers
from rstar_jax.train import TrainConfig
from rstar_jax.train.trainer import microbatches_for

log = logging.getLogger(__name__)

BOOTSTRAP_KINDS = ("base", "few_shot", "checkpoint", "reference")


class ConfigError(ValueError):
    """A config field or path that cannot work; the message names it."""


# --- problems ---------------------------------------------------------------------------------


def problem_sets(c) -> tuple[list[Problem], list[Problem]]:
    """(training, test) problems of a config's `problems` block: `train` and `test` are
    `load_problems` specs; problems of `exclude` (a spec of the base policy's pretraining
    problems, or empty) are dropped from both, then at most `max_test` test problems are kept,
    training problems that are also test problems are dropped, and at most `max_train` kept
    (0: all)."""
    test = _load(c.test, "problems.test")
    train = _load(c.train, "problems.train")
    if c.get("exclude", ""):
        seen = {"pretraining": _load(c.exclude, "problems.exclude")}
        (test, in_test), (train, in_train) = decontaminate(test, seen), decontaminate(train, seen)
        log.info("dropped %d test and %d training problems the base policy was pretrained on",
                 len(in_test.removed_ids), len(in_train.removed_ids))
    if c.get("max_test", 0):
        test = test[:c.max_test]
    train, overlap = decontaminate(train, {"test": test})
    if overlap.exact or overlap.normalized:
        log.info("dropped %d training problems that are test problems", len(overlap.removed_ids))
    if c.get("max_train", 0):
        train = train[:c.max_train]
    return train, test


def _load(spec: str, field: str) -> list[Problem]:
    try:
        return load_problems(spec)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise ConfigError(f"config.{field}={spec!r}: {e}") from e


# --- searches ---------------------------------------------------------------------------------


def search_config(config: ml_collections.ConfigDict, r: int) -> SearchConfig:
    """Round r's SearchConfig: the preset's stage (rounds past 4 repeat round 4), the budgets of
    `search.common`, then `search.round{r}`. Round 1 uses the few-shot prompt unless its policy
    already writes the format (bootstrap kinds "base" and "reference")."""
    s = config.search
    stage = f"round{min(r, 4)}"
    overrides = {**s.common.to_dict(), **s.get(stage, ml_collections.ConfigDict()).to_dict()}
    if r == 1:
        overrides.setdefault("bootstrap", config.bootstrap.kind in ("few_shot", "checkpoint"))
    try:
        return SearchConfig.preset(s.preset, stage, **overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.search (round {r}): {e}") from e


_BUDGETS = ("max_depth", "max_step_tokens", "max_output_tokens", "overlap", "continuous")


def eval_budget(config: ml_collections.ConfigDict) -> SearchConfig:
    """The step budgets of single-path solutions (greedy, sampled): `search.common`'s."""
    return SearchConfig(**{k: v for k, v in config.search.common.items() if k in _BUDGETS})


def prefix_rows(config: ml_collections.ConfigDict) -> int:
    """Rows of the policy's and the PPM's prefix stores: `search.prefix_rows`, or by default one
    for each problem a search or an evaluation has in its batch."""
    return config.search.get("prefix_rows", 0) or max(config.search.batch, config.eval.batch)


def ppm_rows(config: ml_collections.ConfigDict) -> int:
    """Rows of packed candidates the PPM scores in one call (`search.ppm_rows`; 64 for a config
    that predates the field)."""
    rows = config.search.get("ppm_rows", 64)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 8:
        raise ConfigError(f"config.search.ppm_rows must be an int >= 8 (the PPM's rows a call), "
                          f"got {rows!r}")
    return rows


def eval_search_config(config: ml_collections.ConfigDict) -> SearchConfig:
    """The test-time search of evaluation: the preset's "test" stage, `search.common`, then
    `eval.search`."""
    overrides = {**config.search.common.to_dict(), **config.eval.search.to_dict()}
    return SearchConfig.preset(config.search.preset, "test", **overrides)


# --- checks -----------------------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the field, on what would fail hours into a run."""
    required = ("model.checkpoint", "problems.train", "problems.test", "rounds", "bootstrap.kind")
    for field in required:
        node = config
        for part in field.split("."):
            if part not in node:
                raise ConfigError(f"config.{field} is missing; see configs/tiny.py for a complete "
                                  "config")
            node = node[part]
    if not isinstance(config.rounds, int) or not 1 <= config.rounds <= 8:
        raise ConfigError(f"config.rounds must be an int in 1..8, got {config.rounds!r}")
    if config.bootstrap.kind not in BOOTSTRAP_KINDS:
        raise ConfigError(f"config.bootstrap.kind must be one of {', '.join(BOOTSTRAP_KINDS)}, "
                          f"got {config.bootstrap.kind!r}")
    _check_checkpoint(config.model.checkpoint, "model.checkpoint")
    if config.bootstrap.kind == "checkpoint":
        _check_checkpoint(config.bootstrap.checkpoint, "bootstrap.checkpoint")
    ppm_rows(config)
    if config.bootstrap.kind == "reference" and not 0 < config.bootstrap.fraction <= 1:
        raise ConfigError(f"config.bootstrap.fraction must be in (0, 1], got "
                          f"{config.bootstrap.fraction!r}")


def _check_checkpoint(path: str, field: str) -> None:
    if not path:
        raise ConfigError(f"config.{field} is empty: set it to a local Hugging Face directory "
                          "(config.json, *.safetensors, the tokenizer files)")
    p = pathlib.Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"config.{field}={path!r}: no config.json there. Weights are never downloaded at run "
            "time: put the model's Hugging Face directory at that path (e.g. `huggingface-cli "
            f"download <repo> --local-dir {path}` on a machine with access, then copy it), or pass "
            f"--config.{field}=/path/to/model")


def fingerprint(config: ml_collections.ConfigDict) -> dict:
    """What must not change under a resumed run (budgets and paths that shape finished stages):
    what the work directory's config.json holds."""
    d = json.loads(config.to_json())
    d.pop("allow_config_change", None)
    # Neither changes what a run computes (the inference mesh only where its floats round), and a
    # run may resume on another slice.
    for key in ("dry_run", "dry_run_topology", "dry_run_parts", "inference_mesh",
                "compilation_cache"):
        d.pop(key, None)
    d.get("model", {}).pop("scan_layers", None)  # the same step, compiled as a loop
    # the PPM's calls split differently, its values rounding only where their shapes differ
    d.get("search", {}).pop("ppm_rows", None)
    return d


# --- training ---------------------------------------------------------------------------------


def microbatches(c: ml_collections.ConfigDict, task: str, shards: int) -> int:
    """The microbatches of `task`'s step under its config block `c` (`train.sft`, ...):
    `c.microbatches`, or with `c.tokens_per_chip` set the fewest that keep each chip's share
    within it, the batch's rows split over `shards` devices (`train.devices.batch_shards` of the
    training mesh)."""
    budget = c.get("tokens_per_chip", 0)
    if not budget:
        return c.microbatches
    row_tokens = c.max_length * (2 if task == "ppm" else 1)  # a PPM row is a pair of sequences
    try:
        return microbatches_for(c.batch, row_tokens, shards, budget)
    except ValueError as e:
        raise ConfigError(f"train.{task}: {e} (batch {c.batch}, max_length {c.max_length}, "
                          f"tokens_per_chip {budget})") from None


def train_config(c: ml_collections.ConfigDict, steps: int, task: str, shards: int) -> TrainConfig:
    """The TrainConfig of `steps` steps of `task` under its config block `c` (`train.sft`, ...),
    on a training mesh that splits a batch's rows over `shards` devices."""
    return TrainConfig(learning_rate=c.learning_rate,
                       warmup_steps=min(steps, int(c.warmup_fraction * steps)),
                       total_steps=steps, schedule=c.schedule, weight_decay=c.weight_decay,
                       clip_norm=c.clip_norm, microbatches=microbatches(c, task, shards),
                       end_lr_fraction=c.get("end_lr_fraction", 0.0),
                       loss_chunk=c.get("loss_chunk", 0))


# --- this host --------------------------------------------------------------------------------


def code_executor(e: ml_collections.ConfigDict) -> CodeExecutor:
    """The code executor pool of `config.executor` (workers 0: as many as the host's cores
    allow)."""
    workers = e.workers or host_workers(e.memory_mb)
    return CodeExecutor(num_workers=workers, timeout_s=e.timeout_s, memory_mb=e.memory_mb)


def use_compilation_cache(where: str, workdir: pathlib.Path) -> str | None:
    """Turns on JAX's persistent compilation cache for this process at `where` ("workdir":
    <workdir>/jax_cache; a path or URL; "": off) and returns its directory. Every compilation is
    kept, however short: the tiny world's are, and a pod's take minutes. JAX reads the setting
    when it first compiles; a process keeps the cache it started with."""
    if not where:
        return None
    path = str(workdir / "jax_cache") if where == "workdir" else where
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
