"""Test-wide setup: eight simulated CPU devices, so sharding is tested on a laptop."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# With libtpu installed (the `tpu` extra, for the dry run's TPU compiler) JAX would also try to
# start a TPU backend; the tests run on CPU, and compile for TPU slices through topologies only.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# Must happen before JAX initialises its backend; test modules import JAX only after this file.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drops every compiled function after each test module. Each executable XLA compiles for
    the CPU holds a few hundred memory maps, and one process of the whole suite otherwise
    passes the kernel's limit (vm.max_map_count, 65530), where the compiler crashes."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(tokenizer, engine, PPM scorer, executor): the tiny random policy steered to write step
    tokens, a random tiny PPM and a real executor pool, for searches without downloaded weights."""
    from rstar_jax.engine import Engine, ValueScorer
    from rstar_jax.steps.executor import CodeExecutor
    from rstar_jax.testing import steered_tiny_policy, tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    engine = Engine(steered_tiny_policy(tokenizer, 0), vocab_size=tokenizer.vocab_size,
                    pad_id=tokenizer.pad_id)
    scorer = ValueScorer(steered_tiny_policy(tokenizer, 1, value_head=True),
                         pad_id=tokenizer.pad_id)
    with CodeExecutor(num_workers=2) as executor:
        yield tokenizer, engine, scorer, executor


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """(workdir, results) of the smoke evolution, run once for the tests that read a finished run."""
    from configs import tiny
    from rstar_jax import evolve

    workdir = tmp_path_factory.mktemp("smoke_run")
    return workdir, evolve.run(tiny.get_config("smoke"), workdir, progress=False)
