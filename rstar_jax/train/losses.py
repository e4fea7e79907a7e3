"""The two training losses (RSTAR.md section 5), as sums with their normalisers.

Each loss returns (sum, count): the trainer divides the sum of all microbatches by the count of
the whole batch, so accumulating microbatches gives exactly the gradient of the full batch.

SFT: next-token cross entropy on response tokens only (the prompt is context, not a target).
PPM: pairwise Bradley-Terry, -log sigmoid(r(prompt + pos) - r(prompt + neg)), each pair weighted
1 / (|pos| |neg|) of its step's group, the count being the number of groups.
ORM: the squared error of each trajectory's score against its outcome, +1 right or -1 wrong
(regression onto the outcome, as the paper's PQM regresses onto Q-values).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sft_loss_sum(logits: jax.Array, targets: jax.Array,
                 weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """logits float[B, T, V], targets int32[B, T] (the next token), weights float[B, T] (1 on
    response targets, 0 elsewhere) -> (sum of weighted negative log-likelihoods, sum of weights)."""
    logits = logits.astype(jnp.float32)
    # logsumexp minus the target's logit, picked with a one-hot product: the gradient of a
    # gather is a scatter into [B, T, V], which cost 0.6 s more of a 3.4 s forward + backward
    # on CPU (45M Qwen2, 8 x 256 tokens) than this dense form.
    picked = jnp.sum(logits * jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype),
                     axis=-1)
    nll = jax.nn.logsumexp(logits, axis=-1) - picked
    weights = weights.astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(weights)


def chunked_sft_loss_sum(logits_fn, hidden: jax.Array, targets: jax.Array, weights: jax.Array, *,
                         chunk: int) -> tuple[jax.Array, jax.Array]:
    """`sft_loss_sum(logits_fn(hidden), targets, weights)` without the logits of the whole batch:
    hidden [B, T, E] goes through `logits_fn` (the LM head: [B, c, E] -> float32 [B, c, V])
    `chunk` positions at a time, and each chunk's logits are recomputed in the backward pass
    rather than kept, so a step holds [B, chunk, V] floats instead of [B, T, V] (for a 152k
    vocabulary and 4096 tokens a row, 2.5 GB a row in float32), and no one-hot of the targets.
    chunk must divide T."""
    b, t, e = hidden.shape
    if chunk < 1 or t % chunk:
        raise ValueError(f"the loss chunk ({chunk} positions) must divide the sequence length {t}")
    n = t // chunk

    def split(x):  # [B, T, ...] -> [n, B, chunk, ...]
        return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def piece(h, tg, w):
        logits = logits_fn(h).astype(jnp.float32)  # [B, chunk, V]
        # The target's logit by a gather: no one-hot as large as the chunk's logits.
        picked = jnp.take_along_axis(logits, tg[..., None], axis=-1)[..., 0]
        nll = jax.nn.logsumexp(logits, axis=-1) - picked
        w = w.astype(jnp.float32)
        return jnp.sum(nll * w), jnp.sum(w)

    def body(sums, xs):
        total, count = piece(*xs)
        return (sums[0] + total, sums[1] + count), None

    zero = jnp.zeros((), jnp.float32)
    (total, count), _ = jax.lax.scan(body, (zero, zero),
                                     (split(hidden), split(targets), split(weights)))
    return total, count


def ppm_loss_sum(positive: jax.Array, negative: jax.Array,
                 weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scores float[P] of prompt + positive and prompt + negative, weights float[P] (1 / (|pos|
    |neg|) of the pair's group; 0 for padding) -> (weighted Bradley-Terry loss sum, groups)."""
    margin = positive.astype(jnp.float32) - negative.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    return jnp.sum(-jax.nn.log_sigmoid(margin) * weights), jnp.sum(weights)


def pair_accuracy(positive: jax.Array, negative: jax.Array,
                  mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(pairs ranked right, pairs) over the rows where mask is set."""
    mask = mask.astype(jnp.float32)
    return jnp.sum((positive > negative).astype(jnp.float32) * mask), jnp.sum(mask)


def outcome_loss_sum(scores: jax.Array, labels: jax.Array,
                     weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scores float[B] of whole trajectories, labels float[B] (+1 right answer, -1 wrong), weights
    float[B] (0 for padding) -> (weighted squared error sum, weight sum)."""
    weights = weights.astype(jnp.float32)
    error = scores.astype(jnp.float32) - labels.astype(jnp.float32)
    return jnp.sum(error * error * weights), jnp.sum(weights)
