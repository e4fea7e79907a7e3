"""Records: searched trees, and what extraction makes of them for training, on disk.

SFTExample: one policy fine-tuning example (question -> response in the step format).
PPMPair: one process-preference pair (shared prefix, a better next step, a worse one).
OutcomeExample: one whole trajectory and whether its answer is right, for an outcome reward
model (ORM), the baseline the PPM is compared with (RSTAR.md section 5).
Trees are `data.tree.SearchTree`s.

On disk, each kind lives in `array_record` shards of msgpack records (`RecordWriter`,
`read_records`), every record carrying the schema version and its kind; array_record because
it is what TFDS and grain read, with random access, and msgpack because arrays go in as raw
bytes (a tree writes and reads several times faster than as a JSON line). The released
rStar-Math SFT and PPM files import with `import_rstar_sft` / `import_rstar_ppm`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Self

import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from rstar_jax._checks import positive_int
from rstar_jax.data.problem import Problem, problem_id
from rstar_jax.data.tree import SearchTree
from rstar_jax.steps import format as fmt

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """The policy learns `response` after `fmt.policy_prompt(question)`.

    response: the steps as the policy writes them (root to answer, output blocks included),
        exactly the text after the prompt.
    mean_q, min_q: the trajectory's mean and minimum step Q (NaN for imported data).
    """

    problem_id: str
    question: str
    response: str
    mean_q: float = float("nan")
    min_q: float = float("nan")
    source: str = ""  # "search/round2", "rstar_release", ...
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        # The prompt is built in one place (`Tokenizer.prompt_ids`, at tokenization): a
        # question already wrapped in it would train the policy on a prompt it never sees.
        if fmt.is_policy_prompt(self.question):
            raise ValueError(f"SFTExample {self.problem_id!r}: the question already starts with "
                             f"the policy prompt ({self.question[:60]!r}); pass the bare question, "
                             "the prompt is added when tokenized")


@dataclasses.dataclass(frozen=True)
class PPMPair:
    """The PPM learns score(prompt + positive) > score(prompt + negative).

    prompt: the policy prompt and the steps both candidates share, as text.
    positive, negative: the two continuations (one step, or for kind "final" a whole
        trajectory's remaining steps).
    kind: "step" (siblings in a tree), "final" (whole trajectories, paper's final-step pairs)
        or "released" (imported rStar-Math data, whose pos/neg are whole responses).
    """

    problem_id: str
    prompt: str
    positive: str
    negative: str
    q_positive: float = float("nan")
    q_negative: float = float("nan")
    kind: str = "step"
    source: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True)
class OutcomeExample:
    """An outcome reward model learns whether `response`, a whole trajectory after
    `fmt.policy_prompt(question)`, reaches the right answer."""

    problem_id: str
    question: str
    response: str
    correct: bool
    source: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)


# --- encoding ---------------------------------------------------------------------------------
#
# A record on disk is msgpack of [schema, kind, id, payload], payload being msgpack bytes of the
# record's fields; numpy arrays are {"__nd__": dtype, "shape": [...], "data": raw bytes}. The
# envelope can be read without decoding the payload, so finding which problems are written
# (`written_problem_ids`) costs a copy per record, not a decode.

KINDS = ("tree", "sft", "ppm", "orm")
_ND = "__nd__"


def _pack_default(x):
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
        return {_ND: x.dtype.str, "shape": list(x.shape), "data": x.tobytes()}
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot write a {type(x).__name__} in a record: {x!r:.60}")


def _unpack_hook(d):
    if _ND in d:
        return np.frombuffer(d["data"], dtype=np.dtype(d[_ND])).reshape(d["shape"]).copy()
    return d


def tree_to_dict(tree) -> dict[str, Any]:
    """A SearchTree as plain fields (numpy arrays kept); step tokens as one int32 array and
    lengths."""
    d = {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
    d["problem"] = tree.problem.to_json()
    lengths = np.array([len(t) for t in tree.tokens], np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(tree.tokens), np.int32, int(lengths.sum()))
    d["tokens"] = {"flat": flat, "lengths": lengths}
    d["prompt_ids"] = np.asarray(tree.prompt_ids, np.int32)
    return d


def tree_from_dict(d: Mapping[str, Any]) -> SearchTree:
    d = dict(d)
    flat, lengths = d["tokens"]["flat"], d["tokens"]["lengths"]
    ends = np.cumsum(lengths)
    d["tokens"] = [flat[e - n:e].tolist() for e, n in zip(ends, lengths)]
    d["prompt_ids"] = d["prompt_ids"].tolist()
    d["problem"] = Problem.from_json(d["problem"])
    return SearchTree(**d)


def _record_to_dict(kind: str, item) -> dict[str, Any]:
    if kind == "tree":
        return tree_to_dict(item)
    d = {f: getattr(item, f) for f in _FIELDS[kind]}  # not asdict: it deep-copies
    d["metadata"] = dict(item.metadata)
    return d


def _record_from_dict(kind: str, d: Mapping[str, Any]):
    return tree_from_dict(d) if kind == "tree" else _TYPES[kind](**d)


def _record_type(kind: str):
    if kind == "tree":
        return SearchTree
    return _TYPES[kind]


_TYPES = {"sft": SFTExample, "ppm": PPMPair, "orm": OutcomeExample}
_FIELDS = {kind: [f.name for f in dataclasses.fields(t)] for kind, t in _TYPES.items()}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; choose one of {', '.join(KINDS)}")


def encode(kind: str, item) -> bytes:
    """One record's bytes (see the comment above)."""
    _check_kind(kind)
    if not isinstance(item, _record_type(kind)):
        raise TypeError(f"a {kind!r} record is a {_record_type(kind).__name__}, got "
                        f"{type(item).__name__}")
    rid = item.problem.id if kind == "tree" else item.problem_id
    payload = msgpack.packb(_record_to_dict(kind, item), default=_pack_default, use_bin_type=True)
    return msgpack.packb([SCHEMA_VERSION, kind, rid, payload], use_bin_type=True)


def _envelope(data: bytes, kind: str, where: str) -> tuple[str, bytes]:
    schema, got, rid, payload = msgpack.unpackb(data, raw=False)
    if schema > SCHEMA_VERSION:
        raise ValueError(f"{where}: record schema {schema} is newer than this rstar_jax reads "
                         f"({SCHEMA_VERSION}); upgrade rstar_jax")
    if got != kind:
        raise ValueError(f"{where}: a {got!r} record where {kind!r} records were expected; "
                         f"read it with kind={got!r}")
    return rid, payload


def decode(kind: str, data: bytes, where: str = "record"):
    _, payload = _envelope(data, kind, where)
    return _record_from_dict(kind, msgpack.unpackb(payload, object_hook=_unpack_hook, raw=False,
                                                   strict_map_key=False))


# --- shards -----------------------------------------------------------------------------------

SUFFIX = ".arrayrecord"
# Chunks of 64 records, zstd level 1: pairs take 6x less space and write 7x faster than one
# record per chunk, and a random read (grain) decompresses at most 64 records.
_OPTIONS = "group_size:64,zstd:1"
_READ_CHUNK = 256


def shard_paths(directory: str | pathlib.Path, kind: str) -> list[pathlib.Path]:
    """The completed shards of `kind` in `directory`, in name order (prefix, then index)."""
    _check_kind(kind)
    directory = pathlib.Path(directory)
    return sorted(directory.glob(f"{kind}-*{SUFFIX}")) if directory.is_dir() else []


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordWriter:
    """Writes records of one kind into array_record shards of `shard_size` records.

    A shard is written under a hidden temporary name and renamed to
    `{kind}-[{prefix}-]{index:05d}.arrayrecord` once complete (after an fsync), so a crash
    leaves only complete shards under final names; the records of the shard being written are
    lost and must be written again (a resumed search searches those problems again, see
    `written_problem_ids`). A writer in a directory that has shards continues their numbering;
    temporary files left by a crash are deleted when a writer opens. `flush()` completes the
    current shard early; `close()` (or leaving the `with` block) completes the last one.
    """

    def __init__(self, directory: str | pathlib.Path, kind: str, *, shard_size: int = 1000,
                 prefix: str = ""):
        _check_kind(kind)
        shard_size = positive_int(shard_size, "shard_size")
        if prefix and not re.fullmatch(r"[A-Za-z0-9_.]+", prefix):
            raise ValueError(f"prefix must be letters, digits, '_' or '.', got {prefix!r}")
        self.directory, self.kind, self.shard_size = pathlib.Path(directory), kind, shard_size
        self.stem = f"{kind}-{prefix}-" if prefix else f"{kind}-"
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(f".{self.stem}*.tmp"):
            log.warning("removing %s, a shard an interrupted writer did not finish", stale)
            stale.unlink()
        pattern = re.compile(re.escape(self.stem) + r"(\d+)" + re.escape(SUFFIX))
        taken = [int(m.group(1))
                 for p in self.directory.iterdir() if (m := pattern.fullmatch(p.name))]
        self.index = max(taken, default=-1) + 1
        self.written = 0  # records in completed shards
        self._writer, self._count, self._tmp = None, 0, None

    def write(self, item) -> None:
        data = encode(self.kind, item)
        if self._writer is None:
            self._tmp = self.directory / f".{self.stem}{self.index:05d}{SUFFIX}.tmp"
            self._writer = ArrayRecordWriter(str(self._tmp), _OPTIONS)
        self._writer.write(data)
        self._count += 1
        if self._count >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Completes the current shard (if it has records) under its final name."""
        if self._writer is None:
            return
        self._writer.close()
        final = self.directory / f"{self.stem}{self.index:05d}{SUFFIX}"
        _fsync(self._tmp)
        os.replace(self._tmp, final)
        _fsync(self.directory)
        self.written += self._count
        self.index += 1
        self._writer, self._count, self._tmp = None, 0, None

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_records(directory: str | pathlib.Path, kind: str, items: Iterable, **kwargs) -> int:
    """Writes all `items` (RecordWriter's options) and returns how many."""
    with RecordWriter(directory, kind, **kwargs) as writer:
        for item in items:
            writer.write(item)
    return writer.written


def _raw(directory, kind) -> Iterator[tuple[str, bytes]]:
    for path in shard_paths(directory, kind):
        reader = ArrayRecordReader(str(path))
        try:
            n = reader.num_records()
            for start in range(0, n, _READ_CHUNK):
                for i, data in enumerate(reader.read(list(range(start,
                                                                min(start + _READ_CHUNK, n))))):
                    yield f"{path.name}, record {start + i}", data
        finally:
            reader.close()


def read_records(directory: str | pathlib.Path, kind: str) -> Iterator:
    """Streams the records of `kind` (SearchTree, SFTExample or PPMPair), shard by shard."""
    for where, data in _raw(directory, kind):
        yield decode(kind, data, where)


def count_records(directory: str | pathlib.Path, kind: str) -> int:
    total = 0
    for path in shard_paths(directory, kind):
        reader = ArrayRecordReader(str(path))
        total += reader.num_records()
        reader.close()
    return total


def written_problem_ids(directory: str | pathlib.Path, kind: str = "tree") -> set[str]:
    """Ids of the problems with a record of `kind` in a completed shard: a resumed search skips
    them, and searches again only those whose shard a crash interrupted."""
    return {_envelope(data, kind, where)[0] for where, data in _raw(directory, kind)}


def pending(problems: Iterable, directory: str | pathlib.Path) -> list:
    """The problems whose trees are not yet in `directory`: what a resumed search still has to
    do (see `written_problem_ids`)."""
    done = written_problem_ids(directory)
    return [p for p in problems if p.id not in done]


# --- released rStar-Math data -----------------------------------------------------------------


def _released_rows(path: str | pathlib.Path, keys: tuple[str, ...]) -> list[dict]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of objects with keys {list(keys)}, "
                             f"got a {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            # a bad file, not a bad argument: ValueError
            raise ValueError(f"{path}, row {i}: expected an object with keys {list(keys)}, "
                             f"got {type(row).__name__}")
        for key in keys:
            if not isinstance(row.get(key), str):
                what = "is missing"
                if key in row:
                    what = f"is a {type(row[key]).__name__}, not a string"
                raise ValueError(f"{path}, row {i}: key {key!r} {what} (keys: {sorted(row)}); "
                                 f"released rStar-Math rows have {list(keys)}")
    return rows


def import_rstar_sft(path: str | pathlib.Path) -> list[SFTExample]:
    """The released rStar-Math policy SFT data (JSON list or JSONL of {"query", "response"}):
    `response` is the text after the policy prompt, as `SFTExample.response` is."""
    return [SFTExample(problem_id=problem_id(r["query"], "rstar_release"), question=r["query"],
                       response=r["response"], source="rstar_release")
            for r in _released_rows(path, ("query", "response"))]


def import_rstar_ppm(path: str | pathlib.Path) -> list[PPMPair]:
    """The released rStar-Math PPM data (JSON list or JSONL of {"prompt", "pos", "neg"}), kept
    exactly as released (kind "released"): `prompt` is the user turn of the policy prompt, and
    `pos` / `neg` each repeat the assistant turn's opening before a whole response, so the PPM
    scores prompt + pos against prompt + neg."""
    return [PPMPair(problem_id=problem_id(r["prompt"], "rstar_release"), prompt=r["prompt"],
                    positive=r["pos"], negative=r["neg"], kind="released", source="rstar_release")
            for r in _released_rows(path, ("prompt", "pos", "neg"))]
