"""Rotary position embeddings, with the scalings of Llama 3 and Phi-3's longrope.

Frequencies and tables are float32 on purpose: in bfloat16 the angle of position 3000 is off by
whole radians, and long prompts (few-shot bootstrap prompts, deep MCTS paths) would attend to
the wrong places.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rstar_jax.models.config import ModelConfig


def _base_inv_freq(theta: float, dim: int) -> np.ndarray:
    return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def _llama3_inv_freq(inv_freq: np.ndarray, params: dict) -> np.ndarray:
    """Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the middle blended."""
    factor = params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return np.where(medium, blended, scaled)


class RotaryEmbedding:
    """Cos/sin tables for a config; `short` and `long` frequencies differ only under longrope."""

    def __init__(self, config: ModelConfig):
        dim = config.rotary_dim
        params = config.rope_params
        kind = config.rope_type
        inv_freq = _base_inv_freq(config.rope_theta, dim)
        self.attention_factor = 1.0
        self.switch_at = None  # longrope: sequences longer than this use the long factors
        long_inv_freq = inv_freq
        if kind == "linear":
            inv_freq = inv_freq / params["factor"]
            long_inv_freq = inv_freq
        elif kind == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, params)
            long_inv_freq = inv_freq
        elif kind == "longrope":
            original = params["original_max_position_embeddings"]
            factor = params.get("factor") or config.max_position_embeddings / original
            self.attention_factor = params.get("attention_factor") or (
                math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1.0 else 1.0
            )
            self.switch_at = original
            short = np.asarray(params["short_factor"], np.float64)
            long = np.asarray(params["long_factor"], np.float64)
            if short.shape != (dim // 2,) or long.shape != (dim // 2,):
                raise ValueError(
                    f"longrope factors must have rotary_dim/2={dim // 2} entries; "
                    f"got short_factor {short.shape}, long_factor {long.shape}"
                )
            long_inv_freq = inv_freq / long
            inv_freq = inv_freq / short
        self.inv_freq = inv_freq.astype(np.float32)  # [rotary_dim / 2]
        self.long_inv_freq = long_inv_freq.astype(np.float32)  # [rotary_dim / 2]

    def __call__(self, positions: jax.Array,
                 lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """positions: int32[B, T] -> (cos, sin), each float32[B, T, rotary_dim].

        Under longrope a sequence longer than the pretraining length uses the long factors at
        every position, as in transformers. lengths: int32[B], the length that decides it for
        each row. The default, the row's largest position + 1, counts padding (and, for packed
        rows, the longest segment); callers that know the real lengths pass them (the value
        head, and the engine, which passes the length a row may reach so its cached keys stay
        valid).
        """
        inv_freq = jnp.asarray(self.inv_freq)[None, None]  # [1, 1, rotary_dim / 2]
        if self.switch_at is not None:
            if lengths is None:
                lengths = jnp.max(positions, axis=1) + 1
            use_long = (lengths > self.switch_at)[:, None, None]
            inv_freq = jnp.where(use_long, jnp.asarray(self.long_inv_freq), inv_freq)
        angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, rotary_dim / 2]
        angles = jnp.concatenate([angles, angles], axis=-1)
        return jnp.cos(angles) * self.attention_factor, jnp.sin(angles) * self.attention_factor


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, H, D]; cos, sin: float32[B, T, R] with R <= D. Rotates the first R features
    (half-split convention of the Hugging Face checkpoints) in float32."""
    rot = cos.shape[-1]
    x32 = x.astype(jnp.float32)
    x_rot, x_pass = x32[..., :rot], x32[..., rot:]
    first, second = jnp.split(x_rot, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    out = x_rot * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return jnp.concatenate([out, x_pass], axis=-1).astype(x.dtype)
