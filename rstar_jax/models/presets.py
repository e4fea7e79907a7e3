"""Architectures of the models rStar-Math uses, as in their public `config.json` files.

Configs name one of these; the weights always come from a local (or mounted) checkpoint path,
and `check_architecture` stops a run whose checkpoint is not the model the config describes.
"""

from __future__ import annotations

from typing import Any

from rstar_jax.models.config import ModelConfig

# microsoft/Phi-3-mini-4k-instruct (transformers' Phi3Config() defaults are this model).
PHI3_MINI_4K: dict[str, Any] = {
    "model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
    "rope_theta": 10000.0, "rope_scaling": None, "rms_norm_eps": 1e-5, "sliding_window": 2047,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000,
    "hidden_act": "silu",
}

# Qwen/Qwen2.5-Math-7B
QWEN25_MATH_7B: dict[str, Any] = {
    "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
    "sliding_window": 4096, "use_sliding_window": False, "max_window_layers": 28,
    "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151643,
    "hidden_act": "silu",
}

# Qwen/Qwen2.5-Math-1.5B
QWEN25_MATH_1P5B: dict[str, Any] = {
    "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
    "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
    "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
    "sliding_window": 4096, "use_sliding_window": False, "max_window_layers": 21,
    "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151643,
    "hidden_act": "silu",
}

# The CPU default: a Llama-style model of about 1.7M parameters, trained from scratch with a
# SentencePiece vocabulary of 512 (step and chat tokens included).
TINY: dict[str, Any] = {
    "model_type": "llama", "vocab_size": 512, "hidden_size": 192, "intermediate_size": 512,
    "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 32,
    "max_position_embeddings": 1024, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
    "hidden_act": "silu",
}

PRESETS = {"phi3_mini_4k": PHI3_MINI_4K, "qwen25_math_7b": QWEN25_MATH_7B,
           "qwen25_math_1p5b": QWEN25_MATH_1P5B, "tiny": TINY}

# Fields a fine-tuned or re-tokenised checkpoint may change without being another model.
_MAY_DIFFER = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")


def get(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelConfig.from_hf_dict(PRESETS[name])


def check_architecture(name: str, actual: ModelConfig, where: str = "the checkpoint") -> None:
    """Raises if `actual` is not the architecture of preset `name` (vocabulary size and special
    token ids may differ: step tokens grow the vocabulary)."""
    expected = get(name)
    diffs = {
        field: (getattr(expected, field), getattr(actual, field))
        for field in expected.__dataclass_fields__
        if field not in _MAY_DIFFER and getattr(expected, field) != getattr(actual, field)
    }
    if diffs:
        listed = "; ".join(f"{k}: preset {e!r}, found {a!r}" for k, (e, a) in diffs.items())
        raise ValueError(f"{where} is not a {name} model ({listed}); point the config at the right "
                         "checkpoint")
