"""Architecture of one decoder, read from and written to a Hugging Face `config.json`.

One frozen dataclass covers Llama, Qwen2 and Phi-3: they differ only in biases, head counts,
RoPE scaling and how the checkpoint names (and fuses) its tensors. The dataclass is hashable
because it is static data of the NNX module graph, and jit caches on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "phi3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
# transformers' defaults for fields a config.json may omit.
_DEFAULTS = {"llama": {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
             "qwen2": {"rms_norm_eps": 1e-6, "max_position_embeddings": 32768},
             "phi3": {"rms_norm_eps": 1e-5, "max_position_embeddings": 4096}}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "phi3": "Phi3ForCausalLM"}


def _freeze(value: Any) -> Any:
    """Turns lists into tuples and dicts into sorted item tuples, so the config stays hashable."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2
                                                  and isinstance(v[0], str) for v in value):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder architecture. Field names follow `config.json` where one exists."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    # RoPE scaling as frozen (key, value) items: `rope_type` plus that type's parameters.
    rope_scaling: tuple = ()
    partial_rotary_factor: float = 1.0
    # Biases: Qwen2 has them on q/k/v only; Llama's `attention_bias` puts them on q/k/v/o.
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    # Per-layer sliding window (None = full causal attention).
    sliding_windows: tuple[int | None, ...] = ()
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"unsupported RoPE scaling type {self.rope_type!r}; supported: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        self._check_checkpoint_expressible()
        if not self.sliding_windows:
            object.__setattr__(self, "sliding_windows", (None,) * self.num_hidden_layers)
        if len(self.sliding_windows) != self.num_hidden_layers:
            raise ValueError(
                f"sliding_windows has {len(self.sliding_windows)} entries for "
                f"{self.num_hidden_layers} layers"
            )

    def _check_checkpoint_expressible(self) -> None:
        """Refuses combinations no checkpoint of `model_type` can hold, so a save never writes a
        config.json that transformers would read as a different model."""
        biases = {"llama": self.qkv_bias == self.o_bias,  # one `attention_bias` flag for q/k/v/o
                  "qwen2": self.qkv_bias and not self.o_bias and not self.mlp_bias,
                  "phi3": not (self.qkv_bias or self.o_bias or self.mlp_bias)}
        if not biases[self.model_type]:
            raise ValueError(
                f"a {self.model_type} checkpoint cannot hold qkv_bias={self.qkv_bias}, "
                f"o_bias={self.o_bias}, mlp_bias={self.mlp_bias}; llama has q/k/v/o biases "
                "together or none, qwen2 q/k/v only, phi3 none"
            )
        windows = {w for w in self.sliding_windows if w is not None}
        if len(windows) > 1:
            raise ValueError(f"layers use different sliding windows {sorted(windows)}; config.json "
                             "holds only one")
        if windows and self.model_type == "phi3" and None in self.sliding_windows:
            raise ValueError("phi3 applies its sliding window to every layer or to none")

    # ------------------------------------------------------------------ derived

    @property
    def rope_type(self) -> str:
        return dict(self.rope_scaling).get("rope_type", "default")

    @property
    def rope_params(self) -> dict[str, Any]:
        return _thaw(self.rope_scaling) if self.rope_scaling else {}

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count of the LM (no value head); non-embedding counts exclude the embedding
        and LM head."""
        e, h, k, d, i = (self.hidden_size, self.num_attention_heads, self.num_key_value_heads,
                         self.head_dim, self.intermediate_size)
        attn = e * (h + 2 * k) * d + h * d * e
        attn += (h + 2 * k) * d * self.qkv_bias + e * self.o_bias
        mlp = 3 * e * i + (2 * i + e) * self.mlp_bias
        per_layer = attn + mlp + 2 * e
        total = self.num_hidden_layers * per_layer + e
        if include_embeddings:
            total += self.vocab_size * e * (1 if self.tie_word_embeddings else 2)
        return total

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ config.json

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> ModelConfig:
        """Reads a `config.json` dict, in both the legacy (`rope_theta` + `rope_scaling`) and the
        `rope_parameters` layouts, since real checkpoints and new transformers releases differ."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r} in config.json; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}; only 'silu' is "
                             "implemented")
        heads = hf["num_attention_heads"]
        rope = dict(hf.get("rope_parameters") or {})
        if hf.get("rope_scaling"):
            rope.update(hf["rope_scaling"])
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        partial = rope.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        rope_type = rope.pop("rope_type", None) or rope.pop("type", None) or "default"
        rope.pop("type", None)
        if rope_type == "su":  # the name Phi-3's first 128k checkpoints used for longrope
            rope_type = "longrope"
        if rope_type == "longrope":
            rope.setdefault(
                "original_max_position_embeddings",
                hf.get("original_max_position_embeddings") or hf["max_position_embeddings"],
            )
        rope_scaling = {"rope_type": rope_type, **rope} if rope_type != "default" else {}

        layers = hf["num_hidden_layers"]
        window = hf.get("sliding_window")
        if model_type == "qwen2":
            # As transformers reads it: no window at all unless use_sliding_window, then the
            # layers layer_types marks (or, in older files, those from max_window_layers on).
            window = window if hf.get("use_sliding_window", False) else None
            types = hf.get("layer_types") or [
                "sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention"
                for i in range(layers)
            ]
            windows = tuple(window if t == "sliding_attention" else None for t in types)
        else:
            windows = (window,) * layers

        attention_bias = hf.get("attention_bias", False)
        eos = hf.get("eos_token_id")
        return cls(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", _DEFAULTS[model_type]["rms_norm_eps"]),
            max_position_embeddings=hf.get("max_position_embeddings",
                                           _DEFAULTS[model_type]["max_position_embeddings"]),
            rope_theta=float(theta),
            rope_scaling=_freeze(rope_scaling),
            partial_rotary_factor=float(partial),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type == "llama" and attention_bias,
            mlp_bias=model_type == "llama" and hf.get("mlp_bias", False),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            sliding_windows=windows,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict in the legacy layout, which every transformers release reads."""
        hf: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
                             else self.eos_token_id),
            "pad_token_id": self.pad_token_id,
        }
        if self.rope_scaling:
            params = self.rope_params
            if self.model_type == "phi3" and self.rope_type == "longrope":
                # The layout Phi-3's own checkpoints use, which every transformers release reads.
                original = params.pop("original_max_position_embeddings")
                hf["original_max_position_embeddings"] = original
                params = {"type": params.pop("rope_type"), **params}
            hf["rope_scaling"] = params
        if self.partial_rotary_factor != 1.0:
            hf["partial_rotary_factor"] = self.partial_rotary_factor
        windows = {w for w in self.sliding_windows if w is not None}
        if self.model_type == "qwen2":
            hf["use_sliding_window"] = bool(windows)
            hf["sliding_window"] = windows.pop() if windows else None
            hf["layer_types"] = [
                "full_attention" if w is None else "sliding_attention" for w in self.sliding_windows
            ]
            # Older releases derive the layer types from this: windows from this layer on.
            hf["max_window_layers"] = next(
                (i for i, w in enumerate(self.sliding_windows) if w is not None),
                self.num_hidden_layers)
        elif self.model_type == "phi3":
            hf["sliding_window"] = windows.pop() if windows else None
        if self.model_type == "llama":
            hf["attention_bias"] = self.qkv_bias
            hf["mlp_bias"] = self.mlp_bias
        return hf
