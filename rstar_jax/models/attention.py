"""Attention masks and the attention kernel, with grouped-query heads.

Two implementations, picked by name:
- `xla`: batched matmuls and a float32 softmax; runs on every backend and is the reference.
  Causal attention is computed in query blocks that read only the keys they may see.
- `dot_product`: `jax.nn.dot_product_attention`. Plain causal attention (no cache, no packed
  segments) goes to cuDNN's fused flash kernel on GPU in 16-bit dtypes; everything else, and
  every other backend, to JAX's XLA implementation.

Causality and the sliding window are arguments, not a mask, so the kernels can skip work and the
fused kernel can be used; a boolean mask `[B, T, S]` (query t may read key s) carries only the
rest: packed segments, or which KV-cache slots a token may read. With a KV cache, slot ==
position, so causality by position hides every slot a row has not written yet (or that holds
padding from a ragged prefill): nothing else needs to track per-row lengths.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product")
# Finite, so a row with every key masked (padding) gives a uniform softmax instead of NaN.
MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def segment_mask(segment_ids: jax.Array) -> jax.Array:
    """Packed sequences: tokens read only their own segment. int32[B, T] -> bool[B, T, T]."""
    return segment_ids[:, :, None] == segment_ids[:, None, :]


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


def _fused_implementation(dtype) -> str | None:
    if jax.default_backend() == "gpu" and dtype in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return None  # JAX's XLA implementation


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
           window: int | None = None, mask: jax.Array | None = None,
           implementation: str = "xla") -> jax.Array:
    """q: [B, T, H, D]; k, v: [B, S, K, D] with H a multiple of K.

    causal: k and v are the queries' own tokens, in order (S == T): query t reads keys s <= t,
    and s > t - window when a window is given. mask: bool[B, T, S] or None, further restrictions.
    Returns [B, T, H, D] in q's dtype.
    """
    if causal and k.shape[1] != q.shape[1]:
        raise ValueError(f"causal attention needs as many keys as queries; got {k.shape[1]} and "
                         f"{q.shape[1]}")
    if implementation == "dot_product":
        return _dot_product(q, k, v, causal, window, mask)
    if implementation != "xla":
        raise ValueError(f"unknown attention implementation {implementation!r}; use one of "
                         f"{ATTENTION_IMPLEMENTATIONS}")
    b, t, h, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    # Layouts chosen so both products are plain batched matmuls over (B, K): [G*rows, D] x [D, S]
    # and [rows, S] x [S, D]; the einsum on the checkpoint layout runs about twice slower on CPU.
    q = q.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
    k_t = k.transpose(0, 2, 3, 1)  # [B, K, D, S]
    v_t = v.transpose(0, 2, 1, 3)  # [B, K, S, D]
    block = _query_block(t) if causal else t
    outs = []
    for start in range(0, t, block):
        stop = min(start + block, t)
        # A causal block reads keys from its window's start to its last row, and nothing else.
        if causal:
            lo, hi = max(0, start - window + 1) if window else 0, stop
        else:
            lo, hi = 0, s
        scores = jnp.einsum("bkgtd,bkds->bkgts", q[:, :, :, start:stop], k_t[..., lo:hi],
                            preferred_element_type=jnp.float32) * (d**-0.5)
        allowed = _allowed(start, stop, lo, hi, causal, window, mask)
        if allowed is not None:
            scores = jnp.where(allowed, scores, MASKED)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("bkgts,bksd->bkgtd", probs, v_t[:, :, lo:hi]))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def _allowed(start, stop, lo, hi, causal, window, mask) -> jax.Array | None:
    """Which keys [lo, hi) rows [start, stop) may read, broadcastable to [B, K, G, rows, keys]."""
    allowed = None
    if causal:
        rows, cols = jnp.arange(start, stop)[:, None], jnp.arange(lo, hi)[None, :]
        allowed = cols <= rows
        if window:
            allowed = allowed & (rows - cols < window)
    if mask is not None:
        block = mask[:, None, None, start:stop, lo:hi]
        allowed = block if allowed is None else allowed & block
    return allowed


def _dot_product(q, k, v, causal, window, mask):
    if mask is None:  # plain causal (or unmasked) attention: what the fused kernels implement
        return jax.nn.dot_product_attention(
            q, k, v, is_causal=causal,
            local_window_size=(window - 1, 0) if causal and window else None,
            implementation=_fused_implementation(q.dtype))
    allowed = _allowed(0, q.shape[1], 0, k.shape[1], causal, window, mask)[:, 0]  # [B, 1, T, S]
    return jax.nn.dot_product_attention(q, k, v, mask=allowed, implementation=None)
