"""Decoder behaviour beyond parity: KV cache, attention kernels, value head, remat, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import checkpoints
from rstar_jax import CausalLM, ModelConfig, from_pretrained, save_pretrained
from rstar_jax.models import KVCache, read_config
from rstar_jax.models.attention import attend, segment_mask


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen2_gqa")
    checkpoints.save("qwen2_gqa", directory)
    return directory


@pytest.mark.parametrize("name", ["qwen2_gqa", "phi3_gqa_sliding"])
def test_prefill_then_decode_with_cache_matches_full_forward(tmp_path, name):
    checkpoints.save(name, tmp_path)
    model = from_pretrained(tmp_path)
    lengths = np.array([10, 6])
    steps = 5
    ids = checkpoints.token_ids(2, 10 + steps, seed=1)
    prompt = ids[:, :10].copy()
    prompt[1, 6:] = 0  # right padding of the shorter row: garbage the cache must hide

    cache = KVCache.zeros(model.config, batch=2, length=32, dtype=jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (2, 10))
    hidden, cache = model.hidden_states(jnp.asarray(prompt), positions, cache=cache)
    got = [np.asarray(model.logits(hidden))[[0, 1], lengths - 1]]
    for t in range(steps - 1):
        # Row b continues its own sequence ids[b], at its own position.
        pos = lengths + t
        next_ids = ids[[0, 1], pos]
        pos = jnp.asarray(pos, jnp.int32)[:, None]
        hidden, cache = model.hidden_states(jnp.asarray(next_ids[:, None]), pos, cache=cache)
        got.append(np.asarray(model.logits(hidden))[:, 0])

    for row, n in enumerate(lengths):
        full = np.asarray(model(jnp.asarray(ids[row:row + 1, :n + steps - 1])))[0]
        want = full[n - 1:n - 1 + steps]
        np.testing.assert_allclose(np.stack([g[row] for g in got]), want, atol=1e-4)


@pytest.mark.parametrize("name", ["qwen2_gqa", "phi3_gqa_sliding"])
def test_forked_samples_read_one_shared_prefix_and_match_full_forwards(tmp_path, name):
    """Prefill two ragged prefixes once (Collect), then three samples of each continue with their
    own tokens (ForkCache): every sample's logits equal a plain forward of its whole sequence.
    The sliding window (7 tokens) makes late samples stop reading the prefix's start."""
    checkpoints.save(name, tmp_path)
    model = from_pretrained(tmp_path)
    lengths, samples, steps = np.array([9, 4]), 3, 6
    prefix = checkpoints.token_ids(2, 9, seed=2)
    prefix[1, 4:] = 0  # right padding the cache must hide
    continuation = checkpoints.token_ids(2 * samples, steps, seed=3)  # row b*samples + s

    positions = jnp.broadcast_to(jnp.arange(9, dtype=jnp.int32), (2, 9))
    _, collected = model.hidden_states(jnp.asarray(prefix), positions,
                                       cache=KVCache.collect(model.config, jnp.float32))
    cache = KVCache.fork(collected, jnp.asarray(lengths), samples=samples, length=8)
    starts = np.repeat(lengths, samples)
    got = []
    for t in range(steps):
        hidden, cache = model.hidden_states(jnp.asarray(continuation[:, t:t + 1]),
                                            jnp.asarray(starts + t, jnp.int32)[:, None],
                                            cache=cache)
        got.append(np.asarray(model.logits(hidden))[:, 0])
    got = np.stack(got, axis=1)  # [rows, steps, V]

    for row in range(2 * samples):
        b = row // samples
        sequence = np.concatenate([prefix[b, :lengths[b]], continuation[row]])
        want = np.asarray(model(jnp.asarray(sequence[None])))[0, lengths[b]:]
        np.testing.assert_allclose(got[row], want, atol=1e-4)


def test_dot_product_attention_matches_xla_attention(qwen_dir):
    ids = jnp.asarray(checkpoints.token_ids(2, 24))
    xla = from_pretrained(qwen_dir, attention="xla")(ids)
    fused = from_pretrained(qwen_dir, attention="dot_product")(ids)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(xla), atol=1e-4)


def _plain_attention(q, k, v, allowed):
    """Attention written out in full, the specification the kernels are held to."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    scores = jnp.where(allowed[:, None], scores, -jnp.inf)
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v)


@pytest.mark.parametrize("window", [None, 50])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("implementation", ["xla", "dot_product"])
def test_causal_attention_kernels_match_attention_written_out(window, packed, implementation):
    b, t, h, k, d = 2, 300, 6, 2, 16  # 300 tokens: five query blocks, the last one ragged
    q, key, value = (jax.random.normal(jax.random.key(i), shape) for i, shape in
                     enumerate([(b, t, h, d), (b, t, k, d), (b, t, k, d)]))
    order = np.arange(t)
    allowed = order[None, :] <= order[:, None]
    if window:
        allowed &= order[:, None] - order[None, :] < window
    allowed = np.broadcast_to(allowed, (b, t, t))
    mask = None
    if packed:  # three sequences of 100 tokens in each row
        segments = jnp.asarray(np.repeat(order[None] // 100, b, axis=0))
        mask = segment_mask(segments)
        allowed = allowed & np.asarray(mask)
    got = attend(q, key, value, causal=True, window=window, mask=mask,
                 implementation=implementation)
    want = _plain_attention(q, key, value, jnp.asarray(allowed))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_remat_gives_the_same_gradients(qwen_dir):
    ids = jnp.asarray(checkpoints.token_ids(2, 16))

    def grads(remat):
        model = from_pretrained(qwen_dir, remat=remat)

        def loss(m):
            return jnp.mean(jax.nn.logsumexp(m(ids), axis=-1))

        return nnx.grad(loss)(model)

    def uses_remat(remat):
        graphdef, state = nnx.split(from_pretrained(qwen_dir, remat=remat))
        jaxpr = jax.make_jaxpr(jax.grad(lambda s: nnx.merge(graphdef, s)(ids).sum()))(state)
        return "remat" in str(jaxpr) or "checkpoint" in str(jaxpr)

    assert uses_remat(True) and not uses_remat(False)
    plain, rematted = grads(False), grads(True)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(rematted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_value_head_reads_the_last_real_token_of_each_row(qwen_dir):
    model = from_pretrained(qwen_dir, value_head=True)
    model.value_head[...] = jnp.asarray(np.random.RandomState(0).normal(size=(64, 1)), jnp.float32)
    ids = checkpoints.token_ids(2, 12)
    padded = ids.copy()
    padded[1, 7:] = 0
    scores = np.asarray(model.value(jnp.asarray(padded), jnp.asarray([12, 7])))
    alone = np.asarray(model.value(jnp.asarray(ids[1:, :7])))
    np.testing.assert_allclose(scores[1], alone[0], atol=1e-5)
    assert np.all(np.abs(scores) < 1) and scores[0] != scores[1]


def test_longrope_value_does_not_depend_on_padding(tmp_path):
    """The value head passes each row's real length to the rotary embedding: under longrope
    (factors switch past 16 tokens) a 10-token row scores the same padded to 12 or to 24."""
    checkpoints.save("phi3_longrope", tmp_path)
    # raw scores: tanh would saturate
    model = from_pretrained(tmp_path, value_head=True, value_tanh=False)
    model.value_head[...] = jax.random.normal(jax.random.key(0), model.value_head[...].shape)
    ids = checkpoints.token_ids(1, 10, seed=4)
    short, long = (np.pad(ids, ((0, 0), (0, width - 10))) for width in (12, 24))
    lengths = jnp.asarray([10])
    np.testing.assert_allclose(model.value(jnp.asarray(long), lengths),
                               model.value(jnp.asarray(short), lengths),
                               # raw scores are ~10: float32 sums differ by ~1e-5
                               rtol=1e-5, atol=1e-5)


def test_new_value_head_starts_at_zero_weights(qwen_dir):
    model = from_pretrained(qwen_dir, value_head=True, value_tanh=False)
    np.testing.assert_array_equal(np.asarray(model.value(jnp.asarray(checkpoints.token_ids(3, 9)))),
                                  0.0)


def test_value_head_is_saved_beside_the_model_and_reloaded(qwen_dir, tmp_path):
    model = from_pretrained(qwen_dir, value_head=True, value_tanh=False)
    model.value_head[...] = jnp.asarray(np.random.RandomState(1).normal(size=(64, 1)), jnp.float32)
    model.value_bias[...] = jnp.asarray([0.25])
    ids = jnp.asarray(checkpoints.token_ids(3, 9))
    save_pretrained(model, tmp_path)
    assert (tmp_path / "value_head.safetensors").exists()
    again = from_pretrained(tmp_path)
    assert again.has_value_head and not again.value_tanh
    scores = np.asarray(again.value(ids))
    np.testing.assert_allclose(scores, np.asarray(model.value(ids)), atol=1e-5)
    assert np.ptp(scores) > 0.1  # the random weights, not a constant


def test_value_model_without_lm_head_refuses_logits(qwen_dir):
    model = from_pretrained(qwen_dir, lm_head=False, value_head=True)
    assert not hasattr(model, "lm_head")
    with pytest.raises(ValueError, match="without an LM head"):
        model(jnp.zeros((1, 4), jnp.int32))


def test_model_built_from_scratch_saves_and_reloads(tmp_path):
    config = ModelConfig(model_type="llama", vocab_size=128, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, tie_word_embeddings=True)
    model = CausalLM(config, rngs=nnx.Rngs(3))
    save_pretrained(model, tmp_path)
    assert read_config(tmp_path) == config
    ids = jnp.asarray(checkpoints.token_ids(2, 8) % 128)
    np.testing.assert_allclose(np.asarray(from_pretrained(tmp_path)(ids)), np.asarray(model(ids)),
                               atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model_type="qwen2", qkv_bias=False), "qwen2 q/k/v only"),
    (dict(model_type="llama", qkv_bias=True), "llama has q/k/v/o biases together"),
    (dict(model_type="phi3", mlp_bias=True), "phi3 none"),
    (dict(model_type="llama", sliding_windows=(4, 8)), r"different sliding windows \[4, 8\]"),
])
def test_configs_no_checkpoint_can_hold_are_refused(kwargs, message):
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                qkv_bias=kwargs.get("model_type") == "qwen2")
    with pytest.raises(ValueError, match=message):
        ModelConfig(**(base | kwargs))


def test_phi3_longrope_is_saved_in_the_layout_phi3_checkpoints_use(tmp_path):
    checkpoints.save("phi3_longrope", tmp_path / "theirs")
    save_pretrained(from_pretrained(tmp_path / "theirs"), tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert set(config["rope_scaling"]) == {"type", "short_factor", "long_factor"}
    assert config["rope_scaling"]["type"] == "longrope" and config["original_max_position_embeddings"] == 16
    assert read_config(tmp_path / "ours") == read_config(tmp_path / "theirs")


def test_remote_paths_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="not a local directory; copy the checkpoint"):
        from_pretrained("gs://bucket/model")


def test_param_count_matches_the_parameters():
    config = ModelConfig(model_type="qwen2", vocab_size=100, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, qkv_bias=True)
    model = CausalLM(config, rngs=nnx.Rngs(0))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert config.num_params() == count


# ---------------------------------------------------------------- errors that speak to the user


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nowhere")


def test_missing_config_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        from_pretrained(tmp_path)


def test_missing_weights_are_named(qwen_dir, tmp_path):
    (tmp_path / "config.json").write_text((qwen_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor"):
        from_pretrained(tmp_path)


def test_unsupported_model_type_lists_the_supported_ones(qwen_dir, tmp_path):
    config = json.loads((qwen_dir / "config.json").read_text()) | {"model_type": "gpt2"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'gpt2'.*llama, qwen2, phi3"):
        from_pretrained(tmp_path)


def test_shape_mismatch_names_the_tensor_and_both_shapes(qwen_dir, tmp_path):
    config = json.loads((qwen_dir / "config.json").read_text()) | {"intermediate_size": 128}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(qwen_dir / "model.safetensors")
    with pytest.raises(ValueError,
                       match=r"model\.layers\.0\.mlp\.down_proj\.weight.*\(64, 96\).*\(64, 128\)"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_give_the_same_logits_and_gradients(tmp_path, remat):
    # Five layers, windows None, None, 7, 7, None: three runs of identical blocks (2, 2 and 1),
    # on packed rows, so the scan's grouping, order and segment masks are all exercised.
    checkpoints.save("qwen2_sliding", tmp_path)
    config = read_config(tmp_path).replace(num_hidden_layers=5,
                                           sliding_windows=(None, None, 7, 7, None))
    ids = jnp.asarray(checkpoints.token_ids(2, 16))
    segments = jnp.asarray(np.repeat([[1] * 10 + [2] * 6], 2, axis=0), jnp.int32)
    positions = jnp.asarray(np.repeat([list(range(10)) + list(range(6))], 2, axis=0), jnp.int32)

    def run(scan):
        model = CausalLM(config, remat=remat, scan_layers=scan, rngs=nnx.Rngs(3))

        def loss(m):
            logits = m(ids, positions, segments)
            return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 5]), logits

        (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        return logits, grads, model

    plain_logits, plain_grads, _ = run(False)
    logits, grads, model = run(True)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(plain_logits), atol=2e-5)
    for a, b in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-6)
    graphdef, state = nnx.split(model)
    jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids))(state))
    assert jaxpr.count("scan[") == 3  # one scan per run of identical blocks
    # With a KV cache (decoding) the layers run one by one as before: the cache is per layer.
    plain_positions = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (2, 16))
    hidden, cache = model.hidden_states(ids, plain_positions,
                                        cache=KVCache.zeros(config, 2, 32, jnp.float32))
    assert len(cache.layers) == 5
    np.testing.assert_allclose(np.asarray(model.logits(hidden)), np.asarray(model(ids)), atol=2e-5)
