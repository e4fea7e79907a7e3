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


def _query_block(length: int) -> int:
    """Query rows per block of causal attention: small blocks keep the scores in cache and skip
    more of the masked upper triangle; at most 16 blocks bound the unrolled graph."""
    return max(64, -(-length // 16))


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, implementation: str = "xla",
           causal: bool = False) -> jax.Array:
    """q: [B, T, H, D]; k, v: [B, S, K, D] with H a multiple of K; mask: bool[B, T, S].

    causal=True promises that query t never reads a key s > t (as `causal_mask` guarantees and a
    KV cache does not): the `xla` kernel then skips the key blocks above the diagonal.
    Returns [B, T, H, D] in q's dtype.
    """
    if implementation == "dot_product":
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=None)
    if implementation != "xla":
        raise ValueError(f"unknown attention implementation {implementation!r}; use one of {ATTENTION_IMPLEMENTATIONS}")
    b, t, h, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    # Layouts chosen so both products are plain batched matmuls over (B, K): [G*rows, D] x [D, S]
    # and [rows, S] x [S, D]; the einsum on the checkpoint layout runs about twice slower on CPU.
    q = q.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
    k_t = k.transpose(0, 2, 3, 1)  # [B, K, D, S]
    v_t = v.transpose(0, 2, 1, 3)  # [B, K, S, D]
    causal = causal and s == t
    block = _query_block(t) if causal else t
    outs = []
    for start in range(0, t, block):
        stop = min(start + block, t)
        keys = stop if causal else s
        scores = jnp.einsum("bkgtd,bkds->bkgts", q[:, :, :, start:stop], k_t[..., :keys],
                            preferred_element_type=jnp.float32) * (d**-0.5)
        scores = jnp.where(mask[:, None, None, start:stop, :keys], scores, _MASKED)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("bkgts,bksd->bkgtd", probs, v_t[:, :, :keys]))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
