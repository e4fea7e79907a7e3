"""Token generation: jitted prefill and decode over a KV cache, sampling, stopping, fan-out."""

from rstar_jax.engine.generation import (
    Engine,
    GenerationResult,
    generate,
    prompt_bucket,
)

__all__ = ["Engine", "GenerationResult", "generate", "prompt_bucket"]
