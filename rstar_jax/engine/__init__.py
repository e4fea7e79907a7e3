"""Token generation: jitted prefill and decode over a KV cache, sampling, stopping, fan-out."""

from rstar_jax.engine.continuous import ContinuousDecoder
from rstar_jax.engine.generation import (
    Engine,
    GenerationResult,
    TokenCounts,
    generate,
    prompt_bucket,
)
from rstar_jax.engine.value import ValueScorer

__all__ = ["ContinuousDecoder", "Engine", "GenerationResult", "TokenCounts", "ValueScorer",
           "generate", "prompt_bucket"]
