"""Work directories at a URL (`gs://bucket/run`, or any fsspec URL), kept as a local copy.

A run reads and writes plain local files (record shards, orbax checkpoints, safetensors, JSON),
so a remote work directory is mirrored: `Mirror.pull` brings the remote files a step needs into
a local cache directory and `Mirror.push` uploads what a step wrote. The evolution pushes at
the points a killed run resumes from (each search chunk, each checkpoint, each finished stage),
so a run resumes on a new machine, with an empty cache, from the remote alone.

    mirror = Mirror("gs://bucket/run", cache="/tmp/run")
    mirror.pull(skip=lambda rel: "/ckpt/" in rel)   # what is there, except checkpoints
    ...write /tmp/run/round_1/search.json...
    mirror.push("round_1")                          # what changed under round_1

`gs://` needs `gcsfs` (`pip install 'rstar_jax[gcs]'`); `memory://` (fsspec's in-process
filesystem) is what the tests mirror to.
"""

from __future__ import annotations

import os
import pathlib
import posixpath
import re
from collections.abc import Callable


def is_url(path: str | os.PathLike) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", str(path)) is not None


def default_cache(url: str) -> pathlib.Path:
    """`~/.cache/rstar_jax/workdirs/<scheme>/<bucket>/<path>`: the same on every machine."""
    scheme, rest = str(url).split("://", 1)
    parts = [p for p in posixpath.normpath("/" + rest).split("/") if p]  # never outside the cache
    base = pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "rstar_jax" / "workdirs" / scheme / pathlib.Path(*parts)


class Mirror:
    """The remote directory `url` and its local copy `cache`; the remote is the truth for what
    it holds."""

    def __init__(self, url: str, cache: str | os.PathLike | None = None):
        import fsspec

        self.url = str(url).rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:
            extra = ""
            if self.url.startswith("gs://"):
                extra = " (`pip install 'rstar_jax[gcs]'`, i.e. gcsfs)"
            raise ValueError(f"--workdir={self.url}: no filesystem for this URL{extra}: {e}") from e
        self.root = self.root.rstrip("/")
        if cache:
            self.local = pathlib.Path(cache).expanduser().absolute()
        else:
            self.local = default_cache(self.url)
        self.local.mkdir(parents=True, exist_ok=True)
        # rel path -> local (size, mtime_ns) when last synced
        self._synced: dict[str, tuple[int, int]] = {}

    def _remote(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def _remote_files(self, rel: str) -> dict[str, int]:
        """rel path -> size of the remote files under `rel` (a file or a directory)."""
        path = self._remote(rel)
        if not self.fs.exists(path):
            return {}
        if self.fs.isdir(path):
            found = self.fs.find(path, detail=True)
        else:
            found = {path: self.fs.info(path)}
        root = self.fs._strip_protocol(self.root)
        return {posixpath.relpath(self.fs._strip_protocol(p), root): int(info["size"])
                for p, info in found.items()
                if info.get("type", "file") == "file"}

    def _stat(self, rel: str) -> tuple[int, int]:
        s = (self.local / rel).stat()
        return s.st_size, s.st_mtime_ns

    def pull(self, rel: str = "", *, skip: Callable[[str], bool] | None = None) -> int:
        """Downloads the remote files under `rel` that the cache lacks (or holds at another size),
        except those `skip(rel_path)` names; returns how many it downloaded."""
        n = 0
        for path, size in sorted(self._remote_files(rel).items()):
            if skip is not None and skip(path):
                continue
            local = self.local / path
            if not (local.is_file() and local.stat().st_size == size):
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(local.name + ".pulling")
                self.fs.get_file(self._remote(path), str(tmp))
                os.replace(tmp, local)
                n += 1
            self._synced[path] = self._stat(path)
        return n

    def push(self, rel: str = "", *, delete: bool = False) -> int:
        """Uploads the local files under `rel` (a file or a directory) written or changed since they
        were last pulled or pushed, and with `delete` removes remote files under `rel` the cache no
        longer holds (old checkpoints); returns how many files it uploaded."""
        base = self.local / rel
        if base.is_file():
            files = [base]
        elif base.is_dir():
            files = sorted(p for p in base.rglob("*") if p.is_file())
        else:
            return 0
        n = 0
        for file in files:
            path = file.relative_to(self.local).as_posix()
            if _partial(path) or self._synced.get(path) == self._stat(path):
                continue
            target = self._remote(path)
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            self.fs.put_file(str(file), target)
            self._synced[path] = self._stat(path)
            n += 1
        if delete:
            for path in self._remote_files(rel):
                if not (self.local / path).is_file() and not _partial(path):
                    self.fs.rm_file(self._remote(path))
                    self._synced.pop(path, None)
        return n


def _partial(path: str) -> bool:
    """A file still being written: ours (.tmp, .pulling) or an orbax save in flight."""
    return path.endswith((".tmp", ".pulling")) or "orbax-checkpoint-tmp" in path
