"""Tiny random models and tokenizers for tests, benchmarks and smoke runs; nothing is downloaded.

A random model almost never writes a step token, so a search with it ends at the first
expansion: every step hits the token budget. `steered_tiny_policy` makes the step tokens likely
(each step then ends after about ten tokens), so searches with it build deep trees of real
generated steps, some valid, most failing, exercising the whole pipeline at realistic cost.
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rstar_jax.models import presets
from rstar_jax.models.transformer import CausalLM
from rstar_jax.steps import format as fmt
from rstar_jax.tokenizer import Tokenizer

# Logit advantage of each step token in steered_tiny_policy, in units of the steering weight.
_STEER = {fmt.END_OF_STEP: 1.0, fmt.END_OF_CODE: 0.7, fmt.ANSWER: 0.9, fmt.END_OF_ANSWER: 0.9}


def tiny_tokenizer(directory: str | pathlib.Path) -> Tokenizer:
    """A SentencePiece tokenizer (at most 400 ids, step tokens included) trained on the
    round-1 prompt and its worked examples, written to `directory`."""
    corpus = [fmt.bootstrap_prompt("What is 2 + 3?"), *fmt.few_shot_examples()] * 2
    return Tokenizer.train_sentencepiece(corpus, directory, vocab_size=400)


def steered_tiny_policy(tokenizer: Tokenizer, seed: int = 0, steer: float = 1.2, *,
                        value_head: bool = False) -> CausalLM:
    """The `tiny` preset with random weights, steered towards writing step tokens.

    Every token's embedding gets a shared positive first coordinate, and the step tokens of
    `_STEER` a larger one; with tied embeddings the final hidden state's first coordinate then
    favours those tokens by about `steer` times their weight in logits.
    """
    config = presets.get("tiny")
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids, the tiny model {config.vocab_size}")
    model = CausalLM(config, value_head=value_head, rngs=nnx.Rngs(seed))
    embed = np.array(model.embed[...])
    embed[:, 0] = 0.05
    ids = tokenizer.step_token_ids
    for token, weight in _STEER.items():
        embed[ids[token], 0] += steer * weight
    model.embed[...] = jnp.asarray(embed)
    return model
