"""rstar_jax: rStar-Math self-evolved deep thinking in JAX."""

from rstar_jax.models import CausalLM, ModelConfig, from_pretrained, save_pretrained

__all__ = ["CausalLM", "ModelConfig", "from_pretrained", "save_pretrained"]
