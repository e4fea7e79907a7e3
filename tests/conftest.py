"""Test-wide setup: eight simulated CPU devices, so sharding is tested on a laptop."""

import os

# Must happen before JAX initialises its backend; every test module imports JAX after this file.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
