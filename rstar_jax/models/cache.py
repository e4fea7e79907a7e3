"""KV caches: where each layer keeps its keys and values, and what a new token may read.

Attention hands a layer's new queries, keys and values to that layer's cache, which stores the
keys and values and computes the attention. A new layout therefore needs no change to the model.

- `SlotCache`: one row per sequence; slot s holds position s. A ragged batch is right-padded:
  causality by position hides a row's padding until the row overwrites it.
- `Collect`: prefill. Causal attention over the new tokens, which it returns as a `SlotCache`.
- `ForkCache`: F samples continue each of B prefixes (the expansion of an MCTS node). A prefix's
  keys and values are stored once, `[B, K, P, D]`, and read by all its samples in one matmul;
  each sample writes its own, `[B*F, K, T, D]`, where slot t holds position `prefix_length + t`.
  Duplicating the prefix instead would cost F times its memory and F times its reads per step.
  `LaneCache` decodes lanes that keep their own keys and values and read their prefix through
  a grid of cells; `PackedCache` packs several continuations into one row.

`KVCache` holds one layer cache per decoder layer. Shapes: B rows (prefixes), S slots, K KV
heads, D head dim, H query heads (a multiple of K), T new tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from rstar_jax.models.attention import MASKED, attend, cache_mask
from rstar_jax.models.config import ModelConfig
from rstar_jax.models.sharding import ShardingRules, constrain

_CACHE_AXES = ("act_batch", None, "act_kv_heads", None)  # [B, S, K, D]
_HEADS_FIRST_AXES = ("act_batch", "act_kv_heads", None, None)  # [B, K, S, D]


def _store(buffer: jax.Array, slots: jax.Array, new: jax.Array, rules: ShardingRules,
           heads_first: bool = False) -> jax.Array:
    """Writes new[r, t] ([R, Tn, K, D]) at row r, slot slots[r, t] of buffer ([R, S, K, D], or
    [R, K, S, D] when heads_first); slots past the end are dropped."""
    rows = jnp.arange(buffer.shape[0])[:, None]
    index = (rows, slice(None), slots) if heads_first else (rows, slots)
    out = buffer.at[index].set(new.astype(buffer.dtype), mode="drop")
    return constrain(out, _HEADS_FIRST_AXES if heads_first else _CACHE_AXES, rules)


def _by_kv_head(q: jax.Array, kv_heads: int) -> jax.Array:
    """Scaled queries [R, Tn, H, D] as the query rows of each KV head, [R, K, Tn*G, D] (row
    t*G + g: new token t, query head g of the KV head's group)."""
    rows, new, heads, d = q.shape
    q = (q * d**-0.5).reshape(rows, new, kv_heads, heads // kv_heads, d)
    return q.transpose(0, 2, 1, 3, 4).reshape(rows, kv_heads, -1, d)


def _by_head(out: jax.Array, new: int) -> jax.Array:
    """The inverse of `_by_kv_head`'s layout: [R, K, Tn*G, D] -> [R, Tn, H, D]."""
    rows, kv_heads, m, d = out.shape
    out = out.reshape(rows, kv_heads, new, m // new, d).transpose(0, 2, 1, 3, 4)
    return out.reshape(rows, new, -1, d)


def _own_scores(q_rows, keys, slots, floors, window):
    """Masked scores [R, K, M, T] of the query rows `_by_kv_head` gives against each row's own
    keys [R, K, T, D]: new token t of row r sits at slot slots[r, t] and reads its row's slots
    from floors[r, t] (None: 0) up to its own, within the window."""
    groups, length = q_rows.shape[2] // slots.shape[1], keys.shape[2]
    scores = jax.lax.dot_general(q_rows, keys.astype(q_rows.dtype),
                                 (((3,), (3,)), ((0, 1), (0, 1))),
                                 preferred_element_type=jnp.float32)
    own_slot = jnp.repeat(slots, groups, axis=1)[:, None, :, None]  # [R, 1, M, 1]
    ok = jnp.arange(length) <= own_slot
    if floors is not None:
        ok &= jnp.arange(length) >= jnp.repeat(floors, groups, axis=1)[:, None, :, None]
    if window is not None:
        ok &= own_slot - jnp.arange(length) < window
    return jnp.where(ok, scores, MASKED)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SlotCache:
    keys: jax.Array  # [B, S, K, D]
    values: jax.Array  # [B, S, K, D]

    def attend(self, q, k, v, positions, *, window, implementation, rules):
        """q: [B, T, H, D]; k, v: [B, T, K, D]; positions: int32[B, T] -> ([B, T, H, D], cache)."""
        keys = _store(self.keys, positions, k, rules)
        values = _store(self.values, positions, v, rules)
        mask = cache_mask(positions, keys.shape[1], window)
        out = attend(q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask,
                     implementation=implementation)
        return out, SlotCache(keys, values)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Collect:
    """Prefill from position 0: causal attention over the new tokens, kept as a SlotCache."""

    dtype: Any = dataclasses.field(metadata={"static": True})

    def attend(self, q, k, v, positions, *, window, implementation, rules):
        del positions  # 0..T-1 by contract
        out = attend(q, k, v, causal=True, window=window, implementation=implementation)
        keys = constrain(k.astype(self.dtype), _CACHE_AXES, rules)
        values = constrain(v.astype(self.dtype), _CACHE_AXES, rules)
        return out, SlotCache(keys, values)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ForkCache:
    """Both attention products are plain batched matmuls over (row, KV head), which XLA runs
    several times faster on CPU than contractions that need a transpose at every decode step:
    the prefix keys are stored [B, K, D, P] (queries [M, D] times keys [D, P]), values and the
    samples' own keys and values heads first. The queries of one KV head (F samples x Tn new
    tokens x G query heads) are the M rows of one product. The softmax spans the prefix and the
    own keys without joining them: a shared maximum and sum per query row."""

    prefix_keys: jax.Array  # [B, K, D, P], read only
    prefix_values: jax.Array  # [B, K, P, D], read only
    prefix_lengths: jax.Array  # int32[B]: real tokens of each prefix (the rest is padding)
    keys: jax.Array  # [B*F, K, T, D]: row b*F + f is sample f of prefix b
    values: jax.Array  # [B*F, K, T, D]

    @staticmethod
    def prefix_layout(prefix: SlotCache) -> tuple[jax.Array, jax.Array]:
        """A prefill's SlotCache [B, P, K, D] as prefix keys [B, K, D, P] and values
        [B, K, P, D]."""
        return prefix.keys.transpose(0, 2, 3, 1), prefix.values.transpose(0, 2, 1, 3)

    @classmethod
    def from_prefix(cls, prefix: SlotCache, prefix_lengths: jax.Array, keys: jax.Array,
                    values: jax.Array) -> ForkCache:
        """prefix: a prefill's SlotCache [B, P, K, D]; keys, values: [B*F, K, T, D] buffers for
        the samples' own tokens (their contents are never read before being written)."""
        return cls(*cls.prefix_layout(prefix), prefix_lengths.astype(jnp.int32), keys, values)

    def attend(self, q, k, v, positions, *, window, implementation, rules):
        """q: [B*F, Tn, H, D]; k, v: [B*F, Tn, K, D]; positions: int32[B*F, Tn], each at least
        its prefix's length. Returns ([B*F, Tn, H, D], cache)."""
        del implementation  # one formulation
        f = q.shape[0] // self.prefix_keys.shape[0]
        slots = positions - jnp.repeat(self.prefix_lengths, f)[:, None]  # [B*F, Tn]
        return self.attend_slots(q, k, v, positions, slots, None, window=window, rules=rules)

    def attend_slots(self, q, k, v, positions, slots, floors, *, window, rules):
        """`attend` with the own slots given: new token t of row r goes to slot slots[r, t] and
        reads the row's own slots from floors[r, t] (None: 0) up to its own."""
        b, kv_heads, d, p = self.prefix_keys.shape
        rows, new, dtype = q.shape[0], q.shape[1], q.dtype
        f, m = rows // b, new * (q.shape[2] // kv_heads)  # m: query rows of a sample, KV head
        keys = _store(self.keys, slots, k, rules, heads_first=True)
        values = _store(self.values, slots, v, rules, heads_first=True)

        def by_prefix(x):  # [B*F, K, M, ...] -> [B, K, F*M, ...]
            x = x.reshape(b, f, *x.shape[1:])
            return jnp.swapaxes(x, 1, 2).reshape(b, kv_heads, f * m, *x.shape[4:])

        def by_row(x):  # the inverse
            x = x.reshape(b, kv_heads, f, m, *x.shape[3:])
            return jnp.swapaxes(x, 1, 2).reshape(rows, kv_heads, m, *x.shape[4:])

        q_own = _by_kv_head(q, kv_heads)
        batch = ((0, 1), (0, 1))
        prefix_scores = jax.lax.dot_general(by_prefix(q_own), self.prefix_keys.astype(dtype),
                                            (((3,), (2,)), batch),
                                            preferred_element_type=jnp.float32)  # [B, K, F*M, P]
        own_scores = _own_scores(q_own, keys, slots, floors, window)  # [B*F, K, M, T]
        prefix_ok = jnp.arange(p) < self.prefix_lengths[:, None, None, None]
        if window is not None:
            query_pos = jnp.repeat(positions, m // new, axis=1)[:, None, :, None]
            pos = by_prefix(jnp.broadcast_to(query_pos, (rows, kv_heads, m, 1)))
            prefix_ok = prefix_ok & (pos - jnp.arange(p) < window)
        prefix_scores = jnp.where(prefix_ok, prefix_scores, MASKED)
        top = jnp.maximum(by_row(prefix_scores.max(-1)), own_scores.max(-1))  # [B*F, K, M]
        prefix_weights = jnp.exp(prefix_scores - by_prefix(top)[..., None])
        own_weights = jnp.exp(own_scores - top[..., None])
        total = by_row(prefix_weights.sum(-1)) + own_weights.sum(-1)
        out = by_row(jax.lax.dot_general(prefix_weights.astype(dtype),
                                         self.prefix_values.astype(dtype), (((3,), (2,)), batch)))
        out = out + jax.lax.dot_general(own_weights.astype(dtype), values.astype(dtype),
                                        (((3,), (2,)), batch))
        out = (out / total[..., None].astype(out.dtype)).astype(dtype)  # [B*F, K, M, D]
        out = _by_head(out, new)
        return out, ForkCache(self.prefix_keys, self.prefix_values, self.prefix_lengths, keys,
                              values)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LaneCache:
    """Continuations decoded in R lanes (continuous batching) over G prefixes: lane r keeps its
    own keys and values, `fork.keys` [R, K, T, D], and reads prefix cells[r] // C, where C =
    `per` is the number of cells each prefix has. Attention to the prefixes runs in one batched
    matmul a prefix over its C cells, so each prefix is read once for all its lanes; attention to
    a lane's own tokens, and everything else, runs for the R lanes only. The two softmax parts
    are joined per lane by their maxima. Lanes whose cell is past the grid are padding: they
    read no prefix, and their outputs are not meant to be used."""

    fork: ForkCache  # prefixes [G, ...]; own keys and values [R, K, T, D]
    cells: jax.Array  # int32[R]: lane r's cell in the G x C grid
    starts: jax.Array  # int32[R]: the position of each lane's own slot 0
    per: int = dataclasses.field(metadata={"static": True})

    def attend(self, q, k, v, positions, *, window, implementation, rules):
        """q: [R, Tn, H, D]; k, v: [R, Tn, K, D]; positions: int32[R, Tn] (slots past the
        buffers' end write nothing)."""
        del implementation  # one formulation
        f = self.fork
        g, kv_heads, _, p = f.prefix_keys.shape
        rows, new, dtype, c = q.shape[0], q.shape[1], q.dtype, self.per
        groups = q.shape[2] // kv_heads
        m = new * groups  # query rows of one lane and KV head
        slots = positions - self.starts[:, None]
        keys = _store(f.keys, slots, k, rules, heads_first=True)
        values = _store(f.values, slots, v, rules, heads_first=True)
        q_own = _by_kv_head(q, kv_heads)
        batch = ((0, 1), (0, 1))

        # the prefixes: lanes scattered into each prefix's C cells, [G, K, C*M, D]
        def by_prefix(x):  # [R, K, M, ...] -> [G, K, C*M, ...]
            grid = jnp.zeros((g * c, *x.shape[1:]), x.dtype).at[self.cells].set(x, mode="drop")
            grid = grid.reshape(g, c, *x.shape[1:])
            return jnp.swapaxes(grid, 1, 2).reshape(g, kv_heads, c * m, *x.shape[3:])

        def by_lane(x, fill=0):  # the inverse, read at each lane's cell
            x = x.reshape(g, kv_heads, c, m, *x.shape[3:])
            x = jnp.swapaxes(x, 1, 2).reshape(g * c, kv_heads, m, *x.shape[4:])
            return jnp.take(x, self.cells, axis=0, mode="fill", fill_value=fill)

        scores = jax.lax.dot_general(by_prefix(q_own), f.prefix_keys.astype(dtype),
                                     (((3,), (2,)), batch),
                                     preferred_element_type=jnp.float32)  # [G, K, C*M, P]
        ok = jnp.arange(p) < f.prefix_lengths[:, None, None, None]
        if window is not None:
            query_pos = jnp.broadcast_to(jnp.repeat(positions, groups, axis=1)[:, None, :, None],
                                         (rows, kv_heads, m, 1))
            ok = ok & (by_prefix(query_pos) - jnp.arange(p) < window)
        scores = jnp.where(ok, scores, MASKED)
        prefix_top = scores.max(-1)
        weights = jnp.exp(scores - prefix_top[..., None])
        prefix_out = jax.lax.dot_general(weights.astype(dtype), f.prefix_values.astype(dtype),
                                         (((3,), (2,)), batch),
                                         preferred_element_type=jnp.float32)  # [G, K, C*M, D]
        # a padding lane reads no prefix: its own tokens then set its maximum
        prefix_top, prefix_total = by_lane(prefix_top, MASKED), by_lane(weights.sum(-1))
        prefix_out = by_lane(prefix_out)

        # the lane's own tokens
        own_scores = _own_scores(q_own, keys, slots, None, window)  # [R, K, M, T]
        top = jnp.maximum(prefix_top, own_scores.max(-1))  # [R, K, M]
        scale = jnp.exp(prefix_top - top)
        own_weights = jnp.exp(own_scores - top[..., None])
        total = prefix_total * scale + own_weights.sum(-1)
        out = prefix_out * scale[..., None] + jax.lax.dot_general(
            own_weights.astype(dtype), values.astype(dtype), (((3,), (2,)), batch),
            preferred_element_type=jnp.float32)
        out = _by_head((out / total[..., None]).astype(dtype), new)
        fork = ForkCache(f.prefix_keys, f.prefix_values, f.prefix_lengths, keys, values)
        return out, LaneCache(fork, self.cells, self.starts, c)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedCache:
    """Continuations of B prefixes packed into R rows, several to a row with no padding between
    them (the PPM scoring an expansion's children): row r continues prefix owner[r] only, and a
    prefix has as many rows as its continuations fill. A row's new tokens are written in one
    call from slot 0 on; token t of row r belongs to the continuation that starts at slot
    floors[r, t], and reads the prefix and that continuation's tokens up to itself. Rotary
    positions restart at the prefix's length with each continuation. Each row reads a copy of
    its prefix's keys and values, made in this layer's attention only."""

    fork: ForkCache  # prefixes [B, ...]; own keys and values [R, K, T, D]
    owner: jax.Array  # int32[R]
    floors: jax.Array  # int32[R, T]; padding tokens: T (they read the prefix only)

    def attend(self, q, k, v, positions, *, window, implementation, rules):
        """q: [R, T, H, D]; k, v: [R, T, K, D]; positions: int32[R, T]."""
        del implementation  # one formulation
        f = self.fork
        rows = ForkCache(f.prefix_keys[self.owner], f.prefix_values[self.owner],
                         f.prefix_lengths[self.owner], f.keys, f.values)
        slots = jnp.broadcast_to(jnp.arange(q.shape[1], dtype=jnp.int32), q.shape[:2])
        out, rows = rows.attend_slots(q, k, v, positions, slots, self.floors, window=window,
                                      rules=rules)
        fork = ForkCache(f.prefix_keys, f.prefix_values, f.prefix_lengths, rows.keys, rows.values)
        return out, PackedCache(fork, self.owner, self.floors)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """One cache per decoder layer (`SlotCache`, `Collect`, `ForkCache`, `LaneCache` or
    `PackedCache`)."""

    layers: tuple

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, length: int, dtype) -> KVCache:
        """An empty SlotCache of `length` slots per row."""
        shape = (batch, length, config.num_key_value_heads, config.head_dim)
        return cls(tuple(SlotCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
                         for _ in range(config.num_hidden_layers)))

    @classmethod
    def collect(cls, config: ModelConfig, dtype) -> KVCache:
        """For a prefill from position 0; the forward returns a SlotCache of the prompt's length."""
        return cls((Collect(dtype),) * config.num_hidden_layers)

    @classmethod
    def fork(cls, prefix: KVCache, prefix_lengths: jax.Array, samples: int, length: int) -> KVCache:
        """F=`samples` continuations of each row of `prefix` (a SlotCache: the prefill's output),
        with room for `length` new tokens each."""
        layers = []
        for layer in prefix.layers:
            if not isinstance(layer, SlotCache):
                raise TypeError("fork needs a SlotCache prefix (a prefill's output); got "
                                f"{type(layer).__name__}")
            b, _, kv_heads, d = layer.keys.shape
            shape = (b * samples, kv_heads, length, d)
            keys, values = jnp.zeros(shape, layer.keys.dtype), jnp.zeros(shape, layer.keys.dtype)
            layers.append(ForkCache.from_prefix(layer, prefix_lengths, keys, values))
        return cls(tuple(layers))
