"""The training loop around a Trainer: resume, progress, held-out evaluation, the best model.

`fit` consumes batches, one optimiser step each, and:
- resumes from `checkpoints` when they hold a run (skipping the batches that run consumed, so
  with the same batch order it continues exactly where it stopped);
- shows a progress bar with the loss, tokens/s and, given the machine's peak FLOP/s, MFU;
- every `eval_every` steps evaluates `eval_batches` and, when the held-out metric improves,
  saves the trainer to `best` (lowest loss for SFT, highest pair accuracy for the PPM);
- writes every metric to TensorBoard under `logdir` (and a line to the console every
  `log_every` steps).
"""

from __future__ import annotations

import itertools
import logging
import pathlib
import time
from collections.abc import Iterable

import jax
import tqdm

from rstar_jax.train.checkpoint import Checkpoints

log = logging.getLogger(__name__)


def flops_per_token(config, length: int) -> float:
    """Training FLOPs per token: 3 x (2 x matmul parameters, LM head included, + causal attention
    over the full square of a `length`-token row)."""
    params = config.num_params(include_embeddings=False) + config.hidden_size * config.vocab_size
    attention = config.num_hidden_layers * config.num_attention_heads * config.head_dim * length
    return 3 * (2 * params + 4 * attention)


def fit(trainer, batches: Iterable, *, steps: int | None = None, eval_batches: list | None = None,
        eval_every: int = 0, checkpoints: Checkpoints | None = None,
        best: Checkpoints | None = None,
        logdir: str | pathlib.Path | None = None, log_every: int = 50,
        peak_flops: float | None = None, progress: bool | None = None) -> list[dict[str, float]]:
    """Trains on `batches` (at most `steps`); returns the metrics of every step run here."""
    metric = "loss" if trainer.task == "sft" else "accuracy"
    start, best_value = 0, None
    if checkpoints is not None and (meta := checkpoints.restore_latest(trainer)) is not None:
        start, best_value = meta["data_position"], meta.get("best")
        log.info("resumed at step %d (batch %d) from %s", trainer.step_count, start,
                 checkpoints.directory)
    writer = None
    if logdir is not None and jax.process_index() == 0:
        # one writer a job: every process has the same metrics
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(logdir))
    history = []
    remaining = None if steps is None else max(0, steps - start)
    stream = itertools.islice(batches, start, None if remaining is None else start + remaining)
    position = start
    with tqdm.tqdm(stream, total=remaining, desc=f"train {trainer.task}", unit="step", leave=False,
                   disable=None if progress is None else not progress) as bar:
        for batch in bar:
            begin = time.perf_counter()
            metrics = trainer.step(batch)
            seconds = time.perf_counter() - begin
            position += 1
            metrics["tokens_per_s"] = batch.tokens / seconds
            if peak_flops:
                length = batch.inputs.shape[1] if trainer.task == "sft" else batch.ids.shape[1]
                flops = metrics["tokens_per_s"] * flops_per_token(trainer.model_config, length)
                metrics["mfu"] = flops / peak_flops
            if eval_every and eval_batches and trainer.step_count % eval_every == 0:
                held = trainer.evaluate(eval_batches)
                metrics |= {f"eval_{k}": v for k, v in held.items()}
                value = held[metric]
                if best_value is None:
                    better = True
                elif metric == "accuracy":
                    better = value > best_value
                else:
                    better = value < best_value
                if better:
                    best_value = value
                    if best is not None:
                        best.save(trainer, data_position=position, force=True, best=best_value)
            history.append(metrics)
            bar.set_postfix({k: f"{metrics[k]:.3g}"
                             for k in ("loss", "tokens_per_s", "mfu") if k in metrics})
            if writer is not None:
                for k, v in metrics.items():
                    writer.add_scalar(f"{trainer.task}/{k}", v, trainer.step_count)
            if log_every and trainer.step_count % log_every == 0:
                log.info("step %d: %s", trainer.step_count,
                         {k: round(v, 4) for k, v in metrics.items()})
            if checkpoints is not None:
                checkpoints.save(trainer, data_position=position, best=best_value)
    if writer is not None:
        writer.close()
    if checkpoints is not None:
        checkpoints.wait()
    if best is not None:
        best.wait()
    return history
