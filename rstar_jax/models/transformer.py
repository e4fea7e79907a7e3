"""The decoder family (Llama, Qwen2, Phi-3) as Flax NNX modules, with LM and value heads.

Kernels are stored input-major with heads as their own axis (`q_proj: [embed, heads,
head_dim]`), so a mesh can shard heads without splitting one in two; checkpoint import (`hf.py`)
reshapes the checkpoints' `[out, in]` matrices into this layout. Every parameter carries its
logical axis names as the `axes` metadata, read by `ShardingRules`.

Parameters keep `param_dtype`; each use casts them to the compute `dtype`. RMSNorm, RoPE, the
softmax and the logits are float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from rstar_jax.models.attention import attend, segment_mask
from rstar_jax.models.cache import KVCache
from rstar_jax.models.config import ModelConfig
from rstar_jax.models.rope import RotaryEmbedding, apply_rotary
from rstar_jax.models.sharding import DEFAULT_RULES, ShardingRules, constrain

_INIT_STD = 0.02  # transformers' `initializer_range`, used when a model is trained from scratch


def _param(rngs: nnx.Rngs | None, shape, axes, dtype, init: str = "normal") -> nnx.Param:
    if init == "normal":
        value = _INIT_STD * jax.random.normal(rngs.params(), shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = jnp.ones(shape, dtype)
    return nnx.Param(value, axes=axes)


@functools.lru_cache(maxsize=None)
def _rotary(config: ModelConfig) -> RotaryEmbedding:
    return RotaryEmbedding(config)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype, rngs: nnx.Rngs | None = None):
        self.scale = _param(rngs, (dim,), ("norm",), param_dtype, init="ones")
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, window: int | None, *, dtype, param_dtype,
                 implementation: str, rules: ShardingRules, rngs: nnx.Rngs):
        e, h = config.hidden_size, config.num_attention_heads
        k, d = config.num_key_value_heads, config.head_dim
        self.q_proj = _param(rngs, (e, h, d), ("embed", "heads", "head_dim"), param_dtype)
        self.k_proj = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.v_proj = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.o_proj = _param(rngs, (h, d, e), ("heads", "head_dim", "embed"), param_dtype)
        if config.qkv_bias:
            self.q_bias = _param(rngs, (h, d), ("heads", "head_dim"), param_dtype, init="zeros")
            self.k_bias = _param(rngs, (k, d), ("kv_heads", "head_dim"), param_dtype, init="zeros")
            self.v_bias = _param(rngs, (k, d), ("kv_heads", "head_dim"), param_dtype, init="zeros")
        if config.o_bias:
            self.o_bias = _param(rngs, (e,), ("embed",), param_dtype, init="zeros")
        self.window = window
        self.dtype = dtype
        self.implementation = implementation
        self.rules = rules

    def _project(self, x: jax.Array, name: str) -> jax.Array:
        y = jnp.einsum("bte,ehd->bthd", x, getattr(self, f"{name}_proj")[...].astype(self.dtype))
        bias = getattr(self, f"{name}_bias", None)
        return y if bias is None else y + bias[...].astype(self.dtype)

    def __call__(self, x, cos, sin, positions, segment_ids=None, cache=None):
        """x: [B, T, E]; cos, sin: f32[B, T, R]; positions: int32[B, T]; cache: this layer's cache
        (see cache.py) or None. Returns ([B, T, E], updated cache or None)."""
        q = apply_rotary(self._project(x, "q"), cos, sin)
        k = apply_rotary(self._project(x, "k"), cos, sin)
        v = self._project(x, "v")
        q = constrain(q, ("act_batch", "act_seq", "act_heads", None), self.rules)
        if cache is None:  # keys are the queries' own tokens, in order
            mask = None if segment_ids is None else segment_mask(segment_ids)
            out = attend(q, k, v, causal=True, window=self.window, mask=mask,
                         implementation=self.implementation)
        else:
            out, cache = cache.attend(q, k, v, positions, window=self.window,
                                      implementation=self.implementation, rules=self.rules)
        y = jnp.einsum("bthd,hde->bte", out, self.o_proj[...].astype(self.dtype))
        if hasattr(self, "o_bias"):
            y = y + self.o_bias[...].astype(self.dtype)
        return y, cache


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, *, dtype, param_dtype, rules: ShardingRules,
                 rngs: nnx.Rngs):
        e, i = config.hidden_size, config.intermediate_size
        self.gate_proj = _param(rngs, (e, i), ("embed", "mlp"), param_dtype)
        self.up_proj = _param(rngs, (e, i), ("embed", "mlp"), param_dtype)
        self.down_proj = _param(rngs, (i, e), ("mlp", "embed"), param_dtype)
        if config.mlp_bias:
            self.gate_bias = _param(rngs, (i,), ("mlp",), param_dtype, init="zeros")
            self.up_bias = _param(rngs, (i,), ("mlp",), param_dtype, init="zeros")
            self.down_bias = _param(rngs, (e,), ("embed",), param_dtype, init="zeros")
        self.dtype = dtype
        self.rules = rules

    def _dense(self, x: jax.Array, name: str) -> jax.Array:
        y = x @ getattr(self, f"{name}_proj")[...].astype(self.dtype)
        bias = getattr(self, f"{name}_bias", None)
        return y if bias is None else y + bias[...].astype(self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.silu(self._dense(x, "gate")) * self._dense(x, "up")
        h = constrain(h, ("act_batch", "act_seq", "act_mlp"), self.rules)
        return self._dense(h, "down")


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, *, dtype, param_dtype, implementation: str,
                 rules: ShardingRules, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype, rngs)
        self.attn = Attention(config, config.sliding_windows[layer], dtype=dtype,
                              param_dtype=param_dtype, implementation=implementation, rules=rules,
                              rngs=rngs)
        self.post_attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype,
                                           rngs)
        self.mlp = MLP(config, dtype=dtype, param_dtype=param_dtype, rules=rules, rngs=rngs)
        self.rules = rules

    def __call__(self, x, cos, sin, positions, segment_ids=None, cache=None):
        with jax.named_scope("attention"):
            attn_out, cache = self.attn(self.input_norm(x), cos, sin, positions, segment_ids, cache)
        x = x + attn_out
        with jax.named_scope("mlp"):
            x = x + self.mlp(self.post_attention_norm(x))
        return constrain(x, ("act_batch", "act_seq", "act_embed"), self.rules), cache


def _runs(blocks) -> list[tuple[int, list[Block]]]:
    """Consecutive blocks with the same structure (graphdef: the attention window is the only
    thing that differs between layers), as (first layer, blocks)."""
    runs, last = [], None
    for i, block in enumerate(blocks):
        graphdef = nnx.graphdef(block)
        if runs and graphdef == last:
            runs[-1][1].append(block)
        else:
            runs.append((i, [block]))
        last = graphdef
    return runs


def _scan(blocks, x, cos, sin, positions, segment_ids, remat: bool) -> jax.Array:
    """The blocks applied in turn to x [B, T, E], as one `lax.scan` over their stacked weights
    (stacking copies each weight once per call; its gradient is the slices back)."""
    graphdef = nnx.graphdef(blocks[0])
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(b) for b in blocks])

    def body(x, state):
        y, _ = nnx.merge(graphdef, state)(x, cos, sin, positions, segment_ids)
        return y, None

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)  # (a scan body needs no CSE barrier)
    x, _ = jax.lax.scan(body, x, stacked)
    return x


class CausalLM(nnx.Module):
    """Decoder with an LM head (the policy) and/or a value head (the PPM, RSTAR.md section 5).

    dtype: compute dtype; param_dtype: storage dtype of the weights (defaults to dtype);
    attention: "xla" or "dot_product" (see attention.py); remat: recompute each block in the
    backward pass instead of storing its activations; scan_layers: run runs of identical blocks
    (same attention window) as one `lax.scan` over their stacked weights when there is no KV
    cache, so the compiler sees one block instead of every layer (a 32-layer training step
    compiles in minutes, not the better part of an hour); value_tanh: squash the value head's
    output into (-1, 1) as the paper does (the reference code trains without it).
    """

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, param_dtype=None,
                 attention: str = "xla", remat: bool = False, scan_layers: bool = False,
                 lm_head: bool = True, value_head: bool = False,
                 value_tanh: bool = True, rules: ShardingRules = DEFAULT_RULES, rngs: nnx.Rngs):
        param_dtype = param_dtype or dtype
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.scan_layers = scan_layers
        self.value_tanh = value_tanh
        self.rules = rules
        self.embed = _param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"),
                            param_dtype)
        self.layers = nnx.List([
            Block(config, i, dtype=dtype, param_dtype=param_dtype, implementation=attention,
                  rules=rules, rngs=rngs)
            for i in range(config.num_hidden_layers)
        ])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype, rngs)
        self.has_lm_head = lm_head
        if lm_head and not config.tie_word_embeddings:
            self.lm_head = _param(rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"),
                                  param_dtype)
        if value_head:
            self.value_head = _param(rngs, (config.hidden_size, 1), ("embed", "value"), param_dtype)
            self.value_bias = _param(rngs, (1,), ("value",), param_dtype, init="zeros")

    @property
    def has_value_head(self) -> bool:
        return hasattr(self, "value_head")

    def hidden_states(self, input_ids: jax.Array, positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None, cache: KVCache | None = None,
                      rope_lengths: jax.Array | None = None):
        """input_ids, positions, segment_ids: int32[B, T] -> (final-norm hidden [B, T, E], cache).

        Without a cache the tokens attend to each other causally (positions default to 0..T-1;
        packed sequences restart them per segment, and they must advance by one per token).
        With a cache (`KVCache`, see cache.py), `positions` is required: the cache stores each
        token's keys and values where its layout puts that position (a `SlotCache` at slot
        positions[b, t]) and the token reads every earlier position. A write past the cache's
        end is dropped, so sizing the cache is the caller's job. rope_lengths: int32[B], only
        read under longrope scaling (see `RotaryEmbedding`).
        """
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed sequences) cannot be combined with a KV cache")
        if positions is None:
            if cache is not None:
                raise ValueError("positions are required with a KV cache: they say which slots to "
                                 "write")
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32),
                                         input_ids.shape)
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype)
        x = constrain(x, ("act_batch", "act_seq", "act_embed"), self.rules)
        cos, sin = _rotary(self.config)(positions, rope_lengths)

        def run(block, x, layer_cache):
            return block(x, cos, sin, positions, segment_ids, layer_cache)

        if self.remat:
            run = nnx.remat(run)
        if self.scan_layers and cache is None:
            for first, blocks in _runs(self.layers):
                with jax.named_scope(f"layers_{first}_{first + len(blocks) - 1}"):
                    x = _scan(blocks, x, cos, sin, positions, segment_ids, self.remat)
            return self.norm(x), None
        layers = []
        for i, block in enumerate(self.layers):
            with jax.named_scope(f"layer_{i}"):
                x, layer_cache = run(block, x, None if cache is None else cache.layers[i])
            layers.append(layer_cache)
        return self.norm(x), None if cache is None else KVCache(tuple(layers))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden: [B, T, E] -> float32 logits [B, T, V]."""
        if not self.has_lm_head:
            raise ValueError("this model was built without an LM head (lm_head=False); it only "
                             "scores values")
        if self.config.tie_word_embeddings:
            out = jnp.einsum("bte,ve->btv", hidden, self.embed[...].astype(self.dtype),
                             preferred_element_type=jnp.float32)
        else:
            out = jnp.einsum("bte,ev->btv", hidden, self.lm_head[...].astype(self.dtype),
                             preferred_element_type=jnp.float32)
        return constrain(out, ("act_batch", "act_seq", "act_vocab"), self.rules)

    def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        """input_ids: int32[B, T] -> float32 logits [B, T, V]."""
        hidden, _ = self.hidden_states(input_ids, positions, segment_ids)
        return self.logits(hidden)

    def value(self, input_ids: jax.Array, lengths: jax.Array | None = None,
              positions: jax.Array | None = None) -> jax.Array:
        """PPM score of each row: the value head on the last real token's final hidden state.

        input_ids: int32[B, T], right-padded; lengths: int32[B] real tokens per row (default T).
        Returns float32[B], in (-1, 1) when value_tanh.
        """
        if lengths is None:
            lengths = jnp.full((input_ids.shape[0],), input_ids.shape[1], jnp.int32)
        hidden, _ = self.hidden_states(input_ids, positions, rope_lengths=lengths)
        last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
        return self.value_of(last)

    def value_of(self, hidden: jax.Array) -> jax.Array:
        """The value head on final hidden states [..., E] -> float32[...]."""
        if not self.has_value_head:
            raise ValueError("this model has no value head; build it with value_head=True")
        score = jnp.einsum("...e,eo->...o", hidden, self.value_head[...].astype(self.dtype),
                           preferred_element_type=jnp.float32)[..., 0]
        score = score + self.value_bias[...].astype(jnp.float32)[0]
        return jnp.tanh(score) if self.value_tanh else score
