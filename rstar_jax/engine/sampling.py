"""Choosing the next token of each row: greedy, or sampled with temperature, top-k and top-p.

Every parameter is per row, so greedy and sampled rows share a batch. Written for speed on every
backend, without a sort over the vocabulary (a sort of 16 x 32k logits costs about 100 ms on a
CPU, far more than the decode step itself):

- greedy: the lowest index among the maxima;
- sampling: inverse-CDF with one uniform number per row, over 128-token chunks (a cumulative
  sum over the chunk totals, then within one chunk), instead of a Gumbel variate per logit;
- top-k and top-p: an exact probability threshold per row, found by bisection on the bits of
  float32 (non-negative floats order like their bit patterns), 30 masked reductions. Rows then
  keep every token at or above their threshold, so tokens tied at the threshold are all kept.
  The filters run only when some row asks for them.

The order is the usual one: temperature, then top-k, then top-p over what top-k kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_CHUNK = 128
_ONE_BITS = 0x3F800000  # float32 1.0
_MASS_TOLERANCE = 1e-6


def greedy(logits: jax.Array) -> jax.Array:
    """float[R, V] -> int32[R], the first index of each row's maximum."""
    vocab = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)
    return jnp.min(jnp.where(logits == top, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)


def _threshold(weights: jax.Array, enough) -> jax.Array:
    """The largest t in [0, 1] (as float32 bits) with enough(mass of weights >= t) per row.

    weights: float32[R, V] in [0, 1]; enough: ([R, V] keep mask) -> bool[R], monotone: true at
    t = 0. Returns int32[R] bits; keep weights whose bits are >= it.
    """
    bits = jax.lax.bitcast_convert_type(weights, jnp.int32)
    rows = weights.shape[0]

    def step(_, bounds):
        lo, hi = bounds  # enough(lo) holds, enough(hi) does not
        mid = lo + (hi - lo) // 2
        ok = enough(bits >= mid[:, None])
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo = jnp.zeros((rows,), jnp.int32)
    hi = jnp.full((rows,), _ONE_BITS + 1, jnp.int32)
    lo, _ = jax.lax.fori_loop(0, 30, step, (lo, hi))  # 2^30 > _ONE_BITS + 1: the interval closes
    return lo


def top_k_mask(weights: jax.Array, k: jax.Array) -> jax.Array:
    """Keep each row's k largest weights (ties at the k-th all kept); k <= 0 keeps all.
    weights: float32[R, V] in [0, 1] -> bool[R, V]."""
    bits = jax.lax.bitcast_convert_type(weights, jnp.int32)
    count = jnp.where(k > 0, k, weights.shape[-1])
    threshold = _threshold(weights, lambda keep: jnp.sum(keep, axis=-1) >= count)
    return bits >= threshold[:, None]


def top_p_mask(weights: jax.Array, p: jax.Array) -> jax.Array:
    """Keep the smallest set of largest weights whose share of the row's total reaches p (ties
    at the boundary all kept); p >= 1 keeps all. weights: float32[R, V] in [0, 1], zero where
    already removed -> bool[R, V]."""
    bits = jax.lax.bitcast_convert_type(weights, jnp.int32)
    # A set within float32 rounding of p counts as reaching it (0.3 of a 0.3-probability token).
    target = jnp.where(p < 1.0, p, 1.0) * jnp.sum(weights, axis=-1) * (1.0 - _MASS_TOLERANCE)
    threshold = _threshold(weights, lambda keep: jnp.sum(jnp.where(keep, weights, 0.0),
                                                         axis=-1) >= target)
    keep = bits >= threshold[:, None]
    return jnp.where((p >= 1.0)[:, None], True, keep)


def _inverse_cdf(weights: jax.Array, uniform: jax.Array) -> jax.Array:
    """A draw from each row's categorical over non-negative `weights` [R, V] (not normalised),
    using uniform[R] in [0, 1). Never returns a zero-weight index."""
    rows, vocab = weights.shape
    pad = -vocab % _CHUNK
    chunks = jnp.pad(weights, ((0, 0), (0, pad))).reshape(rows, -1, _CHUNK)  # [R, C, 128]
    totals = jnp.cumsum(jnp.sum(chunks, axis=-1), axis=-1)  # [R, C]
    target = (1.0 - uniform) * totals[:, -1]  # in (0, total]
    chunk = jnp.minimum(jnp.sum(totals < target[:, None], axis=-1), totals.shape[1] - 1)
    before = jnp.where(chunk > 0,
                       jnp.take_along_axis(totals, jnp.maximum(chunk - 1, 0)[:, None], 1)[:, 0],
                       0.0)
    inner = jnp.take_along_axis(chunks, chunk[:, None, None], 1)[:, 0] # [R, 128]
    within = jnp.cumsum(inner, axis=-1) + before[:, None]
    index = jnp.minimum(jnp.sum(within < target[:, None], axis=-1), _CHUNK - 1)
    # Rounding can leave the target just past the last positive weight of the chunk: take that one.
    last_positive = _CHUNK - 1 - jnp.argmax(inner[:, ::-1] > 0, axis=-1)
    index = jnp.where(jnp.take_along_axis(inner, index[:, None], 1)[:, 0] > 0, index, last_positive)
    return (chunk * _CHUNK + index).astype(jnp.int32)


def sample(logits: jax.Array, uniform: jax.Array, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array) -> jax.Array:
    """Next token per row.

    logits: float[R, V] (-inf where a token is not allowed); uniform: float32[R] in [0, 1), one
    draw per row; temperature: float32[R], 0 = greedy; top_k: int32[R], 0 = off; top_p:
    float32[R], 1 = off. Returns int32[R].
    """
    logits = logits.astype(jnp.float32)
    argmax = greedy(logits)

    def draw():
        # Shift before dividing: a tiny temperature would overflow the logits to inf.
        shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
        # in [0, 1], max 1
        weights = jnp.exp(shifted / jnp.where(temperature > 0, temperature, 1.0)[:, None])
        weights = jax.lax.cond(jnp.any((top_k > 0) & (temperature > 0)),
                               lambda w: jnp.where(top_k_mask(w, top_k), w, 0.0), lambda w: w,
                               weights)
        weights = jax.lax.cond(jnp.any((top_p < 1.0) & (temperature > 0)),
                               lambda w: jnp.where(top_p_mask(w, top_p), w, 0.0), lambda w: w,
                               weights)
        return jnp.where(temperature > 0, _inverse_cdf(weights, uniform), argmax)

    return jax.lax.cond(jnp.any(temperature > 0), draw, lambda: argmax)


def log_probs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[tokens]: the model's own log-probability (temperature 1, no filters).
    logits: float[R, V]; tokens: int32[R] -> float32[R]."""
    logits = logits.astype(jnp.float32)
    chosen = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return chosen - jax.nn.logsumexp(logits, axis=-1)
