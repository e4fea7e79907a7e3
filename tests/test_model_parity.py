"""Our decoder reproduces transformers' logits, and checkpoints move both ways."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import checkpoints
from rstar_jax import from_pretrained, save_pretrained


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (checkpoint dir, transformers model)."""
    out = {}
    for name in checkpoints.CASES:
        directory = tmp_path_factory.mktemp(name)
        out[name] = (directory, checkpoints.save(name, directory))
    return out


@pytest.mark.parametrize("name", list(checkpoints.CASES))
def test_float32_logits_match_transformers(saved, name):
    directory, reference = saved[name]
    ids = checkpoints.token_ids(2, 100)  # long enough for two blocks of causal attention
    ours = np.asarray(from_pretrained(directory, dtype=jnp.float32)(jnp.asarray(ids)))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, checkpoints.logits(reference, ids), atol=1e-4, rtol=0)


def test_longrope_uses_short_factors_within_the_original_length(saved):
    directory, reference = saved["phi3_longrope"]
    ids = checkpoints.token_ids(2, 12)  # original_max_position_embeddings is 16
    ours = np.asarray(from_pretrained(directory)(jnp.asarray(ids)))
    np.testing.assert_allclose(ours, checkpoints.logits(reference, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama", "qwen2_gqa", "phi3"])
def test_bfloat16_is_as_close_to_float32_as_transformers_bfloat16(saved, name):
    directory, reference = saved[name]
    ids = checkpoints.token_ids(2, 40)
    exact = checkpoints.logits(reference, ids)
    theirs = checkpoints.logits(checkpoints.build(name).to(torch.bfloat16), ids)
    ours = np.asarray(from_pretrained(directory, dtype=jnp.bfloat16)(jnp.asarray(ids)))
    assert ours.dtype == np.float32  # logits are float32 whatever the compute dtype
    assert np.abs(ours - exact).mean() <= 1.3 * np.abs(theirs - exact).mean()
    assert np.abs(ours - exact).max() <= 0.5


def test_bfloat16_params_with_float32_compute(saved):
    directory, reference = saved["qwen2_gqa"]
    model = from_pretrained(directory, dtype=jnp.float32, param_dtype=jnp.bfloat16)
    assert model.layers[0].attn.q_proj[...].dtype == jnp.bfloat16
    ids = checkpoints.token_ids(1, 16)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))),
                               checkpoints.logits(reference, ids), atol=0.3)


@pytest.mark.parametrize("name", ["llama_bias_llama3_rope", "qwen2_tied", "phi3_longrope"])
def test_saved_checkpoint_loads_in_transformers_with_same_logits(saved, tmp_path, name):
    directory, _ = saved[name]
    model = from_pretrained(directory)
    save_pretrained(model, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = checkpoints.token_ids(2, 24)
    np.testing.assert_allclose(checkpoints.logits(reloaded, ids),
                               np.asarray(model(jnp.asarray(ids))), atol=1e-4)


def test_multi_file_checkpoints_load_and_save(saved, tmp_path):
    _, reference = saved["phi3"]
    reference.save_pretrained(tmp_path / "theirs", max_shard_size="100KB")
    assert (tmp_path / "theirs" / "model.safetensors.index.json").exists()
    model = from_pretrained(tmp_path / "theirs")
    ids = checkpoints.token_ids(2, 16)
    expected = checkpoints.logits(reference, ids)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), expected, atol=1e-4)

    save_pretrained(model, tmp_path / "ours", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    np.testing.assert_allclose(checkpoints.logits(reloaded, ids), expected, atol=1e-4)
