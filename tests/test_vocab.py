"""Adding the step tokens to a checkpoint: stable ids, new rows at the mean embedding."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import checkpoints
from rstar_jax import CausalLM, ModelConfig, from_pretrained, save_pretrained
from rstar_jax.models import make_mesh
from rstar_jax.models.vocab import add_step_tokens
from rstar_jax.tokenizer import STEP_TOKENS, Tokenizer


def _bpe_tokenizer(directory, vocab_size):
    checkpoints.bpe_tokenizer_dir(directory, vocab_size,
                                  ["total = 2 * 20 * 12\nprint(total)\n"] * 10)
    return Tokenizer.from_dir(directory)


def _model(vocab_size, tie=False, seed=0):
    config = ModelConfig(model_type="qwen2", vocab_size=vocab_size, hidden_size=32,
                         intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, qkv_bias=True, tie_word_embeddings=tie)
    return CausalLM(config, rngs=nnx.Rngs(seed))


def test_new_tokens_take_free_rows_initialised_to_the_mean(tmp_path):
    tokenizer = _bpe_tokenizer(tmp_path, 262)
    model = _model(384)
    before_embed, before_head = np.asarray(model.embed[...]), np.asarray(model.lm_head[...])
    ids = add_step_tokens(model, tokenizer)
    assert list(ids.values()) == list(range(262, 269))
    assert model.config.vocab_size == 384  # they fit: no growth
    embed = np.asarray(model.embed[...])
    np.testing.assert_allclose(embed[262:269], np.broadcast_to(before_embed[:262].mean(0), (7, 32)),
                               atol=1e-6)
    np.testing.assert_array_equal(embed[:262], before_embed[:262])
    np.testing.assert_array_equal(embed[269:], before_embed[269:])
    np.testing.assert_allclose(np.asarray(model.lm_head[...])[:, 262], before_head[:, :262].mean(1),
                               atol=1e-6)


def test_tables_grow_to_a_multiple_of_128_when_ids_do_not_fit(tmp_path):
    tokenizer = _bpe_tokenizer(tmp_path, 256)
    model = _model(256, tie=True)
    before = np.asarray(model.embed[...])
    ids = add_step_tokens(model, tokenizer)
    assert max(ids.values()) == 262
    assert model.embed[...].shape == (384, 32) and model.config.vocab_size == 384
    embed = np.asarray(model.embed[...])
    np.testing.assert_array_equal(embed[:256], before)
    np.testing.assert_allclose(embed[256:], np.broadcast_to(before.mean(0), (128, 32)), atol=1e-6)
    logits = model(jnp.asarray([[ids["<code>"], 5, ids["<end_of_step>"]]]))
    assert logits.shape == (1, 3, 384)


def test_ids_and_rows_survive_saving_both(tmp_path):
    tokenizer = _bpe_tokenizer(tmp_path, 256)
    model = _model(256)
    ids = add_step_tokens(model, tokenizer)
    save_pretrained(model, tmp_path / "ckpt")
    tokenizer.save(tmp_path / "ckpt")
    again_tokenizer = Tokenizer.from_dir(tmp_path / "ckpt")
    again = from_pretrained(tmp_path / "ckpt")
    assert add_step_tokens(again, again_tokenizer) == ids  # nothing new: no rows touched
    np.testing.assert_array_equal(np.asarray(again.embed[...]), np.asarray(model.embed[...]))
    assert again_tokenizer.encode("<code>x<end_of_step>")[0] == ids["<code>"]


def test_sharded_model_stays_sharded_after_growing(tmp_path):
    tokenizer = _bpe_tokenizer(tmp_path, 256)
    model = _model(256)
    save_pretrained(model, tmp_path / "ckpt")
    model = from_pretrained(tmp_path / "ckpt", mesh=make_mesh({"data": 1, "fsdp": 4, "tensor": 2}))
    add_step_tokens(model, tokenizer)
    assert model.lm_head[...].shape == (32, 384)
    assert model.lm_head[...].sharding.spec == P("fsdp", "tensor")


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    tokenizer = _bpe_tokenizer(tmp_path, 300)
    with pytest.raises(ValueError, match=r"has 2[6-9]\d ids but the model only 256 rows"):
        add_step_tokens(_model(256), tokenizer)
    assert all(tokenizer.token_to_id(t) is None for t in STEP_TOKENS)  # nothing changed
