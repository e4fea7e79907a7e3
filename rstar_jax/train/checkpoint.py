"""Resumable training: orbax checkpoints of a Trainer's whole state.

A checkpoint holds the parameters and optimizer state (each array restored into the shardings
of the trainer it is restored into, so a run can resume on the same mesh or another one) and a
small JSON record: the step, the data position (how many batches were consumed) and anything
else the caller keeps (an RNG seed, the best held-out loss). Saves are asynchronous: training
goes on while the arrays are written, and a checkpoint becomes visible only when complete, so
a run killed mid-save resumes from the previous one.

    checkpoints = Checkpoints(workdir / "ppm", keep=3)
    meta = checkpoints.restore_latest(trainer) or {"data_position": 0}
    for batch in batches[meta["data_position"]:]:
        trainer.step(batch)
        checkpoints.save(trainer, data_position=trainer.step_count)
    checkpoints.close()
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """An orbax `CheckpointManager` over `directory` keeping the newest `keep` checkpoints,
    saving every `every` steps (and whenever `save(force=True)`). `directory` may be a URL orbax
    writes itself (gs://...). `on_save()`, if given, runs after each save is complete (the save
    then blocks): an evolution with a URL workdir uploads its local checkpoints there."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, every: int = 1,
                 async_save: bool = True, on_save: Callable[[], None] | None = None):
        if keep < 1 or every < 1:
            raise ValueError(f"keep and every must be >= 1, got keep={keep}, every={every}")
        if "://" in str(directory):
            from etils import epath

            directory = epath.Path(str(directory))
        else:
            directory = pathlib.Path(directory).expanduser().absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(directory, options=options)
        self.directory = directory
        self._saved = None
        self._on_save = on_save

    def save(self, trainer, *, data_position: int, force: bool = False, **extra: Any) -> bool:
        """Saves the trainer's state at its step count; returns whether a checkpoint was started
        (not when this step is already saved)."""
        if trainer.step_count in (self.manager.latest_step(), self._saved):
            return False
        meta = {"step": trainer.step_count, "data_position": int(data_position), **extra}
        state = {"params": trainer.params, "opt_state": trainer.opt_state}
        started = self.manager.save(trainer.step_count, force=force, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        if started:
            self._saved = trainer.step_count
            if self._on_save is not None:
                self.manager.wait_until_finished()
                self._on_save()
        return started

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, trainer) -> dict[str, Any] | None:
        """Loads the newest checkpoint into `trainer` (its arrays keep the trainer's shardings)
        and returns its JSON record, or None when there is none yet."""
        step = self.manager.latest_step()
        if step is None:
            return None
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": trainer.params,
                                                                 "opt_state": trainer.opt_state})
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        trainer.params, trainer.opt_state = restored.state["params"], restored.state["opt_state"]
        trainer.step_count = int(restored.meta["step"])
        return dict(restored.meta)

    def wait(self) -> None:
        """Blocks until the last asynchronous save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
