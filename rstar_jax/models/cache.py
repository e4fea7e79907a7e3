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
        out = attend(q, keys.astype(q.dtype), values.astype(q.dtype), mask=mask, implementation=implementation)
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
    """Heads come before positions here, so both attention products read the arrays in place
    (a [B, P, K, D] prefix would be transposed again at every decode step)."""

    prefix_keys: jax.Array  # [B, K, P, D], read only
    prefix_values: jax.Array  # [B, K, P, D], read only
    prefix_lengths: jax.Array  # int32[B]: real tokens of each prefix (the rest is padding)
    keys: jax.Array  # [B*F, K, T, D]: row b*F + f is sample f of prefix b
    values: jax.Array  # [B*F, K, T, D]

    @classmethod
    def from_prefix(cls, prefix: SlotCache, prefix_lengths: jax.Array, keys: jax.Array,
                    values: jax.Array) -> ForkCache:
        """prefix: a prefill's SlotCache [B, P, K, D]; keys, values: [B*F, K, T, D] buffers for
        the samples' own tokens (their contents are never read before being written)."""
        return cls(prefix.keys.transpose(0, 2, 1, 3), prefix.values.transpose(0, 2, 1, 3),
                   prefix_lengths.astype(jnp.int32), keys, values)

    def attend(self, q, k, v, positions, *, window, implementation, rules):
        """q: [B*F, Tn, H, D]; k, v: [B*F, Tn, K, D]; positions: int32[B*F, Tn], each at least
        its prefix's length. Returns ([B*F, Tn, H, D], cache)."""
        del implementation  # one formulation: two matmuls share a softmax
        b, kv_heads, p, d = self.prefix_keys.shape
        rows, new, heads = q.shape[0], q.shape[1], q.shape[2]
        f, groups, length = rows // b, heads // kv_heads, self.keys.shape[2]
        slots = positions - jnp.repeat(self.prefix_lengths, f)[:, None]  # [B*F, Tn]
        keys = _store(self.keys, slots, k, rules, heads_first=True)
        values = _store(self.values, slots, v, rules, heads_first=True)
        own_keys = keys.astype(q.dtype).reshape(b, f, kv_heads, length, d)
        own_values = values.astype(q.dtype).reshape(b, f, kv_heads, length, d)

        qg = q.reshape(b, f, new, kv_heads, groups, d) * d**-0.5
        # Prefix scores: all samples of a prefix in one [F*Tn*G, D] x [D, P] product per KV head.
        prefix_scores = jnp.einsum("bftkgd,bkpd->bkftgp", qg, self.prefix_keys.astype(q.dtype),
                                   preferred_element_type=jnp.float32)
        own_scores = jnp.einsum("bftkgd,bfksd->bkftgs", qg, own_keys, preferred_element_type=jnp.float32)
        own_slot = slots.reshape(b, f, new)[:, None, :, :, None, None]  # [B, 1, F, Tn, 1, 1]
        prefix_ok = jnp.arange(p) < self.prefix_lengths[:, None, None, None, None, None]
        own_ok = jnp.arange(length) <= own_slot
        if window is not None:
            pos = positions.reshape(b, f, new)[:, None, :, :, None, None]
            prefix_ok = prefix_ok & (pos - jnp.arange(p) < window)
            own_ok = own_ok & (own_slot - jnp.arange(length) < window)
        scores = jnp.concatenate([jnp.where(prefix_ok, prefix_scores, MASKED),
                                  jnp.where(own_ok, own_scores, MASKED)], axis=-1)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
        out = jnp.einsum("bkftgp,bkpd->bftkgd", probs[..., :p], self.prefix_values.astype(q.dtype))
        out = out + jnp.einsum("bkftgs,bfksd->bftkgd", probs[..., p:], own_values)
        cache = ForkCache(self.prefix_keys, self.prefix_values, self.prefix_lengths, keys, values)
        return out.reshape(rows, new, heads, d), cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """One cache per decoder layer (`SlotCache`, `Collect` or `ForkCache`)."""

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
                raise TypeError(f"fork needs a SlotCache prefix (a prefill's output); got {type(layer).__name__}")
            b, _, kv_heads, d = layer.keys.shape
            shape = (b * samples, kv_heads, length, d)
            keys, values = jnp.zeros(shape, layer.keys.dtype), jnp.zeros(shape, layer.keys.dtype)
            layers.append(ForkCache.from_prefix(layer, prefix_lengths, keys, values))
        return cls(tuple(layers))
