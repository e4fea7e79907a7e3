"""The decoder family (Llama, Qwen2, Phi-3), its heads, sharding rules and checkpoint I/O."""

from rstar_jax.models.cache import Collect, ForkCache, KVCache, SlotCache
from rstar_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from rstar_jax.models.hf import from_pretrained, read_config, save_pretrained
from rstar_jax.models.sharding import (
    DEFAULT_RULES,
    MESH_AXES,
    ShardingRules,
    canonical_spec,
    make_mesh,
)
from rstar_jax.models.transformer import CausalLM

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "SUPPORTED_MODEL_TYPES",
    "CausalLM",
    "Collect",
    "ForkCache",
    "KVCache",
    "ModelConfig",
    "ShardingRules",
    "SlotCache",
    "canonical_spec",
    "from_pretrained",
    "make_mesh",
    "read_config",
    "save_pretrained",
]
