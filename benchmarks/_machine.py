"""What the benchmarks share: the model they time, medians, and this machine's limits.

The scripts run as `python benchmarks/<name>.py`, which puts this directory on the path.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

# The random Qwen2 of about 45M parameters that forward.py and decode.py time.
QWEN2_45M = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                 tie_word_embeddings=False)


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(repeats: int, dtype=jnp.float32, n: int = 2048) -> float:
    """Matmul FLOP/s of this machine through XLA (`dtype` in, float32 out): the roofline a
    forward computing in `dtype` is held to."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    return 2 * n**3 / median_seconds(lambda: mm(a, b).block_until_ready(), repeats)


def read_bandwidth(repeats: int, megabytes: int = 512) -> float:
    """Bytes/s of a jitted reduction over an array far larger than the caches."""
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    return x.nbytes / median_seconds(lambda: total(x).block_until_ready(), repeats)


def random_qwen2(dtypes=(jnp.float32,)):
    """The QWEN2_45M model with seed-0 random weights: (transformers model, [ours per dtype])."""
    import tempfile

    import torch
    import transformers

    from rstar_jax import from_pretrained

    torch.manual_seed(0)
    reference = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**QWEN2_45M)).eval()
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        return reference, [from_pretrained(directory, dtype=dtype) for dtype in dtypes]
