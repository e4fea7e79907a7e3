"""Test-wide setup: eight simulated CPU devices, so sharding is tested on a laptop."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

# Must happen before JAX initialises its backend; test modules import JAX only after this file.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")
