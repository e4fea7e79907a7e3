"""PPM scoring: the value head over many token sequences in one jitted, bucketed forward."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rstar_jax._checks import positive_int
from rstar_jax.engine.generation import (PrefixStore, TokenCounts, _pow2, extend_prefix,
                                         model_mesh, pack_rows, prompt_bucket)
from rstar_jax.models.cache import ForkCache, KVCache, PackedCache
from rstar_jax.models.transformer import CausalLM


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _values(graphdef, state, ids, lengths):
    return nnx.merge(graphdef, state).value(ids, lengths)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packed:
    """The children of B prefixes packed into R rows of W tokens (`pack_children`): whole
    children, with no padding between them, and row r holds children of prefix owner[r] only.
    ids, offsets (each token's place in its child) and floors (the slot its child starts at;
    padding: W) int32[R, W]; owner int32[R]; rope int32[B], the length longrope picks a
    prefix's factors by."""

    ids: jax.Array
    offsets: jax.Array
    floors: jax.Array
    owner: jax.Array
    rope: jax.Array


def fit_children(children: Sequence[np.ndarray], width: int) -> list[list[tuple[int, int]]]:
    """One prefix's children packed first fit, longest first, into rows of `width` tokens:
    for each row, its (slot, child index) pairs."""
    rows, free = [], []
    for j in sorted(range(len(children)), key=lambda j: -len(children[j])):
        n = len(children[j])
        r = next((r for r, room in enumerate(free) if room >= n), len(rows))
        if r == len(rows):
            rows.append([])
            free.append(width)
        rows[r].append((width - free[r], j))
        free[r] -= n
    return rows


def pack_children(children: Sequence[Sequence[np.ndarray]], fits: Sequence[list],
                  prefix_lengths: Sequence[int], batch: int, width: int,
                  pad_id: int) -> tuple[Packed, list[list[int]]]:
    """Packs children[b] into rows of `width` tokens as fits[b] (`fit_children`) places them: a
    row holds children of one prefix, and a prefix takes as many rows as it needs. Rows are
    padded to a power of two (at least 8), prefixes to `batch`. The rope length is the prefix's
    plus the row width, as for children padded to one length. Returns the packing and, for each
    child, where its last token is in the rows flattened."""
    placed = [(b, row) for b, rows in enumerate(fits) for row in rows]
    size = _pow2(len(placed), 8)
    ids = np.full((size, width), pad_id, np.int32)
    offsets = np.zeros((size, width), np.int32)
    floors = np.full((size, width), width, np.int32)
    owner = np.zeros((size,), np.int32)
    ends = [[0] * len(kids) for kids in children]
    for r, (b, row) in enumerate(placed):
        owner[r] = b
        for slot, j in row:
            n = len(children[b][j])
            ids[r, slot:slot + n], offsets[r, slot:slot + n] = children[b][j], np.arange(n)
            floors[r, slot:slot + n] = slot
            ends[b][j] = r * width + slot + n - 1
    rope = np.full((batch,), 1 + width, np.int32)
    rope[:len(children)] = np.asarray(prefix_lengths, np.int32) + width
    return Packed(ids, offsets, floors, owner, rope), ends


_CALL_ROWS = 8  # a call's fixed cost, in rows of children (measured on a CPU, tiny model)


def row_groups(rows: Sequence[int], max_rows: int, *,
               prefix_cost: float = 0.0) -> list[list[int]]:
    """Splits prefixes, prefix i with children packed into rows[i] rows, into the groups that
    `score_children` runs a call each: at most max_rows rows a group (or one prefix's), padded
    to a power of two of rows (at least 8), and its prefixes to a power of two of them. When a
    group's rows pass a power of two, the prefixes that fit under it (first fit) stay and the
    rest make groups of their own, if the calls then cost less: their padded rows, plus
    `prefix_cost` rows for each padded prefix (what running a prefix costs in rows of
    children: next to nothing through a prefix store, its whole length without one), plus
    `_CALL_ROWS` for each call added."""
    groups, total = [[]], 0
    for i, n in enumerate(rows):
        if groups[-1] and total + n > max_rows:
            groups, total = groups + [[]], 0
        groups[-1].append(i)
        total += n
    return [part for group in groups for part in _cut(group, rows, prefix_cost)[1]]


def _cut(group: list[int], rows: Sequence[int],
         prefix_cost: float) -> tuple[float, list[list[int]]]:
    """(cost, groups) of `group` run whole or cut as `row_groups` says."""
    total = sum(rows[i] for i in group)
    whole = (_pow2(total, 8) + _pow2(len(group)) * prefix_cost, [group])
    under = 1 << max(3, total.bit_length() - 1)
    if total <= under:
        return whole
    head, tail, filled = [], [], 0
    for i in group:
        if filled + rows[i] <= under:
            head.append(i)
            filled += rows[i]
        else:
            tail.append(i)
    if not head or not tail:
        return whole
    cost, parts = _cut(tail, rows, prefix_cost)
    cut = (_pow2(filled, 8) + _pow2(len(head)) * prefix_cost + cost + _CALL_ROWS * len(parts),
           [head] + parts)
    return cut if cut[0] < whole[0] else whole


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _fork_values(graphdef, state, prefix_ids, prefix_lengths, children: Packed):
    """Values of every token of the packed children: the prefixes run once, and each row of
    children reads its prefix's keys and values (`PackedCache`).

    prefix_ids: int32[B, P] right-padded, prefix_lengths: int32[B] >= 1 -> float32[R, W].
    """
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(prefix_ids.shape[1], dtype=jnp.int32), prefix_ids.shape)
    _, prefix = model.hidden_states(prefix_ids, positions,
                                    cache=KVCache.collect(model.config, model.dtype),
                                    rope_lengths=children.rope)
    layouts = [ForkCache.prefix_layout(layer) for layer in prefix.layers]
    return _children_values(model, [k for k, _ in layouts], [v for _, v in layouts],
                            prefix_lengths, children)


def _children_values(model, keys, values, prefix_lengths, children: Packed):
    """The values of every token of the packed children, each row reading its prefix's keys
    [B, K, D, P] and values [B, K, P, D] per layer (`PackedCache`): float32[R, W]."""
    owner = children.owner
    rows, width = children.ids.shape
    own = (rows, model.config.num_key_value_heads, width, model.config.head_dim)
    lengths = prefix_lengths[owner]
    cache = KVCache(tuple(PackedCache(ForkCache(k, v, prefix_lengths, jnp.zeros(own, k.dtype),
                                                jnp.zeros(own, k.dtype)), owner, children.floors)
                          for k, v in zip(keys, values)))
    positions = lengths[:, None] + children.offsets
    hidden, _ = model.hidden_states(children.ids, positions, cache=cache,
                                    rope_lengths=children.rope[owner])
    return model.value_of(hidden)


@functools.partial(jax.jit, static_argnames=("graphdef", "width"), donate_argnames=("store",))
def _stored_fork_values(graphdef, state, store, held, rows, new_ids, starts, new_lengths,
                        children: Packed, *, width):
    """`_fork_values` with each prefix through a prefix store (`extend_prefix`): prefix b is its
    held start (its first starts[b] positions) followed by new_ids[b, :new_lengths[b]], and
    goes to store row rows[b] (-1: none).
    Returns (store, float32[R, W] values); the store is donated."""
    model = nnx.merge(graphdef, state)
    prefix_lengths = starts + new_lengths
    store, keys, values, _ = extend_prefix(model, store, held, rows, new_ids, starts, new_lengths,
                                           children.rope, width)
    return store, _children_values(model, keys, values, prefix_lengths, children)


class ValueScorer:
    """Scores sequences with a model built with a value head (the PPM). Rows are padded to a
    power of two and lengths to `prompt_bucket` sizes, so a search compiles a few shapes.
    At most `max_rows` rows (rounded down to a power of two; children packed into fewer than 8
    rows still take 8) go through the model at once; `score_children` packs the children of its
    prefixes several to a row (`pack_children`), runs one prefix's rows together even if there
    are more, and cuts a call whose rows would be padded far past a power of two
    (`row_groups`). A model whose head has no tanh (`value_tanh=False`, trained as the
    reference code trains) is read as tanh(raw / raw_scale), the reference code's inference
    rule. prefix_rows: rows of a prefix store (see `Engine` and `PrefixStore`): `score_children`
    then runs only the part of each prefix that no prefix the store holds shares."""

    def __init__(self, model: CausalLM, *, pad_id: int = 0, max_rows: int = 64,
                 raw_scale: float = 5.0, prefix_rows: int = 0, prefix_length: int | None = None):
        if not model.has_value_head:
            raise ValueError("ValueScorer needs a model with a value head (CausalLM(..., "
                             "value_head=True))")
        if not 0 <= pad_id < model.config.vocab_size:
            raise ValueError(f"pad_id={pad_id} must be a token id in [0, "
                             f"{model.config.vocab_size})")
        max_rows = positive_int(max_rows, "max_rows")
        if not raw_scale > 0:
            raise ValueError(f"raw_scale must be > 0, got {raw_scale!r}")
        # A head trained without tanh (the reference code's way) is read as tanh(raw / raw_scale),
        # as the reference code does at inference, so the search always sees values in (-1, 1).
        self.raw_scale = None if model.value_tanh else float(raw_scale)
        self.graphdef, self.state = nnx.split(model)
        self.vocab = model.config.vocab_size
        self.pad_id, self.max_rows = pad_id, 1 << (max_rows.bit_length() - 1)
        self.mesh = model_mesh(model)
        self.store = PrefixStore(model, prefix_rows, prefix_length)
        self.counts = TokenCounts()  # prompt and prefill tokens: prefixes; scored: the rest

    def update(self, model: CausalLM) -> None:
        """Use new weights of the same architecture."""
        graphdef, self.state = nnx.split(model)
        if graphdef != self.graphdef:
            raise ValueError("update() needs a model of the same architecture and options; build a "
                             "new ValueScorer")
        self.store.forget()

    def _rows(self, what: str, sequences) -> list[np.ndarray]:
        rows = [np.asarray(s, np.int64).reshape(-1) for s in sequences]
        for i, r in enumerate(rows):
            if r.size == 0:
                raise ValueError(f"{what} {i} is empty; the PPM scores at least one token")
            if r.min() < 0 or r.max() >= self.vocab:
                raise ValueError(f"{what} {i} has ids outside [0, {self.vocab}): min {r.min()}, "
                                 f"max {r.max()}")
        return rows

    def _mesh(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def score_children(self, prefixes: Sequence[Sequence[int]],
                       children: Sequence[Sequence[Sequence[int]]]) -> list[np.ndarray]:
        """The values of prefixes[b] + children[b][j], as `score` gives them, for every b and j,
        computing each prefix once: the K candidate steps of an MCTS expansion share the
        prompt and path before them. Returns one float32 array per prefix. (Under longrope
        scaling, a prefix uses the factors of its length plus the bucket of the call's longest
        child: the row width every group of the call packs into.)"""
        if len(prefixes) != len(children):
            raise ValueError(f"{len(prefixes)} prefixes but {len(children)} lists of children")
        heads = self._rows("prefix", prefixes)
        tails = [self._rows(f"child of prefix {b}:", c) for b, c in enumerate(children)]
        out = [np.zeros((len(c),), np.float32) for c in tails]
        if not any(tails):
            return out
        width = prompt_bucket(max(len(t) for kids in tails for t in kids))
        fits = {b: fit_children(kids, width) for b, kids in enumerate(tails) if kids}
        order = list(fits)
        longest = max(len(heads[b]) for b in order)
        # without the store a prefix runs whole: prompt_bucket(longest) tokens, in rows
        cost = 0.0 if self.store.holds(longest) else prompt_bucket(longest) / width
        for group in row_groups([len(fits[b]) for b in order], self.max_rows, prefix_cost=cost):
            group = [order[i] for i in group]
            batch = _pow2(len(group))
            packed, ends = pack_children([tails[b] for b in group], [fits[b] for b in group],
                                         [len(heads[b]) for b in group], batch, width,
                                         self.pad_id)
            longest = max(len(heads[b]) for b in group)
            self.counts.calls += 1
            self.counts.prompt_tokens += sum(len(heads[b]) for b in group)
            self.counts.scored_tokens += sum(len(t) for b in group for t in tails[b])
            self.counts.scored_slots += packed.ids.size
            stored = self.store.holds(longest)
            if not stored:
                self.counts.prefill_tokens += sum(len(heads[b]) for b in group)
            with self._mesh():
                if not stored:
                    prefix_ids, prefix_lengths = pack_rows([heads[b] for b in group], batch,
                                                           prompt_bucket(longest), self.pad_id)
                    values = _fork_values(self.graphdef, self.state, prefix_ids, prefix_lengths,
                                          packed)
                else:
                    values = self._stored([heads[b] for b in group], batch, packed)
                values = np.asarray(values).reshape(-1)
            for b, at in zip(group, ends):
                out[b][:] = self._squash(values[at])
        return out

    def _stored(self, prefixes, batch, packed: Packed):
        """The values of one group of score_children through the prefix store."""
        def call(arrays, held, plan):
            return _stored_fork_values(self.graphdef, self.state, arrays, held, plan.rows,
                                       plan.ids, plan.starts, plan.lengths, packed,
                                       width=plan.width)

        # the rope factors of a prefix's keys are those its children are read with (longrope)
        plan, values = self.store.run(prefixes, batch, self.pad_id, call, what="prefix",
                                      rope_lengths=packed.rope[:len(prefixes)].tolist())
        self.counts.prefill_tokens += plan.computed
        return values

    def score(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """float32[len(sequences)]: the value of each (non-empty) token sequence."""
        rows = self._rows("sequence", sequences)
        out = np.zeros((len(rows),), np.float32)
        for start in range(0, len(rows), self.max_rows):
            chunk = rows[start:start + self.max_rows]
            self.counts.calls += 1
            self.counts.scored_tokens += sum(len(r) for r in chunk)
            ids, lengths = pack_rows(chunk, _pow2(len(chunk)),
                                     prompt_bucket(max(len(r) for r in chunk)), self.pad_id)
            self.counts.scored_slots += ids.size
            with self._mesh():
                values = _values(self.graphdef, self.state, ids, lengths)
            out[start:start + len(chunk)] = self._squash(np.asarray(values)[:len(chunk)])
        return out

    def _squash(self, values: np.ndarray) -> np.ndarray:
        if self.raw_scale is None:
            return values
        return np.tanh(values / self.raw_scale).astype(np.float32)
