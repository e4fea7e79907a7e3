"""Attention masks and the attention kernel, with grouped-query heads.

Two implementations, picked by name:
- `xla`: einsums and a float32 softmax; runs on every backend and is the reference.
- `dot_product`: `jax.nn.dot_product_attention`, which dispatches to the backend's fused kernel
  (cuDNN flash attention on GPU) when it can and to XLA otherwise.

Masks are boolean `[B, T, S]` (query t may read key s). With a KV cache, cache slot == position,
so causality alone hides every slot that a row has not written yet (or that holds padding from
a ragged prefill): nothing else needs to track per-row lengths.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product")
# Finite, so a row with every key masked (padding) gives a uniform softmax instead of NaN.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def causal_mask(positions: jax.Array, segment_ids: jax.Array | None = None, window: int | None = None) -> jax.Array:
    """Mask for a sequence attending to itself (training, scoring, no cache).

    positions: int32[B, T] RoPE positions (restart per segment when sequences are packed);
    segment_ids: int32[B, T] or None, tokens attend only within their segment;
    window: sliding window in tokens, or None. Returns bool[B, T, T].
    """
    t = positions.shape[1]
    order = jnp.arange(t)
    mask = (order[None, :] <= order[:, None])[None]  # [1, T, T]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    if window is not None:
        mask = mask & (positions[:, :, None] - positions[:, None, :] < window)
    return jnp.broadcast_to(mask, (positions.shape[0], t, t))


def cache_mask(positions: jax.Array, cache_len: int, window: int | None = None) -> jax.Array:
    """Mask for new tokens at `positions` (int32[B, T]) reading a KV cache of `cache_len` slots,
    where slot s holds position s. Returns bool[B, T, cache_len]."""
    slots = jnp.arange(cache_len)[None, None, :]
    mask = slots <= positions[:, :, None]
    if window is not None:
        mask = mask & (positions[:, :, None] - slots < window)
    return mask


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, implementation: str = "xla") -> jax.Array:
    """q: [B, T, H, D]; k, v: [B, S, K, D] with H a multiple of K; mask: bool[B, T, S].
    Returns [B, T, H, D] in q's dtype."""
    if implementation == "dot_product":
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=None)
    if implementation != "xla":
        raise ValueError(f"unknown attention implementation {implementation!r}; use one of {ATTENTION_IMPLEMENTATIONS}")
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (d**-0.5)
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)
