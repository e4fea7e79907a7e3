"""SFT training step throughput against PyTorch/transformers (AdamW) on the same model and batch.

The random Qwen2 of about 45M parameters (`_machine.QWEN2_45M`), a batch of 8 x 256 tokens
(one sequence a row, every token a target), float32, AdamW with gradient clipping. Ours: one
`Trainer.step` (a jitted forward + backward + AdamW update); also with bf16 compute and f32
master weights. The peer: transformers' Qwen2ForCausalLM in train mode, cross entropy,
backward, clip, torch.optim.AdamW. Reports tokens/s of each and our model FLOP utilisation:
3 x the forward FLOPs (forward + backward, the usual 6N per token plus attention) over the time,
against the float32 (resp. bf16) matmul peak measured in the same run.

    python benchmarks/train_step.py [--repeats 5]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
from _machine import QWEN2_45M, matmul_peak, median_seconds, random_qwen2
from flax import nnx

from rstar_jax import ModelConfig
from rstar_jax.models import CausalLM
from rstar_jax.train import SFTBatch, TrainConfig, Trainer

BATCH, LENGTH = 8, 256


def train_flops(config: ModelConfig, tokens: int) -> float:
    """Forward + backward: 3 x (2 x matmul parameters per token, LM head included, plus causal
    attention counted over the full square)."""
    params = config.num_params(include_embeddings=False) + config.hidden_size * config.vocab_size
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * LENGTH
    return 3 * tokens * (2 * params + attention)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, QWEN2_45M["vocab_size"], size=(BATCH, LENGTH + 1)).astype(np.int32)
    batch = SFTBatch(inputs=ids[:, :-1], targets=ids[:, 1:],
                     positions=np.broadcast_to(np.arange(LENGTH, dtype=np.int32), (BATCH, LENGTH)).copy(),
                     segment_ids=np.ones((BATCH, LENGTH), np.int32),
                     weights=np.ones((BATCH, LENGTH), np.float32))
    tokens = BATCH * LENGTH

    reference, (ours_f32,) = random_qwen2((jnp.float32,))
    config = ours_f32.config
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=0.0)
    reference.train()
    inputs, targets = torch.from_numpy(ids[:, :-1].astype(np.int64)), torch.from_numpy(ids[:, 1:].astype(np.int64))

    def torch_step():
        optimizer.zero_grad(set_to_none=True)
        logits = reference(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        optimizer.step()

    train = TrainConfig(learning_rate=1e-5, total_steps=10_000)
    # bf16 compute with f32 master weights: the same weights, stored f32, computed in bf16.
    mixed = CausalLM(config, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    # copies: steps donate
    nnx.update(mixed, jax.tree.map(jnp.array, nnx.state(ours_f32, nnx.Param)))
    trainers = {"f32": Trainer(ours_f32, train, "sft"), "bf16": Trainer(mixed, train, "sft")}

    t_torch = median_seconds(torch_step, args.repeats)
    times = {k: median_seconds(lambda t=t: t.step(batch), args.repeats)
             for k, t in trainers.items()}
    peak, peak_bf16 = matmul_peak(args.repeats), matmul_peak(args.repeats, jnp.bfloat16)
    flops = train_flops(config, tokens)
    print(f"Qwen2 {config.num_params() / 1e6:.0f}M parameters, batch {BATCH} x {LENGTH}, AdamW; "
          f"XLA matmul peak float32 {peak / 1e9:.0f} GFLOP/s, bfloat16 {peak_bf16 / 1e9:.0f} "
          "GFLOP/s")
    print(f"{'':34s}{'s/step':>9s}{'tokens/s':>10s}{'GFLOP/s':>9s}{'% of its peak':>15s}")
    for name, seconds, limit in [("transformers + torch AdamW (f32)", t_torch, peak),
                                 ("rstar_jax Trainer (f32)", times["f32"], peak),
                                 ("rstar_jax Trainer (bf16 compute)", times["bf16"], peak_bf16)]:
        print(f"{name:34s}{seconds:9.3f}{tokens / seconds:10.0f}{flops / seconds / 1e9:9.1f}"
              f"{100 * flops / seconds / limit:14.1f}%")
    ours, peer = tokens / times["f32"], tokens / t_torch
    print(f"RESULT name=sft_train_tokens_per_s value={ours:.0f} unit=tokens/s peer={peer:.0f} "
          f"ratio={ours / peer:.2f} limit_pct={100 * flops / times['f32'] / peak:.1f}")


if __name__ == "__main__":
    main()
