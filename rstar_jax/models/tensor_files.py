"""Lazy reads and streaming writes of safetensors checkpoints.

Reading memory-maps each file, so a tensor is a numpy view: slicing out one device's shard
touches only those bytes, and a sharded load never holds the whole model in host memory.
Writing lays out the header from shapes alone and then streams one tensor at a time, so a save
never gathers the whole model on the host either. bfloat16 maps to `ml_dtypes.bfloat16`.
(The `safetensors` package reads lazily too, but only in the checkpoint's own layout and writes
from one in-memory dict; both would cost a full copy of the model here.)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np
from tqdm import tqdm

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return header, 8 + size


class TensorFiles:
    """Every tensor of a checkpoint directory by name: `model.safetensors`, or the shards listed in
    `model.safetensors.index.json`, or a single named file."""

    def __init__(self, files: Sequence[Path]):
        self._where: dict[str, tuple[Path, dict, int]] = {}
        self._maps: dict[Path, np.memmap] = {}
        self.metadata: dict[str, str] = {}
        for path in files:
            header, data_start = _read_header(path)
            self.metadata.update(header.pop("__metadata__", None) or {})
            for name, info in header.items():
                self._where[name] = (path, info, data_start)

    @classmethod
    def from_dir(cls, directory: str | Path) -> TensorFiles:
        directory = Path(directory)
        index = directory / INDEX_FILE
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({directory / f for f in weight_map.values()})
        elif (directory / "model.safetensors").exists():
            files = [directory / "model.safetensors"]
        else:
            raise FileNotFoundError(
                f"checkpoint dir {directory} has neither model.safetensors nor {INDEX_FILE}; "
                "expected a Hugging Face model directory with safetensors weights"
            )
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"{INDEX_FILE} in {directory} lists files that do not exist: "
                                    f"{missing}")
        return cls(files)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name][1]["shape"])

    def get(self, name: str) -> np.ndarray:
        """A read-only view of the tensor; nothing is read until it is sliced or copied."""
        path, info, data_start = self._where[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(
                f"tensor {name} in {path} has dtype {info['dtype']}, which this reader does not "
                f"support (supported: {', '.join(_DTYPES)}); convert the checkpoint to bf16 or f32"
            )
        if path not in self._maps:
            self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
        begin, end = info["data_offsets"]
        raw = self._maps[path][data_start + begin:data_start + end]
        return raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def write(path: str | Path, tensors: Iterable[tuple[str, tuple[int, ...], np.dtype,
                                                    Callable[[], np.ndarray]]],
          metadata: dict[str, str] | None = None) -> None:
    """Writes one safetensors file. `tensors` yields (name, shape, dtype, produce); `produce()` is
    called once per tensor, in order, just before its bytes are written."""
    entries = list(tensors)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype, _ in entries:
        dtype = np.dtype(dtype)
        if dtype not in _NAMES:
            raise ValueError(f"cannot write tensor {name}: dtype {dtype} has no safetensors name")
        size = _nbytes(shape, dtype)
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype, produce in tqdm(entries, desc=f"writing {Path(path).name}",
                                                unit="tensor", disable=None, leave=False):
            array = np.ascontiguousarray(produce(), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"tensor {name}: announced shape {tuple(shape)}, produced "
                                 f"{array.shape}")
            f.write(array.tobytes())


def write_sharded(directory: str | Path,
                  tensors: Sequence[tuple[str, tuple[int, ...], np.dtype, Callable]],
                  max_shard_bytes: int = 5 * 2**30) -> list[Path]:
    """Writes `model.safetensors`, or numbered shards plus `model.safetensors.index.json` when the
    tensors exceed `max_shard_bytes` (the layout transformers reads)."""
    directory = Path(directory)
    shards: list[list] = [[]]
    size = 0
    for entry in tensors:
        nbytes = _nbytes(entry[1], entry[2])
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    # Weights of an earlier save would shadow these: loaders pick the single file or the index.
    for stale in [directory / "model.safetensors", directory / INDEX_FILE,
                  *directory.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        total = sum(_nbytes(e[1], e[2]) for e in tensors)
        index = {"metadata": {"total_size": total},
                 "weight_map": {e[0]: name for name, shard in zip(names, shards) for e in shard}}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
    for name, shard in zip(names, shards):
        write(directory / name, shard)
    return [directory / n for n in names]
