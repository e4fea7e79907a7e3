"""Training batches from records: SFT examples packed into fixed rows, PPM pairs as score rows.

SFT: each example is the policy prompt's ids (`Tokenizer.prompt_ids`, with BOS if the model uses
one) followed by the response as it continues the prompt (`Tokenizer.continuation_ids`, as the
search wrote it) and EOS (RSTAR.md section 5). Examples are packed in order into rows of
`length` tokens (next fit): every example is a segment with its own positions from 0, attention
stays inside segments, and only response tokens are targets. An example longer than a row is
left out and counted: training on a cut response would teach the policy to stop mid-step.

PPM: a pair becomes two rows, prompt + positive and prompt + negative (even and odd rows). The
pair's prompt is text (the policy prompt and the steps both rows share, as extraction or the
released data wrote it), encoded as the start of a sequence, with BOS if the model uses one.
Rows are right padded to the batch's bucketed length; the PPM scores each row's last token. A
pair's weight is 1 / (|pos| |neg|) of its group, the pairs of one kind sharing a problem and a
prompt, so every step counts once whatever the number of pairs it gave (a root step's pairs and
the final-answer pairs share the bare prompt, but are different choices). A batch short of
pairs is filled with padding pairs of weight 0, never with repeated pairs, which would count
twice.

ORM: an outcome example is one row, the policy prompt and the whole trajectory, labelled +1
(right answer) or -1; rows are right padded like the PPM's, and padding rows weigh 0.

`epochs` gives the batches of a training run: every example once an epoch, in an order that
depends only on the seed and the epoch, so a resumed run continues exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from rstar_jax.data.records import OutcomeExample, PPMPair, SFTExample

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SFTBatch:
    """int32[B, T] inputs, targets (the next token), positions and segment ids (0 = padding),
    and float32[B, T] weights (1 where the target is a response token)."""

    inputs: np.ndarray
    targets: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    weights: np.ndarray

    @property
    def tokens(self) -> int:
        return int((self.segment_ids > 0).sum())


@dataclasses.dataclass
class PPMBatch:
    """int32[2P, T] ids (row 2i: prompt + positive of pair i, row 2i + 1: + negative), int32[2P]
    lengths, float32[P] weights (0 for padding pairs)."""

    ids: np.ndarray
    lengths: np.ndarray
    weights: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())


@dataclasses.dataclass
class OutcomeBatch:
    """int32[B, T] ids (prompt + trajectory), int32[B] lengths, float32[B] labels (+1 right, -1
    wrong) and weights (0 for padding rows)."""

    ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.lengths[self.weights > 0].sum())


@dataclasses.dataclass
class Skipped:
    too_long: int = 0


def tokenize_sft(examples: Iterable[SFTExample], tokenizer) -> Iterator[tuple[list[int], int]]:
    """(prompt + response ids + EOS, prompt length) of each example; EOS (when the tokenizer has
    one) is a target too, so the policy learns to stop after its answer."""
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    for ex in examples:
        prompt = tokenizer.prompt_ids(ex.question)
        yield prompt + tokenizer.continuation_ids(ex.response) + eos, len(prompt)


def pack_sft(sequences: Iterable[tuple[Sequence[int], int]], rows: int, length: int,
             pad_id: int = 0, skipped: Skipped | None = None) -> Iterator[SFTBatch]:
    """Batches of `rows` x `length` packed from (ids, prompt length) pairs; the last batch is
    padded with empty rows."""
    if rows < 1 or length < 2:
        raise ValueError(f"rows must be >= 1 and length >= 2, got rows={rows}, length={length}")
    skipped = Skipped() if skipped is None else skipped

    def empty():
        out = {k: np.zeros((rows, length), np.int32)
               for k in ("targets", "positions", "segment_ids")}
        return out | {"inputs": np.full((rows, length), pad_id, np.int32),
                      "weights": np.zeros((rows, length), np.float32)}

    batch, row, col, segment = empty(), 0, 0, 0
    for ids, prompt_len in sequences:
        n = len(ids) - 1  # inputs ids[:-1] predict ids[1:]
        if n > length:
            skipped.too_long += 1
            continue
        if n < 1 or prompt_len >= len(ids):
            continue  # no response token to learn
        if col + n > length:
            row, col, segment = row + 1, 0, 0
            if row == rows:
                yield SFTBatch(**batch)
                batch, row = empty(), 0
        ids = np.asarray(ids, np.int32)
        segment += 1
        s = slice(col, col + n)
        batch["inputs"][row, s] = ids[:-1]
        batch["targets"][row, s] = ids[1:]
        batch["positions"][row, s] = np.arange(n)
        batch["segment_ids"][row, s] = segment
        batch["weights"][row, s] = np.arange(1, n + 1) >= prompt_len  # target i is token i + 1
        col += n
    if row or col:
        yield SFTBatch(**batch)


def epochs(items: Sequence, seed: int, batches: Callable[[list], Iterable]) -> Iterator:
    """`batches(order)` of every epoch, without end: epoch e's order is `items` shuffled by
    Random(seed * 1000 + e)."""
    for epoch in itertools.count():
        order = list(items)
        random.Random(seed * 1000 + epoch).shuffle(order)
        yield from batches(order)


def _group(p: PPMPair) -> tuple[str, str, str]:
    return p.problem_id, p.kind, p.prompt


def pair_weights(pairs: Sequence[PPMPair]) -> np.ndarray:
    """1 / (|pos| |neg|) per pair: |pos| and |neg| are the distinct positive and negative texts
    of the pairs of its kind sharing its problem and prompt."""
    pos, neg = collections.defaultdict(set), collections.defaultdict(set)
    for p in pairs:
        pos[_group(p)].add(p.positive)
        neg[_group(p)].add(p.negative)
    return np.array([1.0 / (len(pos[k]) * len(neg[k])) for k in map(_group, pairs)], np.float32)


def _bucket(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def ppm_batches(pairs: Sequence[PPMPair], tokenizer, batch_pairs: int, max_length: int,
                pad_id: int = 0, skipped: Skipped | None = None) -> Iterator[PPMBatch]:
    """Batches of `batch_pairs` pairs in order, each padded to the next multiple of 64 of its
    longest row (at most max_length); pairs with a row longer than max_length are left out."""
    skipped = Skipped() if skipped is None else skipped
    weights = pair_weights(pairs)
    rows, row_weights = [], []
    for pair, w in zip(pairs, weights):
        head = tokenizer.encode(pair.prompt, add_bos=tokenizer.add_bos)
        a = head + tokenizer.continuation_ids(pair.positive)
        b = head + tokenizer.continuation_ids(pair.negative)
        if max(len(a), len(b)) > max_length:
            skipped.too_long += 1
            continue
        rows.append((a, b))
        row_weights.append(w)
    for start in range(0, len(rows), batch_pairs):
        chunk, w = rows[start:start + batch_pairs], row_weights[start:start + batch_pairs]
        width = min(max_length, _bucket(max(len(r) for pair in chunk for r in pair)))
        ids = np.full((2 * batch_pairs, width), pad_id, np.int32)
        lengths = np.ones((2 * batch_pairs,), np.int32)
        for i, (a, b) in enumerate(chunk):
            ids[2 * i, :len(a)], ids[2 * i + 1, :len(b)] = a, b
            lengths[2 * i], lengths[2 * i + 1] = len(a), len(b)
        weights_out = np.zeros((batch_pairs,), np.float32)
        weights_out[:len(chunk)] = w
        yield PPMBatch(ids=ids, lengths=lengths, weights=weights_out)
    if skipped.too_long:
        log.warning("%d PPM pairs longer than max_length=%d were left out", skipped.too_long,
                    max_length)


def outcome_batches(examples: Sequence[OutcomeExample], tokenizer, batch_rows: int, max_length: int,
                    pad_id: int = 0, skipped: Skipped | None = None) -> Iterator[OutcomeBatch]:
    """Batches of `batch_rows` outcome examples in order, each padded to the next multiple of 64
    of its longest row (at most max_length); longer examples are left out."""
    skipped = Skipped() if skipped is None else skipped
    rows = []
    for ex in examples:
        ids = tokenizer.prompt_ids(ex.question) + tokenizer.continuation_ids(ex.response)
        if len(ids) > max_length:
            skipped.too_long += 1
            continue
        rows.append((ids, 1.0 if ex.correct else -1.0))
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start:start + batch_rows]
        ids = np.full((batch_rows, min(max_length, _bucket(max(len(r) for r, _ in chunk)))), pad_id,
                      np.int32)
        lengths = np.ones((batch_rows,), np.int32)
        labels = np.zeros((batch_rows,), np.float32)
        weights = np.zeros((batch_rows,), np.float32)
        for i, (row, label) in enumerate(chunk):
            ids[i, :len(row)], lengths[i], labels[i], weights[i] = row, len(row), label, 1.0
        yield OutcomeBatch(ids=ids, lengths=lengths, labels=labels, weights=weights)
    if skipped.too_long:
        log.warning("%d outcome examples longer than max_length=%d were left out", skipped.too_long,
                    max_length)
