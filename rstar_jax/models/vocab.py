"""Giving a checkpoint the seven step tokens: new ids, new rows, sensible starting values.

A policy checkpoint that has never seen `<code>`, `<end_of_step>`... needs a row for each in the
embedding and the LM head. A new row starts at the mean of the trained rows: a random row
would be an outlier the model attends to oddly, and a zero row would give every step token
logit 0, far above what untrained tokens should score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from rstar_jax.models.transformer import CausalLM
from rstar_jax.tokenizer import STEP_TOKENS, Tokenizer


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _replace(variable, value: jax.Array, rules) -> None:
    old = variable[...]
    if isinstance(old.sharding, NamedSharding):  # keep a sharded model sharded
        value = jax.device_put(value, rules.sharding(variable.axes, value.shape, old.sharding.mesh))
    variable.set_value(value)


def set_new_rows(model: CausalLM, new_ids: list[int], trained_rows: int, num_rows: int) -> None:
    """Grows the embedding (and an untied LM head) to `num_rows` rows and sets rows `new_ids`, and
    every row added by growing, to the mean of rows [0, trained_rows)."""
    config = model.config
    if num_rows < config.vocab_size:
        raise ValueError(f"cannot shrink the vocabulary from {config.vocab_size} to {num_rows} rows")
    grow = num_rows - config.vocab_size
    ids = jnp.asarray(new_ids, jnp.int32)

    embed = model.embed[...]
    mean = embed[:trained_rows].astype(jnp.float32).mean(axis=0).astype(embed.dtype)  # [E]
    embed = jnp.concatenate([embed, jnp.broadcast_to(mean, (grow, embed.shape[1]))], axis=0)
    _replace(model.embed, embed.at[ids].set(mean), model.rules)
    if hasattr(model, "lm_head"):
        head = model.lm_head[...]  # [E, V]
        mean = head[:, :trained_rows].astype(jnp.float32).mean(axis=1).astype(head.dtype)
        head = jnp.concatenate([head, jnp.broadcast_to(mean[:, None], (head.shape[0], grow))], axis=1)
        _replace(model.lm_head, head.at[:, ids].set(mean[:, None]), model.rules)
    model.config = config.replace(vocab_size=num_rows)


def add_step_tokens(model: CausalLM, tokenizer: Tokenizer, pad_to_multiple: int = 128) -> dict[str, int]:
    """Adds the step tokens to `tokenizer` (a no-op for tokens it has) and gives each newly added
    token a row starting at the mean embedding. The tables grow, to a multiple of
    `pad_to_multiple` rows (so a tensor axis can shard them), only when the ids do not fit.
    Returns token -> id.

    Pass the checkpoint's own tokenizer: which tokens are new is read off the tokenizer, so a
    tokenizer that already has the step tokens (saved after an earlier round) paired with a base
    checkpoint would leave their rows as the base model's untrained padding."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size} rows; "
            "they do not belong together"
        )
    trained_rows = tokenizer.vocab_size
    new = [t for t in STEP_TOKENS if tokenizer.token_to_id(t) is None]
    ids = tokenizer.add_step_tokens()
    if new:
        rows = max(model.config.vocab_size, _round_up(tokenizer.vocab_size, pad_to_multiple))
        set_new_rows(model, [ids[t] for t in new], trained_rows, rows)
    return ids
