"""Trains a policy and a PPM from the released rStar-Math SFT and PPM files (docs/rstar_data.md).

    python scripts/train_from_rstar.py --config=configs/phi3.py --workdir=/mnt/rstar_sft \
        --sft=/mnt/data/sft.json --ppm=/mnt/data/rm.json

The files are imported (`data.import_rstar_sft` / `import_rstar_ppm`) into record shards under
<workdir>/data, then trained exactly as a round trains on its own search's records, with the
config's `train.sft` and `train.ppm` blocks, on its `mesh`: the policy fine-tuned from
`model.checkpoint` (given the step tokens first if it lacks them), then the PPM from that policy
with a value head. Each lands as a Hugging Face directory, <workdir>/policy/model and
<workdir>/ppm/model, as a round's do. Run it again with the same --workdir to resume: a finished
model is kept (policy.json, ppm.json), an interrupted one resumes from its checkpoints.
With only --ppm, the PPM starts from `model.checkpoint`.
"""

import logging
import pathlib
import shutil
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "Config file: its model, mesh and train blocks are used.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the imported records and models go.")
_SFT = flags.DEFINE_string("sft", "", "Released policy SFT data: JSON list or JSONL of "
                                      "{query, response}.")
_PPM = flags.DEFINE_string("ppm", "", "Released PPM data: JSON list or JSONL of "
                                      "{prompt, pos, neg}.")
flags.mark_flags_as_required(["config", "workdir"])


def import_records(data: pathlib.Path, sft: str, ppm: str) -> dict[str, int]:
    """Writes the released files as sft / ppm record shards in `data` (once: a directory that
    holds them already is kept), and returns how many of each it holds."""
    from rstar_jax.data import records

    if not data.exists():
        tmp = data.with_name(data.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # what a crashed import left
        if sft:
            records.write_records(tmp, "sft", records.import_rstar_sft(sft))
        if ppm:
            records.write_records(tmp, "ppm", records.import_rstar_ppm(ppm))
        tmp.replace(data)  # complete, or not there: a crash here imports again
    return {kind: records.count_records(data, kind) for kind in ("sft", "ppm")}


def fitting(kind: str, data: pathlib.Path, tokenizer, max_length: int) -> int:
    """How many records of `kind` fit `max_length` tokens (longer ones are left out in
    training); training on none would wait for batches forever."""
    from rstar_jax.data import records
    from rstar_jax.train import tokenize_sft

    items = list(records.read_records(data, kind))
    if kind == "sft":
        return sum(len(ids) - 1 <= max_length for ids, _ in tokenize_sft(items, tokenizer))
    head = [tokenizer.encode(p.prompt, add_bos=tokenizer.add_bos) for p in items]
    return sum(len(h) + max(len(tokenizer.continuation_ids(p.positive)),
                            len(tokenizer.continuation_ids(p.negative))) <= max_length
               for h, p in zip(head, items))


def main(argv):
    del argv
    from rstar_jax.evolve import stages
    from rstar_jax.evolve.config import ConfigError, check_config, use_compilation_cache
    from rstar_jax.evolve.loader import Loader
    from rstar_jax.evolve.rundir import RunDir
    from rstar_jax.evolve.summaries import TrainSummary
    from rstar_jax.train import initialize

    config = _CONFIG.value
    if not (_SFT.value or _PPM.value):
        print("error: pass --sft, --ppm or both", file=sys.stderr)
        return 2
    initialize(config.train.get("distributed"))
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    try:
        check_config(config)
        files = RunDir(_WORKDIR.value)
        use_compilation_cache(config.get("compilation_cache", ""), files.dir)
        models = Loader(config, files, reading=False)
        base = models.base_checkpoint  # a stock checkpoint is given the step tokens here, once
        counts = import_records(files.dir / "data", _SFT.value, _PPM.value)
        for kind, what in (("sft", "SFT examples"), ("ppm", "PPM pairs")):
            if not counts[kind]:
                continue
            limit = config.train[kind].max_length
            fit = fitting(kind, files.dir / "data", models.tokenizer, limit)
            if not fit:
                raise ConfigError(f"none of the {counts[kind]} {kind} records fits "
                                  f"train.{kind}.max_length={limit} tokens; raise "
                                  f"--config.train.{kind}.max_length")
            print(f"imported: {counts[kind]} {what}, {fit} within "
                  f"train.{kind}.max_length={limit} tokens", flush=True)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    policy = base
    if counts["sft"]:
        summary = files.stage(files.dir, "policy", TrainSummary, lambda d: stages.train_policy(
            files, models, config.train.sft, d / "data", d / "policy", r=1, start=base,
            previous=base, progress=None))
        policy = str(files.dir / summary.model)
        print(f"policy: {summary.steps} steps on {summary.examples} examples -> {policy}")
    if counts["ppm"]:
        summary = files.stage(files.dir, "ppm", TrainSummary, lambda d: stages.train_reward(
            files, models, "ppm", config.train.ppm, d / "data", d / "ppm", r=1, policy=policy,
            previous=None, progress=None))
        print(f"ppm: {summary.steps} steps on {summary.examples} pairs "
              f"({summary.held_out} held out) -> {files.dir / summary.model}")
    return 0


if __name__ == "__main__":
    app.run(main)
