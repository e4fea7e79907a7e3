"""Writing a file so that a reader sees the old contents or the new, never half of them."""

from __future__ import annotations

import os
import pathlib


def write_text_atomic(path: str | pathlib.Path, text: str) -> pathlib.Path:
    """Writes `text` to `path` through a temporary file beside it, renamed over `path` when
    complete: an interrupted writer leaves the old file, and writers in several processes never
    share a temporary name. Creates the parent directory."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
