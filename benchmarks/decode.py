"""Decode throughput of the engine against transformers `generate` (PyTorch, CPU), same weights.

The random Qwen2 of benchmarks/forward.py (about 45M parameters, float32), prompts of 128
tokens, 64 new tokens, no stop token, at batch 1 and 16; greedy for both, and the engine's
tokens are checked against transformers' before anything is timed. Tokens/s count generated
tokens over the whole call (prefill included) for both.

Roofline of a call, from this machine's limits measured in the same run: per forward (the
prefill of B x 128 tokens, then 63 decode steps of B tokens), the larger of (bytes of the
weights it reads, the LM head included, over the measured read bandwidth) and (its matmul
FLOPs over the measured float32 matmul peak); the prefill computes logits at the last prompt
token only. The fan-out line compares a K=8 fan-out
from one prompt (prefill once, then 8 rows) with decoding 8 rows whose prompts are already
prefilled (the decode loop alone).

    python benchmarks/decode.py [--repeats 5]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import torch
from _machine import matmul_peak, median_seconds, random_qwen2, read_bandwidth

from rstar_jax import Engine
from rstar_jax.engine import generation as engine_module

PROMPT, NEW, FAN_OUT = 128, 64, 8


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    reference, (model,) = random_qwen2()
    reference.generation_config.eos_token_id = None
    engine = Engine(model)
    config = model.config
    rng = np.random.RandomState(0)

    peak, bandwidth = matmul_peak(args.repeats), read_bandwidth(args.repeats)
    step_params = config.num_params(include_embeddings=False) + config.hidden_size * config.vocab_size
    print(f"Qwen2 {config.num_params() / 1e6:.1f}M params ({step_params / 1e6:.1f}M read per "
          f"decode step), prompt {PROMPT}, {NEW} new tokens, float32; XLA matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s, read bandwidth {bandwidth / 1e9:.1f} GB/s, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'batch':>5s}{'transformers tok/s':>20s}{'rstar_jax tok/s':>17s}{'ratio':>7s}"
          f"{'roofline tok/s':>16s}{'% of roofline':>15s}")
    results = {}
    for batch in (1, 16):
        ids = rng.randint(3, config.vocab_size, (batch, PROMPT)).astype(np.int32)
        torch_ids = torch.as_tensor(ids, dtype=torch.long)

        def peer(torch_ids=torch_ids):
            with torch.inference_mode():
                return reference.generate(torch_ids, do_sample=False, max_new_tokens=NEW,
                                          min_new_tokens=NEW, pad_token_id=0)[:, PROMPT:].numpy()

        def ours(ids=ids):
            return engine.generate(ids, max_new_tokens=NEW).tokens

        agree = float(np.mean(peer() == ours()))
        if agree < 0.95:
            raise SystemExit(f"greedy tokens agree on only {agree:.0%} at batch {batch}; timing "
                             "would mean nothing")
        t_peer, t_ours = median_seconds(peer, args.repeats), median_seconds(ours, args.repeats)
        # The weights dominate the bytes of every forward; the KV cache is small here.
        layers = config.num_params(include_embeddings=False)
        head = config.hidden_size * config.vocab_size
        prefill = max(4 * step_params / bandwidth, (2 * layers * PROMPT + 2 * head) * batch / peak)
        step = max(4 * step_params / bandwidth, 2 * step_params * batch / peak)
        roofline = batch * NEW / (prefill + (NEW - 1) * step)
        ours_rate, peer_rate = batch * NEW / t_ours, batch * NEW / t_peer
        results[batch] = (ours_rate, peer_rate, 100 * ours_rate / roofline)
        print(f"{batch:5d}{peer_rate:20.0f}{ours_rate:17.0f}{ours_rate / peer_rate:7.2f}{roofline:16.0f}"
              f"{100 * ours_rate / roofline:14.1f}%   (tokens agree: {agree:.1%})")

    # Fan-out: one prompt, 8 samples, against 8 rows decoded from prompts prefilled beforehand.
    prompt = rng.randint(3, config.vocab_size, (1, PROMPT)).astype(np.int32)
    t_fan = median_seconds(lambda: engine.generate(prompt, NEW, temperature=1.0, num_samples=FAN_OUT).tokens,
                           args.repeats)
    rows = rng.randint(3, config.vocab_size, (FAN_OUT, PROMPT)).astype(np.int32)
    lengths = np.full((FAN_OUT,), PROMPT, np.int32)
    prefix_keys, prefix_values, first = engine_module._prefill(engine.graphdef, engine.state, rows,
                                                               lengths, lengths + NEW)
    jax.block_until_ready(prefix_keys)
    buffers = [engine._take_buffers(FAN_OUT, NEW)]

    def decode_only():
        tokens, _, _, _, buffers[0] = engine_module._decode(
            engine.graphdef, engine.state, prefix_keys, prefix_values, lengths, lengths + NEW,
            first, buffers[0], np.ones((FAN_OUT,), bool),
            np.arange(FAN_OUT, dtype=np.uint32), np.ones((FAN_OUT,), np.float32),
            np.zeros((FAN_OUT,), np.int32),
            np.ones((FAN_OUT,), np.float32), np.full((8,), -1, np.int32), np.int32(NEW), samples=1,
            vocab_limit=config.vocab_size, pad_id=0, with_logprobs=False)
        return np.asarray(tokens)

    t_rows = median_seconds(decode_only, args.repeats)
    print(f"fan-out K={FAN_OUT} from one {PROMPT}-token prompt: {t_fan * 1e3:.0f} ms; decoding "
          f"{FAN_OUT} prefilled rows: {t_rows * 1e3:.0f} ms; ratio {t_fan / t_rows:.2f} (target <= "
          "1.2)")
    ours, peer, pct = results[16]
    print(f"RESULT name=decode_tokens_per_s value={ours:.0f} unit=tokens/s peer={peer:.0f} "
          f"ratio={ours / peer:.2f} limit_pct={pct:.1f}")


if __name__ == "__main__":
    main()
