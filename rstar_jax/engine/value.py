"""PPM scoring: the value head over many token sequences in one jitted, bucketed forward."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rstar_jax._checks import positive_int
from rstar_jax.engine.generation import (PrefixStore, TokenCounts, _pow2, extend_prefix,
                                         model_mesh, pack_rows, prompt_bucket)
from rstar_jax.models.cache import ForkCache, KVCache
from rstar_jax.models.transformer import CausalLM


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _values(graphdef, state, ids, lengths):
    return nnx.merge(graphdef, state).value(ids, lengths)


@functools.partial(jax.jit, static_argnames=("graphdef", "samples"))
def _fork_values(graphdef, state, prefix_ids, prefix_lengths, ids, lengths, *, samples):
    """Values of F = samples continuations of each prefix: the prefix runs once, and each
    continuation reads its keys and values (`ForkCache`) as a decode step does.

    prefix_ids: int32[B, P] right-padded, prefix_lengths: int32[B] >= 1; ids: int32[B*F, T]
    right-padded, row b*F + f continuing prefix b; lengths: int32[B*F] >= 1 -> float32[B*F].
    """
    model = nnx.merge(graphdef, state)
    rope = prefix_lengths + ids.shape[1]  # longrope: the longest a row of the group may be
    positions = jnp.broadcast_to(jnp.arange(prefix_ids.shape[1], dtype=jnp.int32), prefix_ids.shape)
    _, prefix = model.hidden_states(prefix_ids, positions,
                                    cache=KVCache.collect(model.config, model.dtype),
                                    rope_lengths=rope)
    cache = KVCache.fork(prefix, prefix_lengths, samples, ids.shape[1])
    return _children_values(model, cache, prefix_lengths, rope, ids, lengths, samples)


def _children_values(model, cache, prefix_lengths, rope, ids, lengths, samples):
    """The values of the continuations ids [B*F, T] (lengths [B*F]) read through `cache` (a
    `KVCache` of `ForkCache`s over the B prefixes)."""
    steps = jnp.arange(ids.shape[1], dtype=jnp.int32)
    positions = jnp.repeat(prefix_lengths, samples)[:, None] + steps
    hidden, _ = model.hidden_states(ids, positions, cache=cache,
                                    rope_lengths=jnp.repeat(rope, samples))
    return model.value_of(jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0])


@functools.partial(jax.jit, static_argnames=("graphdef", "samples", "width"),
                   donate_argnames=("store",))
def _stored_fork_values(graphdef, state, store, held, rows, new_ids, starts, new_lengths, ids,
                        lengths, *, samples, width):
    """`_fork_values` with each prefix through a prefix store (`extend_prefix`): prefix b is its
    held start (its first starts[b] positions) followed by new_ids[b, :new_lengths[b]], and
    goes to store row rows[b] (-1: none).
    Returns (store, float32[B*F] values); the store is donated."""
    model = nnx.merge(graphdef, state)
    prefix_lengths = starts + new_lengths
    rope = prefix_lengths + ids.shape[1]
    store, keys, values, _ = extend_prefix(model, store, held, rows, new_ids, starts, new_lengths,
                                           rope, width)
    own = (ids.shape[0], model.config.num_key_value_heads, ids.shape[1], model.config.head_dim)
    cache = KVCache(tuple(ForkCache(k, v, prefix_lengths, jnp.zeros(own, k.dtype),
                                    jnp.zeros(own, k.dtype))
                          for k, v in zip(keys, values)))
    return store, _children_values(model, cache, prefix_lengths, rope, ids, lengths, samples)


class ValueScorer:
    """Scores sequences with a model built with a value head (the PPM). Rows are padded to a
    power of two and lengths to `prompt_bucket` sizes, so a search compiles a few shapes.
    At most `max_rows` rows (rounded down to a power of two) go through the model at once;
    `score_children` runs one prefix's children together even if there are more. A model
    whose head has no tanh (`value_tanh=False`, trained as the reference code trains) is read
    as tanh(raw / raw_scale), the reference code's inference rule. prefix_rows: rows of a prefix
    store (see `Engine` and `PrefixStore`): `score_children` then runs only the part of each
    prefix that no prefix the store holds shares."""

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
        scaling, each group uses the factors of its longest row.)"""
        if len(prefixes) != len(children):
            raise ValueError(f"{len(prefixes)} prefixes but {len(children)} lists of children")
        heads = self._rows("prefix", prefixes)
        tails = [self._rows(f"child of prefix {b}:", c) for b, c in enumerate(children)]
        out = [np.zeros((len(c),), np.float32) for c in tails]
        samples = _pow2(max([len(c) for c in tails] + [1]))
        step = max(1, self.max_rows // samples)
        for start in range(0, len(heads), step):
            group = [b for b in range(start, min(start + step, len(heads))) if tails[b]]
            if not group:
                continue
            batch = _pow2(len(group))
            width = prompt_bucket(max(len(heads[b]) for b in group))
            length = prompt_bucket(max(len(t) for b in group for t in tails[b]))
            # Row i * samples + j continues prefix i; missing children are padding rows.
            children = [row for b in group
                        for row in tails[b] + [[self.pad_id]] * (samples - len(tails[b]))]
            ids, lengths = pack_rows(children, batch * samples, length, self.pad_id)
            self.counts.calls += 1
            self.counts.prompt_tokens += sum(len(heads[b]) for b in group)
            self.counts.scored_tokens += sum(len(t) for b in group for t in tails[b])
            stored = self.store.holds(max(len(heads[b]) for b in group))
            if not stored:
                self.counts.prefill_tokens += sum(len(heads[b]) for b in group)
            with self._mesh():
                if not stored:
                    prefix_ids, prefix_lengths = pack_rows([heads[b] for b in group], batch, width,
                                                           self.pad_id)
                    values = _fork_values(self.graphdef, self.state, prefix_ids, prefix_lengths,
                                          ids, lengths, samples=samples)
                else:
                    values = self._stored([heads[b] for b in group], batch, ids, lengths,
                                          samples)
                values = np.asarray(values)
            for i, b in enumerate(group):
                out[b][:] = self._squash(values[i * samples:i * samples + len(tails[b])])
        return out

    def _stored(self, prefixes, batch, ids, lengths, samples):
        """The values of one group of score_children through the prefix store."""
        def call(arrays, held, plan):
            return _stored_fork_values(self.graphdef, self.state, arrays, held, plan.rows,
                                       plan.ids, plan.starts, plan.lengths, ids, lengths,
                                       samples=samples, width=plan.width)

        # the rope factors of a prefix's keys are those of its group's longest row (longrope)
        plan, values = self.store.run(prefixes, batch, self.pad_id, call, what="prefix",
                                      rope_lengths=[len(p) + ids.shape[1] for p in prefixes])
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
            with self._mesh():
                values = _values(self.graphdef, self.state, ids, lengths)
            out[start:start + len(chunk)] = self._squash(np.asarray(values)[:len(chunk)])
        return out

    def _squash(self, values: np.ndarray) -> np.ndarray:
        if self.raw_scale is None:
            return values
        return np.tanh(values / self.raw_scale).astype(np.float32)
