"""A run's work directory: a local directory, or a URL (gs://...) worked on in a local copy
(`rstar_jax.workdir.Mirror`); the stage summaries that say what is done; the files the
processes of a job share.

Process 0 decides whether a stage is done (`processes.agreed`) and writes its summary; every
process runs a stage that is not, and meets the others at a barrier after it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from rstar_jax import processes
from rstar_jax._files import write_text_atomic
from rstar_jax.evolve.config import ConfigError
from rstar_jax.train import Checkpoints
from rstar_jax.workdir import Mirror, is_url


class Summary(Protocol):
    """A stage's summary: a frozen dataclass with `seconds`, read and written as JSON."""

    seconds: float

    def to_json(self) -> dict: ...

    @classmethod
    def from_json(cls, d: dict) -> Summary: ...


S = TypeVar("S", bound=Summary)

# Pulled when a step needs them (`RunDir.stage`, `Loader.model`), not when the run opens.
_PULLED_LATER = frozenset({"model", "ckpt", "best", "tb"})


class RunDir:
    """The work directory `workdir`; with a URL, its local copy in `cache_dir` (default
    `workdir.default_cache`). Paths are local; `push` and `pull` sync them with the URL."""

    def __init__(self, workdir: str | pathlib.Path, cache_dir: str | None = None):
        self.mirror = None
        if is_url(workdir):
            try:
                self.mirror = Mirror(str(workdir), cache_dir)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            self.dir = self.mirror.local
            self.mirror.pull(skip=lambda rel: not _PULLED_LATER.isdisjoint(rel.split("/")[:-1]))
        else:
            self.dir = pathlib.Path(workdir).expanduser().absolute()

    def keep_config(self, fingerprint: dict, *, allow_change: bool) -> None:
        """Writes config.json (process 0), refusing a directory that holds a run of another
        config unless `allow_change`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self.dir / "config.json"
        if saved.exists():
            old = json.loads(saved.read_text())
            changed = sorted(k for k in set(old) | set(fingerprint)
                             if old.get(k) != fingerprint.get(k))
            if changed and not allow_change:
                raise ConfigError(
                    f"{self.dir} holds a run with another config (fields {', '.join(changed)} "
                    "differ); use a new --workdir, or pass --config.allow_config_change=True to "
                    "continue with the new values")
        if processes.is_first():
            write_text_atomic(saved, json.dumps(fingerprint, indent=2) + "\n")
            self.push(saved)

    # --- syncing with a URL ---

    def push(self, path: pathlib.Path, *, delete: bool = False) -> None:
        """Uploads what changed under `path` (inside the workdir) when the workdir is a URL."""
        if self.mirror is not None:
            self.mirror.push(pathlib.Path(path).relative_to(self.dir).as_posix(), delete=delete)

    def pull(self, path: pathlib.Path) -> None:
        """Downloads what the URL holds under `path` (inside the workdir) and the copy lacks."""
        if self.mirror is not None:
            self.mirror.pull(pathlib.Path(path).relative_to(self.dir).as_posix())

    def rel(self, path: str | pathlib.Path | None) -> str | None:
        """A path as a summary keeps it: relative when inside the workdir, so the workdir can
        move."""
        if path is None or not pathlib.Path(path).is_relative_to(self.dir):
            return None if path is None else str(path)
        return pathlib.Path(path).relative_to(self.dir).as_posix()

    # --- stages ---

    def stage(self, directory: pathlib.Path, name: str, kind: type[S],
              fn: Callable[[pathlib.Path], S]) -> S:
        """The summary of stage `name` (`directory/name.json`, a `kind`), running
        `fn(directory)` first if it is not done."""
        done = directory / f"{name}.json"
        key = f"{self.rel(directory)} {name}"  # (the same on hosts with other local paths)
        if processes.agreed(f"{key} done", done.exists):
            self.pull(done)
            return kind.from_json(json.loads(done.read_text()))
        # What an interrupted try (perhaps on another machine) left: records, checkpoints.
        self.pull(directory)
        directory.mkdir(parents=True, exist_ok=True)
        begin = time.time()
        print(f"{directory.name}: {name}", flush=True)
        summary = dataclasses.replace(fn(directory), seconds=round(time.time() - begin, 1))
        if processes.is_first():
            write_text_atomic(done, json.dumps(summary.to_json(), indent=2) + "\n")
        self.push(directory)  # every process: what it wrote
        processes.barrier(key)
        if not processes.is_first():
            self.pull(done)  # (a URL workdir: what process 0 wrote, later steps read)
        return summary

    def summary(self, directory: pathlib.Path, name: str, kind: type[S]) -> S | None:
        """The summary of a finished stage `name` in `directory`, or None (not finished)."""
        done = directory / f"{name}.json"
        return kind.from_json(json.loads(done.read_text())) if done.exists() else None

    # --- files the processes share ---

    def gather(self, directory: pathlib.Path) -> Callable[[str, list], list[list]]:
        """`evaluate.Gather` through files: each process writes its part of `name` under
        `directory`, and after a barrier reads every process's."""

        def gather(name: str, mine: list) -> list[list]:
            index, count = processes.index_and_count()
            stem = name.replace(" ", "_")
            write_text_atomic(directory / f"{stem}.{index}.json", json.dumps(mine) + "\n")
            self.push(directory)
            if self.mirror is not None:  # copies an earlier try left would pass for this try's
                for i in set(range(count)) - {index}:
                    (directory / f"{stem}.{i}.json").unlink(missing_ok=True)
            processes.barrier(f"{self.rel(directory)} {name}")
            self.pull(directory)
            return [json.loads((directory / f"{stem}.{i}.json").read_text()) for i in range(count)]

        return gather

    def checkpoints(self, directory: pathlib.Path, **kwargs) -> Checkpoints:
        """Orbax checkpoints under `directory`; with a URL workdir each save is uploaded as it
        completes (on several hosts orbax writes to the URL itself, as its processes must share
        one directory)."""
        if self.mirror is None:
            return Checkpoints(directory, **kwargs)
        if processes.index_and_count()[1] > 1:
            url = f"{self.mirror.url}/{directory.relative_to(self.dir).as_posix()}"
            return Checkpoints(url, **kwargs)
        return Checkpoints(directory, on_save=lambda: self.push(directory, delete=True), **kwargs)
