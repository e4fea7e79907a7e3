"""The models of a run: the base checkpoint (given the step tokens once, in the work directory,
when it lacks them), its tokenizer, and models loaded onto the training mesh or this host's
inference mesh, exported back as Hugging Face directories."""

from __future__ import annotations

import os
import pathlib
import shutil

import jax.numpy as jnp
import ml_collections

from rstar_jax import processes
from rstar_jax.engine import Engine, ValueScorer
from rstar_jax.evolve.config import ConfigError, ppm_rows, prefix_rows
from rstar_jax.evolve.rundir import RunDir
from rstar_jax.evolve.summaries import CONVERSION, ConvertSummary
from rstar_jax.models import from_pretrained, read_config, save_pretrained, vocab
from rstar_jax.tokenizer import Tokenizer, backend_of
from rstar_jax.train import batch_shards, inference_mesh, mesh_from_config


class Loader:
    """The models of the run of `config` in `files`; `reading`: the run is only read (an
    evaluation), so a checkpoint it never converted is an error, not converted here."""

    def __init__(self, config: ml_collections.ConfigDict, files: RunDir, *, reading: bool):
        self.config = config
        self.files = files
        self.reading = reading
        self._tokenizer = None
        self._base = None  # (model, tokenizer) directories of the base checkpoint: `base_dirs`

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_dir(self.base_dirs()[1])
        return self._tokenizer

    @property
    def base_checkpoint(self) -> str:
        """`Evolution.base_checkpoint`."""
        return self.base_dirs()[0]

    def base_dirs(self) -> tuple[str, str]:
        """(model, tokenizer) directories of the base checkpoint; converts it on first use."""
        if self._base is None:
            self._base = self._find_base()
        return self._base

    def _find_base(self) -> tuple[str, str]:
        checkpoint = self.config.model.checkpoint
        given = self.config.get("tokenizer", {}).get("path", "")
        base = self.files.dir / "base"
        # Converted by an earlier try of this run: the source is not read again (the summary is).
        if not processes.agreed("base converted", (base / "convert.json").exists):
            if given:
                field, source = "tokenizer.path", given
            else:
                field, source = "model.checkpoint", checkpoint
            try:
                tokenizer = Tokenizer.from_dir(source)
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"config.{field}={source!r}: {e}") from e
            missing = vocab.missing_step_tokens(tokenizer)
            if not missing:
                if given:
                    self._check_tokenizer_pairing(tokenizer)
                return checkpoint, source
            if self.reading:
                option = f" --tokenizer={given}" if given else ""
                raise ConfigError(
                    f"config.{field}={source!r} has no step tokens ({', '.join(missing)}: a "
                    f"checkpoint as downloaded from the hub) and the run in {self.files.dir} holds "
                    "no converted copy (base/convert.json). Pass the --workdir of a run "
                    "launch/tpu_evolve.py started (it converts the checkpoint on first use), or "
                    "convert it: `python launch/convert_checkpoint.py "
                    f"--source={checkpoint}{option} --out=DIR`, then pass "
                    "--config.model.checkpoint=DIR")
        summary = self.files.stage(base, "convert", ConvertSummary,
                                   lambda d: self._convert_base(d, given))
        path = self.files.dir / summary.model
        self.files.pull(path)
        return str(path), str(path)

    def _convert_base(self, directory: pathlib.Path, tokenizer: str) -> ConvertSummary:
        """config.model.checkpoint (with the tokenizer of config.tokenizer.path, if set) given
        the step tokens, written to `directory`/model by process 0 while the others wait."""
        checkpoint = self.config.model.checkpoint
        out = directory / "model"

        def convert() -> dict:
            shutil.rmtree(out, ignore_errors=True)  # what an earlier try left before its summary
            try:
                summary = vocab.convert_checkpoint(checkpoint, out, tokenizer=tokenizer or None)
            except (FileNotFoundError, FileExistsError, ValueError) as e:
                raise ConfigError(f"config.model.checkpoint={checkpoint!r}: {e}") from e
            print(f"  {checkpoint} has no step tokens: added {summary['added']}, embedding rows "
                  f"{summary['rows_before']} -> {summary['rows_after']}; the run uses {out}",
                  flush=True)
            return summary

        summary = processes.by_process_0("base conversion", convert) or {}
        return ConvertSummary(model=self.files.rel(out),
                              conversion={k: summary[k] for k in CONVERSION if k in summary})

    def _check_tokenizer_pairing(self, tokenizer: Tokenizer) -> None:
        """A config.tokenizer.path that has the step tokens must belong to
        config.model.checkpoint: paired with a model that never had them, their ids would index
        untrained padding rows."""
        checkpoint, given = self.config.model.checkpoint, self.config.tokenizer.path
        if backend_of(checkpoint) is not None:
            own = vocab.missing_step_tokens(Tokenizer.from_dir(checkpoint))
            if own:
                raise ConfigError(
                    f"config.tokenizer.path={given!r} has the step tokens but "
                    f"config.model.checkpoint={checkpoint!r} does not ({', '.join(own)}), so its "
                    "rows for them were never set. Unset config.tokenizer.path (the run then "
                    "converts the checkpoint with its own tokenizer once, into "
                    "<workdir>/base/model), or point config.model.checkpoint at the model that "
                    "tokenizer was saved with")
        rows = read_config(checkpoint).vocab_size
        if tokenizer.vocab_size > rows:
            raise ConfigError(
                f"config.tokenizer.path={given!r} has {tokenizer.vocab_size} ids but "
                f"config.model.checkpoint={checkpoint!r} only {rows} embedding rows; they do not "
                "belong together")

    def check_bootstrap_checkpoint(self) -> None:
        """The "checkpoint" bootstrap policy is run with the run's tokenizer: its own tokenizer,
        if it has one, must give the step tokens the same ids (it is not converted here)."""
        path = self.config.bootstrap.checkpoint
        if backend_of(path) is None:
            return  # no tokenizer of its own
        own = Tokenizer.from_dir(path)
        ours = self.tokenizer.step_token_ids
        theirs = {t: own.token_to_id(t) for t in ours}
        if theirs != ours:
            raise ConfigError(
                f"config.bootstrap.checkpoint={path!r} gives the step tokens the ids {theirs}, the "
                f"run's tokenizer {ours} (None: it has no such token, as a checkpoint downloaded "
                "from the hub). If it shares the base's vocabulary, convert it: `python "
                f"launch/convert_checkpoint.py --source={path} --out=DIR` gives the same ids; then "
                "pass --config.bootstrap.checkpoint=DIR")

    # --- loading and exporting ---

    def model(self, path: str, *, value_head: bool | None = None, training: bool = False):
        """The model at `path`: to train, on the training mesh with `model.param_dtype` master
        weights; otherwise (searches, evaluations) in the compute dtype, on this host's
        inference mesh."""
        m = self.config.model
        if pathlib.Path(path).is_relative_to(self.files.dir):
            self.files.pull(pathlib.Path(path))  # a URL workdir's model comes down when first used
        if training:
            mesh, param_dtype = mesh_from_config(self.config.mesh), m.param_dtype
        else:
            mesh, param_dtype = inference_mesh(self.config.inference_mesh), m.dtype
        value_tanh = self.config.train.ppm.value_tanh if value_head else None
        return from_pretrained(path, dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(param_dtype),
                               mesh=mesh, attention=m.attention, remat=m.remat and training,
                               scan_layers=training and m.get("scan_layers", False),
                               value_head=value_head, value_tanh=value_tanh)

    def engine(self, path: str) -> Engine:
        tok = self.tokenizer
        # A prefix store (`search.prefix_rows`): a path's keys and values are computed once, not
        # again at each of its expansions.
        return Engine(self.model(path, value_head=False), vocab_size=tok.vocab_size,
                      pad_id=tok.pad_id, prefix_rows=prefix_rows(self.config))

    def scorer(self, path: str) -> ValueScorer:
        return ValueScorer(self.model(path, value_head=True), pad_id=self.tokenizer.pad_id,
                           prefix_rows=prefix_rows(self.config), max_rows=ppm_rows(self.config))

    def batch_shards(self) -> int:
        """The devices a training batch's rows are split over (`train.batch_shards`)."""
        return batch_shards(mesh_from_config(self.config.mesh))

    def export(self, model, out: pathlib.Path) -> str:
        """`model` and the tokenizer saved as a Hugging Face directory at `out` (replacing it
        whole); returns its path as a summary keeps it."""
        tmp = out.with_name(out.name + ".tmp")
        first = processes.is_first()
        if first:
            shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(model, tmp)  # every process takes part; process 0 writes
        if first:
            self.tokenizer.save(tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            self.files.push(out, delete=True)
        processes.barrier(f"export {self.files.rel(out)}")
        return self.files.rel(out)
