"""Prefill throughput of the decoder against transformers (PyTorch, CPU) on the same weights.

A random Qwen2 of about 45M parameters (vocab 32000, hidden 512, 4 layers, 8 heads, 2 KV heads,
intermediate 1536), batch 8 x 512 tokens, full logits, float32. Reports tokens/s of both, and
our model FLOP utilisation: (2 x non-embedding parameters x tokens + attention) / time, against
the float32 matmul peak measured in the same run. Non-embedding parameters are every matmul
weight, the LM head included (it is 16M of the 28M here and does real work).

    python benchmarks/forward.py [--repeats 5]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
from _machine import matmul_peak, median_seconds, random_qwen2
from flax import nnx

from rstar_jax import ModelConfig

BATCH, LENGTH = 8, 512


def model_flops(config: ModelConfig, tokens: int) -> float:
    """Forward FLOPs: 2 x parameters per token, counting every matmul weight (the blocks and
    the LM head, but not the embedding table, which is a lookup), plus attention (QK^T and PV
    over the full square, as MFU is usually counted)."""
    params = config.num_params(include_embeddings=False) + config.hidden_size * config.vocab_size
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * LENGTH
    return tokens * (2 * params + attention)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    reference, loaded = random_qwen2((jnp.float32, jnp.bfloat16))
    models = dict(zip((jnp.float32, jnp.bfloat16), loaded))
    config = loaded[0].config
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (BATCH, LENGTH)).astype(np.int32)

    torch_ids = torch.as_tensor(ids, dtype=torch.long)

    def torch_forward():
        with torch.inference_mode():
            return reference(torch_ids).logits

    def jitted(model):
        graphdef, state = nnx.split(model)
        forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
        device_ids = jnp.asarray(ids)
        return lambda: forward(state, device_ids).block_until_ready()

    ours_f32, ours_bf16 = jitted(models[jnp.float32]), jitted(models[jnp.bfloat16])
    error = float(np.abs(np.asarray(ours_f32()) - torch_forward().numpy()).max())
    if error > 1e-3:
        raise SystemExit(f"the two models disagree (max |logit diff| {error:.1e}); timing them "
                         "would mean nothing")

    tokens = BATCH * LENGTH
    peak = matmul_peak(args.repeats)
    peak_bf16 = matmul_peak(args.repeats, jnp.bfloat16)
    t_torch = median_seconds(torch_forward, args.repeats)
    t_f32 = median_seconds(ours_f32, args.repeats)
    t_bf16 = median_seconds(ours_bf16, args.repeats)
    flops = model_flops(config, tokens)

    print(f"prefill {BATCH} x {LENGTH} tokens, Qwen2 "
          f"{sum(p.numel() for p in reference.parameters()) / 1e6:.1f}M params, {flops / 1e9:.0f} "
          f"GFLOP per forward; max |logit diff| vs transformers {error:.1e}")
    print(f"XLA matmul peak (2048^3): float32 {peak / 1e9:.0f} GFLOP/s, bfloat16 "
          f"{peak_bf16 / 1e9:.0f} GFLOP/s; devices: {jax.devices()[0].platform}, torch threads: "
          f"{torch.get_num_threads()}")
    print(f"{'':28s}{'seconds':>10s}{'tokens/s':>12s}{'GFLOP/s':>10s}{'% of its peak':>15s}")
    for name, seconds, limit in [("transformers (torch, f32)", t_torch, peak),
                                 ("rstar_jax (f32)", t_f32, peak),
                                 ("rstar_jax (bf16 compute)", t_bf16, peak_bf16)]:
        print(f"{name:28s}{seconds:10.3f}{tokens / seconds:12.0f}{flops / seconds / 1e9:10.0f}"
              f"{100 * flops / seconds / limit:14.1f}%")
    ours, peer = tokens / t_f32, tokens / t_torch
    print(f"RESULT name=forward_prefill value={ours:.0f} unit=tokens/s peer={peer:.0f} "
          f"ratio={ours / peer:.2f} limit_pct={100 * flops / t_f32 / peak:.1f}")


if __name__ == "__main__":
    main()
