"""The generation engine: parity with transformers, stopping, fan-out, sampling, sharding."""

import checkpoints
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch

from rstar_jax import Engine, from_pretrained, generate
from rstar_jax.engine import generation, prompt_bucket, sampling, value
from rstar_jax.models import make_mesh

PROMPT_LENGTHS = (5, 11, 17)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen2_gqa")
    reference = checkpoints.save("qwen2_gqa", directory)
    return directory, reference, from_pretrained(directory)


def _prompts(seed: int = 0) -> list[list[int]]:
    return [checkpoints.token_ids(1, n, seed=seed + n)[0].tolist() for n in PROMPT_LENGTHS]


def _hf_greedy(reference, prompt, new_tokens):
    reference.generation_config.eos_token_id = None
    ids = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        out = reference.generate(ids, do_sample=False, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=0)
    return out[0, len(prompt):].numpy()


def _model_logprobs(model, prompt, tokens):
    """log softmax of a full forward over prompt + tokens, at each of the tokens."""
    sequence = np.array(prompt + list(tokens))
    logits = np.asarray(model(jnp.asarray(sequence[None])), np.float64)[0, len(prompt) - 1:-1]
    return logits[np.arange(len(tokens)), tokens] - scipy.special.logsumexp(logits, axis=-1)


@pytest.mark.parametrize("name", ["llama", "qwen2_gqa", "qwen2_tied", "phi3", "phi3_gqa_sliding"])
def test_greedy_tokens_equal_transformers_generate(tmp_path, name):
    """Ragged prompts in one batch, 32 new tokens each; transformers generates each row alone."""
    reference = checkpoints.save(name, tmp_path)
    prompts = _prompts()
    res = generate(from_pretrained(tmp_path), prompts, max_new_tokens=32)
    assert res.tokens.shape == (3, 32) and res.tokens.dtype == np.int32
    np.testing.assert_array_equal(res.lengths, [32, 32, 32])
    for row, prompt in enumerate(prompts):
        np.testing.assert_array_equal(res.tokens[row], _hf_greedy(reference, prompt, 32),
                                      err_msg=f"row {row}")


def test_stop_tokens_end_each_row_and_nothing_after_is_returned(qwen):
    _, _, model = qwen
    prompts = _prompts()
    free = generate(model, prompts, max_new_tokens=24).tokens
    # Stop at row 0's 4th token and row 1's 10th: each row ends at its first occurrence of either.
    stops = (int(free[0, 3]), int(free[1, 9]))
    res = generate(model, prompts, max_new_tokens=24, stop_token_ids=stops, pad_id=0)
    for row in range(3):
        hits = [t for t in range(24) if free[row, t] in stops]
        length = hits[0] + 1 if hits else 24
        assert res.lengths[row] == length
        np.testing.assert_array_equal(res.tokens[row, :length], free[row, :length])
        assert (res.tokens[row, length:] == 0).all()
    assert res.lengths[0] <= 4 and res.lengths[1] <= 10


def test_the_loop_exits_once_every_row_has_stopped(qwen):
    _, _, model = qwen
    prompts = _prompts()
    free = generate(model, prompts, max_new_tokens=8).tokens
    res = generate(model, prompts, max_new_tokens=200,
                   stop_token_ids=sorted(set(free[:, :3].ravel().tolist())))
    assert res.lengths.max() <= 3
    assert res.steps == res.lengths.max()


def test_padded_array_with_lengths_equals_ragged_lists(qwen):
    _, _, model = qwen
    prompts = _prompts()
    padded = np.zeros((3, 17), np.int32)
    for row, prompt in enumerate(prompts):
        padded[row, :len(prompt)] = prompt
    ragged = generate(model, prompts, max_new_tokens=6, temperature=1.0, seed=3)
    array = generate(model, padded, max_new_tokens=6, temperature=1.0, seed=3,
                     prompt_lengths=PROMPT_LENGTHS)
    np.testing.assert_array_equal(array.tokens, ragged.tokens)


def test_fan_out_samples_do_not_depend_on_the_rest_of_the_batch(qwen):
    """Row b*K + k is sample k of prompt b, drawn with its prompt's seed: the same samples whether
    the prompt is alone or batched with others (and whatever the buckets)."""
    _, _, model = qwen
    a, b, c = _prompts()
    alone = generate(model, [b], max_new_tokens=10, temperature=1.0, seed=11, num_samples=4)
    batched = generate(model, [a, b, c], max_new_tokens=10, temperature=1.0, seed=[7, 11, 13],
                       num_samples=4)
    assert batched.tokens.shape == (12, 10)
    np.testing.assert_array_equal(batched.tokens[4:8], alone.tokens)
    assert len({tuple(row) for row in alone.tokens}) > 1  # the samples differ from one another
    greedy = generate(model, [a, b], max_new_tokens=10, num_samples=3)
    np.testing.assert_array_equal(greedy.tokens[:3],
                                  np.repeat(generate(model, [a], 10).tokens, 3, axis=0))


def test_fan_out_rows_stop_on_their_own_and_keep_their_draws(qwen):
    """Stopping changes nothing before a row's stop: the draws of a row depend only on its key
    and step. After the stop: padding, and log-probabilities of 0."""
    _, _, model = qwen
    prompt = _prompts()[1]
    free = generate(model, [prompt], max_new_tokens=16, temperature=1.0, seed=9, num_samples=6)
    stops = (int(free.tokens[0, 2]), int(free.tokens[3, 5]))
    res = generate(model, [prompt], max_new_tokens=16, temperature=1.0, seed=9, num_samples=6,
                   stop_token_ids=iter(stops), return_logprobs=True)
    assert res.lengths.min() < 16
    for row in range(6):
        hits = [t for t in range(16) if free.tokens[row, t] in stops]
        length = hits[0] + 1 if hits else 16
        assert res.lengths[row] == length
        np.testing.assert_array_equal(res.tokens[row, :length], free.tokens[row, :length])
        assert (res.tokens[row, length:] == 0).all() and (res.logprobs[row, length:] == 0).all()
        assert (res.logprobs[row, :length] < 0).all()


def test_greedy_and_sampled_prompts_share_a_batch(qwen):
    _, _, model = qwen
    a, b, _ = _prompts()
    res = generate(model, [a, b], max_new_tokens=8, temperature=[0.0, 1.0], top_k=[0, 50],
                   top_p=[1.0, 0.9], seed=[1, 2], num_samples=4)
    np.testing.assert_array_equal(res.tokens[:4],
                                  np.repeat(generate(model, [a], 8).tokens, 4, axis=0))
    assert len({tuple(row) for row in res.tokens[4:]}) > 1


def test_later_tokens_are_drawn_from_the_softmax_given_the_earlier_ones(qwen):
    """The second token of the samples whose first token is the most common one, against the
    model's softmax after prompt + that token: checks the draws inside the decode loop."""
    _, _, model = qwen
    prompt = _prompts()[0]
    res = generate(model, [prompt], max_new_tokens=2, temperature=1.0, num_samples=6000, seed=4)
    first = np.bincount(res.tokens[:, 0]).argmax()
    second = res.tokens[res.tokens[:, 0] == first, 1]
    assert second.size > 300
    logits = np.asarray(model(jnp.asarray([prompt + [int(first)]])), np.float64)[0, -1]
    probs = np.exp(logits - logits.max())
    assert _chi_square_p(np.bincount(second, minlength=probs.size), probs / probs.sum()) > 1e-3


def test_a_fixed_seed_gives_the_same_samples(qwen):
    _, _, model = qwen
    prompts = _prompts()
    first = generate(model, prompts, 12, temperature=1.0, top_p=0.9, top_k=20, seed=5)
    again = generate(model, prompts, 12, temperature=1.0, top_p=0.9, top_k=20, seed=5)
    other = generate(model, prompts, 12, temperature=1.0, top_p=0.9, top_k=20, seed=6)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert (first.tokens != other.tokens).any()


def _chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """p-value of the counts under probs, pooling tokens expected fewer than 5 times into one bin."""
    expected = probs * counts.sum()
    small = expected < 5
    obs, exp = counts[~small], expected[~small]
    if small.any():
        obs, exp = np.append(obs, counts[small].sum()), np.append(exp, expected[small].sum())
    return scipy.stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_first_tokens_follow_the_softmax(qwen, temperature):
    _, _, model = qwen
    prompt = _prompts()[1]
    logits = np.asarray(model(jnp.asarray([prompt])), np.float64)[0, -1] / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    res = generate(model, [prompt], max_new_tokens=1, temperature=temperature, num_samples=4000,
                   seed=1)
    counts = np.bincount(res.tokens[:, 0], minlength=probs.size)
    assert _chi_square_p(counts, probs) > 1e-3


# Probabilities 0.3, 0.25, 0.2, 0.1, 0.08, 0.05 and 0.02 spread over 250 tokens.
_PROBS = np.concatenate([[0.3, 0.25, 0.2, 0.1, 0.08, 0.05], np.full(250, 0.02 / 250)])


def _draws(logits, n=6000, **params):
    rows = np.repeat(logits[None], n, axis=0)
    uniform = jax.random.uniform(jax.random.key(0), (n,))
    defaults = dict(temperature=1.0, top_k=0, top_p=1.0)
    defaults.update(params)
    args = {k: jnp.full((n,), v, jnp.int32 if k == "top_k" else jnp.float32)
            for k, v in defaults.items()}
    return np.asarray(jax.jit(sampling.sample)(jnp.asarray(rows, jnp.float32), uniform, **args))


@pytest.mark.parametrize("params, support", [
    (dict(top_k=3), [0, 1, 2]),
    (dict(top_k=1), [0]),
    (dict(top_p=0.7), [0, 1, 2]),  # 0.3 + 0.25 + 0.2 = 0.75 is the first to reach 0.7
    (dict(top_p=0.76), [0, 1, 2, 3]),
    (dict(top_p=0.3), [0]),
    (dict(top_k=2, top_p=0.5), [0]),  # top-p over what top-k kept: 0.3 / 0.55 > 0.5
    (dict(top_k=4, top_p=0.9), [0, 1, 2, 3]),
])
def test_top_k_and_top_p_keep_exactly_their_support(params, support):
    shuffled = np.random.RandomState(0).permutation(_PROBS.size)  # tokens in no particular order
    logits = np.log(_PROBS)[np.argsort(shuffled)]
    tokens = _draws(logits, **params)
    kept = shuffled[support]  # token shuffled[i] has probability _PROBS[i]
    assert set(tokens.tolist()) == set(kept.tolist())
    probs = np.zeros(_PROBS.size)
    probs[kept] = _PROBS[support] / _PROBS[support].sum()
    if len(kept) > 1:
        assert _chi_square_p(np.bincount(tokens, minlength=probs.size)[kept], probs[kept]) > 1e-3


def test_plain_sampling_reaches_the_tail_and_never_a_zero_probability_token():
    logits = np.log(_PROBS)
    logits[10] = -np.inf
    tokens = _draws(logits, n=20000)
    assert 10 not in tokens
    assert (tokens >= 6).any()  # the 0.02 tail is drawn
    assert _chi_square_p(np.bincount(tokens[tokens < 6], minlength=6),
                         _PROBS[:6] / _PROBS[:6].sum()) > 1e-3


def test_greedy_takes_the_first_of_tied_maxima():
    logits = jnp.asarray([[0.0, 2.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    np.testing.assert_array_equal(sampling.greedy(logits), [1, 0])


def test_ties_at_the_top_k_boundary_are_all_kept():
    logits = np.log(np.array([0.4, 0.2, 0.2, 0.1, 0.1]))
    assert set(_draws(logits, top_k=2).tolist()) == {0, 1, 2}


def test_logprobs_are_the_models_log_softmax_of_each_token(qwen):
    _, _, model = qwen
    prompt = _prompts()[0]
    res = generate(model, [prompt], max_new_tokens=8, temperature=1.0, seed=2, return_logprobs=True)
    np.testing.assert_allclose(res.logprobs[0], _model_logprobs(model, prompt, res.tokens[0]),
                               atol=1e-4)


def test_bfloat16_engine_keeps_a_bfloat16_cache_and_the_float32_distribution(qwen):
    directory, _, model = qwen
    engine = Engine(from_pretrained(directory, dtype=jnp.bfloat16))
    prompt = _prompts()[2]
    res = engine.generate([prompt], max_new_tokens=8, temperature=1.0, seed=2, return_logprobs=True)
    assert engine._buffers[0][0].dtype == jnp.bfloat16
    np.testing.assert_allclose(res.logprobs[0], _model_logprobs(model, prompt, res.tokens[0]),
                               atol=0.15)


def test_ids_at_or_above_the_tokenizer_vocabulary_are_never_generated(qwen):
    _, _, model = qwen
    res = generate(model, _prompts(), max_new_tokens=16, temperature=2.0, num_samples=8,
                   vocab_size=100)
    assert res.tokens.max() < 100
    greedy = generate(model, _prompts(), max_new_tokens=16, vocab_size=100)
    assert greedy.tokens.max() < 100


def test_sharded_generation_equals_one_device(qwen):
    directory, _, model = qwen
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = from_pretrained(directory, mesh=mesh)
    engine = Engine(sharded)
    assert engine.mesh is mesh
    for params in (dict(), dict(temperature=1.0, seed=4, num_samples=2)):
        want = generate(model, _prompts(), max_new_tokens=12, **params)
        got = engine.generate(_prompts(), max_new_tokens=12, **params)
        np.testing.assert_array_equal(got.tokens, want.tokens)
        np.testing.assert_array_equal(got.lengths, want.lengths)
    leaf = engine._buffers[0][0]
    assert leaf.sharding.spec[0] == ("data", "fsdp") and leaf.sharding.spec[1] == "tensor"


@pytest.mark.parametrize("shape", [{"data": 2, "fsdp": 2, "tensor": 2},
                                   {"data": 1, "fsdp": 8, "tensor": 1},
                                   {"data": 1, "fsdp": 1, "tensor": 8}])
def test_a_sharded_engine_compiles_each_shape_once(qwen, shape):
    """The KV buffer it places on the mesh comes back from the loop with an equal sharding, so
    the next call of the same shape reuses the compiled loop (size-1 axes included)."""
    directory, _, _ = qwen
    engine = Engine(from_pretrained(directory, mesh=make_mesh(shape)))
    compiled = generation._decode._cache_size()
    for _ in range(3):
        engine.generate(_prompts(), max_new_tokens=20, num_samples=2)
    assert generation._decode._cache_size() == compiled + 1


def test_longrope_rows_pick_their_factors_from_their_own_length(tmp_path):
    """phi3_longrope switches to its long factors past 16 tokens. A row that may grow past that
    uses them from its first token, whatever else is in the batch; one that cannot, never."""
    reference = checkpoints.save("phi3_longrope", tmp_path)
    model = from_pretrained(tmp_path)
    short, long = _prompts()[0], _prompts()[2]  # 5 and 17 tokens
    alone = generate(model, [short], max_new_tokens=8)  # 13 <= 16: short factors, as transformers
    np.testing.assert_array_equal(alone.tokens[0], _hf_greedy(reference, short, 8))
    batched = generate(model, [short, long], max_new_tokens=8)
    np.testing.assert_array_equal(batched.tokens[0], alone.tokens[0])
    # 17 + 8 > 16: every position of the long row uses the long factors, as a full forward does.
    sequence = np.array(long + batched.tokens[1].tolist())
    logits = np.asarray(model(jnp.asarray(sequence[None])))[0, len(long) - 1:-1]
    np.testing.assert_array_equal(batched.tokens[1], logits.argmax(-1))


def test_an_engine_donates_its_kv_buffer_and_bucketing_reuses_compiled_steps(qwen):
    _, _, model = qwen
    engine = Engine(model)
    engine.generate([[5] * 5, [6] * 9], max_new_tokens=5)
    first = engine._buffers[0][0]
    compiled = generation._decode._cache_size(), generation._prefill._cache_size()
    # Same buckets: 2 prompts -> batch 2, lengths 7 and 12 -> 16, 7 new tokens -> 8.
    engine.generate([[7] * 7, [8] * 12], max_new_tokens=7, temperature=1.0, top_p=0.5)
    assert first.is_deleted()  # donated to the decode loop, not copied
    assert (generation._decode._cache_size(), generation._prefill._cache_size()) == compiled
    engine.release()
    assert engine._buffers is None


@pytest.mark.parametrize("store_rows", [4, 2])
def test_the_prefix_store_gives_the_tokens_a_full_prefill_gives(qwen, store_rows):
    """Prompts that grow, branch and swap places: each call runs only what no held prompt
    shares, and the tokens equal those of an engine that prefills every prompt whole, also
    with fewer rows than prompts (some miss and are not kept)."""
    _, _, model = qwen
    plain, stored = Engine(model), Engine(model, prefix_rows=store_rows)
    rng = np.random.default_rng(0)
    prompts = _prompts()
    for step in range(4):
        prompts = [p + rng.integers(3, 200, size=3 + step).tolist() for p in prompts]
        if step == 2:
            prompts[1] = prompts[1][:6] + [9, 9]  # a branch: the row keeps only the shared start
        if step == 3:
            prompts = prompts[::-1]
        for params in (dict(), dict(temperature=1.0, seed=[4, 5, 6], num_samples=2)):
            want = plain.generate(prompts, max_new_tokens=8, **params)
            got = stored.generate(prompts, max_new_tokens=8, **params)
            np.testing.assert_array_equal(got.tokens, want.tokens, err_msg=f"step {step}, {params}")
        held = [h.tolist() for h in stored.store.held]
        assert sum(p in held for p in prompts) == min(store_rows, len(prompts))


@pytest.mark.parametrize("name", ["phi3_gqa_sliding", "phi3_longrope"])
def test_packed_children_score_as_their_whole_sequences(tmp_path, name):
    """score_children packs several children into a row, a prefix's children over as many rows
    as they fill: each child's value equals that of its whole sequence run alone (with the rope
    length longrope is given for children padded to the row width), with and without a prefix
    store. phi3_gqa_sliding's 7-token window makes late tokens stop reading the prefix;
    phi3_longrope's prefixes pass its 16 original positions."""
    checkpoints.save(name, tmp_path)
    model = from_pretrained(tmp_path, value_head=True)
    shape = model.value_head[...].shape  # values of order one, where tanh hides no error
    model.value_head[...] = jax.random.normal(jax.random.key(0), shape) / np.sqrt(shape[0])
    rng = np.random.default_rng(0)
    prefixes = [rng.integers(3, 200, size=n).tolist() for n in (5, 12, 20)]
    sizes = [[1, 9, 3, 4, 2], [7], [2, 2, 9, 6, 1, 8, 3, 5]]
    children = [[rng.integers(3, 200, size=n).tolist() for n in kids] for kids in sizes]
    width = prompt_bucket(9)
    rows = [len(value.fit_children([np.zeros(n) for n in kids], width)) for kids in sizes]
    assert rows == [2, 1, 3]  # children share rows, and a prefix fills more than one

    def alone(prefix, child):
        ids = jnp.asarray([prefix + child], jnp.int32)
        hidden, _ = model.hidden_states(ids, rope_lengths=jnp.asarray([len(prefix) + width]))
        return float(model.value_of(hidden[0, -1]))

    want = [[alone(p, c) for c in kids] for p, kids in zip(prefixes, children)]
    for store_rows in (0, 2):
        scorer = value.ValueScorer(model, max_rows=4, prefix_rows=store_rows)
        for _ in range(2):  # the second time, a store holds the prefixes
            got = scorer.score_children(prefixes, children)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, atol=1e-5, err_msg=f"store rows {store_rows}")
    # max_rows = 4 splits the prefixes into calls of 2 and 1 (3 rows each)
    assert scorer.counts.calls == 4


@pytest.mark.parametrize("rows, max_rows, prefix_cost, want", [
    ([3] * 27, 1024, 0, [63, 18]),  # 64 + 32 + a call's cost < 128 rows
    ([3] * 11, 1024, 0, [30, 3]),
    ([5] * 4, 1024, 0, [20]),  # 16 + 8 + a call's cost: no fewer than 32
    ([9], 1024, 0, [9]),
    ([40, 40, 40], 64, 0, [40, 40, 40]),  # one prefix's rows, however many, run together
    ([3] * 6, 8, 0, [6, 6, 6]),
    ([5] * 8, 1024, 0, [30, 10]),
    ([5] * 8, 1024, 8, [40]),  # prefixes run whole: 8 padded prefixes, not 8 + 2
])
def test_row_groups_pad_few_rows(rows, max_rows, prefix_cost, want):
    groups = value.row_groups(rows, max_rows, prefix_cost=prefix_cost)
    assert [sum(rows[i] for i in g) for g in groups] == want
    assert sorted(i for g in groups for i in g) == list(range(len(rows)))


def test_children_cut_into_several_calls_score_as_their_whole_sequences(tmp_path):
    """Children filling 35 rows (a prefix with none) go in two calls through a prefix store,
    the 4-row prefix on its own as first fit skips it; each value is still its whole
    sequence's, with or without a store."""
    checkpoints.save("qwen2_gqa", tmp_path)
    model = from_pretrained(tmp_path, value_head=True)
    shape = model.value_head[...].shape
    model.value_head[...] = jax.random.normal(jax.random.key(0), shape) / np.sqrt(shape[0])
    rng = np.random.default_rng(1)
    counts = [0] + [3] * 10 + [4, 1]  # children of 16 tokens, a row each
    prefixes = [rng.integers(3, 200, size=4 + b).tolist() for b in range(len(counts))]
    children = [[rng.integers(3, 200, size=16).tolist() for _ in range(n)] for n in counts]
    want = value.ValueScorer(model).score([p + c for p, kids in zip(prefixes, children)
                                           for c in kids])
    for store_rows in (4, 0):
        scorer = value.ValueScorer(model, max_rows=64, prefix_rows=store_rows)
        got = scorer.score_children(prefixes, children)
        assert [len(g) for g in got] == counts
        if store_rows:
            assert (scorer.counts.calls, scorer.counts.scored_slots) == (2, (32 + 8) * 16)
        np.testing.assert_allclose(np.concatenate(got), want, atol=1e-5,
                                   err_msg=f"store rows {store_rows}")


def test_the_prefix_store_runs_only_the_new_tokens(qwen, monkeypatch):
    _, _, model = qwen
    engine = Engine(model, prefix_rows=2)
    seen = []
    real = generation._extend

    def spy(*args, **kwargs):
        seen.append(np.asarray(args[7]).tolist())  # the new tokens' lengths
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "_extend", spy)
    prompt = _prompts()[2]
    engine.generate([prompt], max_new_tokens=4)
    engine.generate([prompt + [7, 8, 9]], max_new_tokens=4)
    # the same prompt: its last token; a branch: what follows the shared start
    engine.generate([prompt + [7, 8, 9]], max_new_tokens=4)
    engine.generate([prompt + [7, 5]], max_new_tokens=4)
    assert seen == [[len(prompt)], [3], [1], [1]]
    # a prompt longer than the store runs without it
    short = Engine(model, prefix_rows=1, prefix_length=16)
    np.testing.assert_array_equal(short.generate([prompt], max_new_tokens=4).tokens,
                                  Engine(model).generate([prompt], max_new_tokens=4).tokens)
    assert len(prompt) > 16 and not len(short.store.held[0])


def test_the_prefix_store_extends_forks_and_evicts_rows(qwen):
    """Which row each prompt reads and writes: a prompt that extends a row goes in place; a
    branch forks into the least recently used row (a copy of the shared start) when that row is
    older than the one it branches from, and keeps the path it left; pinned rows are never
    written; a prompt with no row left runs whole, or from the start it reads, and is kept
    nowhere."""
    from rstar_jax.engine.generation import PrefixStore

    _, _, model = qwen
    store = PrefixStore(model, rows=3)
    a, b = np.arange(3, 13), np.arange(20, 26)

    def plan(prompts, **options):
        out, copies = store.plan([np.asarray(p) for p in prompts], 4, 0, **options)
        for r, prompt in zip(out.rows, prompts):  # as `run` records a call
            if r >= 0:
                store.held[r] = np.asarray(prompt)
        n = len(prompts)
        return ([out.reads[:n].tolist(), out.rows[:n].tolist(), out.starts[:n].tolist()],
                [c.tolist() for c in copies])

    assert plan([a]) == ([[0], [0], [0]], [[], [], []])  # all rows empty: the lowest
    assert plan([[*a, 1]]) == ([[0], [0], [10]], [[], [], []])  # extends row 0 in place
    # the same prompt again: in place (nothing is lost), and its last token runs
    assert plan([[*a, 1]]) == ([[0], [0], [10]], [[], [], []])
    # a branch at 10: rows 1 and 2 are older than row 0, so the path [a, 1] stays there
    assert plan([[*a, 2]]) == ([[1], [1], [10]], [[0], [1], [10]])
    assert store.held[0].tolist() == [*a, 1]
    assert plan([b, [*a, 1, 5]]) == ([[2, 0], [2, 0], [0, 11]], [[], [], []])
    # pinned row 0 is only read: [a, 1, 5, 6] forks into the least recently used row (1), and
    # c, which shares nothing, evicts the next (2)
    c = np.arange(40, 45)
    assert plan([c, [*a, 1, 5, 6]], pinned=[0]) == ([[2, 1], [2, 1], [0, 12]],
                                                    [[0], [1], [12]])
    # more prompts than free rows: [c, 1] reads its start from pinned row 2, and is kept nowhere
    assert plan([[*c, 1], [*a, 1, 5, 6, 7]], pinned=[0, 2]) == ([[2, 1], [-1, 1], [5, 13]],
                                                                 [[], [], []])
    with pytest.raises(ValueError, match="2 prompts need a store row each, but only 1 of the 3"):
        plan([[*c, 1], [*a, 1, 5, 6, 7]], pinned=[0, 2], keep_all=True)


def test_token_counts_say_what_was_given_and_what_ran(qwen):
    _, _, model = qwen
    prompt = _prompts()[2]
    plain = Engine(model)
    a = plain.generate([prompt, prompt[:5]], max_new_tokens=6, temperature=1.0, seed=[3, 4],
                       num_samples=3)
    c = plain.counts
    assert (c.calls, c.prompt_tokens, c.prefill_tokens) == (1, len(prompt) + 5, len(prompt) + 5)
    # Every row computes until the last one stops: the loop's steps for each of the 6 rows.
    assert c.decode_steps == 6 * a.steps and c.decoded_tokens == a.lengths.sum()
    assert c.stopped_share == pytest.approx(1 - a.lengths.sum() / (6 * a.steps))
    assert c.computed == c.prefill_tokens + c.decode_steps
    # Decode attention read the longer prompt's bucket for all 6 rows at every loop step (a
    # token after the first); each row needed its own prompt for each of its tokens after the
    # first.
    assert c.prefix_reads == (a.steps - 1) * 6 * generation.prompt_bucket(len(prompt))
    assert c.prefix_needed == sum((n - 1) * p for n, p in
                                  zip(a.lengths, [len(prompt)] * 3 + [5] * 3))
    assert c.prefix_waste == c.prefix_reads / c.prefix_needed > 1
    stored = Engine(model, prefix_rows=2)
    stored.generate([prompt], max_new_tokens=4)
    b = stored.generate([prompt + [7, 8, 9]], max_new_tokens=4, num_samples=2)
    c = stored.counts
    assert (c.calls, c.prompt_tokens, c.prefill_tokens) == (2, 2 * len(prompt) + 3, len(prompt) + 3)
    assert c.decoded_tokens >= b.lengths.sum() and c.decode_steps >= 2 * b.steps


def test_update_swaps_weights_of_the_same_architecture_only(qwen, tmp_path):
    directory, _, model = qwen
    engine = Engine(model)
    before = engine.generate(_prompts(), max_new_tokens=6).tokens
    checkpoints.save("qwen2_gqa", tmp_path, seed=1)  # same architecture, other weights
    engine.update(from_pretrained(tmp_path))
    after = engine.generate(_prompts(), max_new_tokens=6).tokens
    assert (after != before).any()
    np.testing.assert_array_equal(after, generate(from_pretrained(tmp_path), _prompts(), 6).tokens)
    with pytest.raises(ValueError, match="same architecture"):
        engine.update(from_pretrained(directory, dtype=jnp.bfloat16))


def test_prompt_buckets_grow_by_half_and_third_steps():
    assert [prompt_bucket(n) for n in (1, 16, 17, 24, 25, 33, 49, 65, 100, 129)] == \
        [16, 16, 24, 24, 32, 48, 64, 96, 128, 192]


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_ids=[]), "no prompts"),
    (dict(prompt_ids=[[1, 2], []]), "prompt 1 must be a non-empty"),
    (dict(prompt_ids=[[1, 300]]), "token id 300 outside"),
    (dict(prompt_ids=[[1.5, 2]]), "token ids are integers"),
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (dict(temperature=-1.0), "temperature=-1.0 is invalid"),
    (dict(top_p=0.0), "top_p=0.0 is invalid"),
    (dict(top_k=-2), "top_k=-2 is invalid"),
    (dict(seed=-1), "seed=-1 is invalid"),
    (dict(seed=[1, 2]), "one value per prompt"),
    (dict(num_samples=0), "num_samples must be a positive integer"),
    (dict(stop_token_ids=[999]), "stop token id 999"),
    (dict(prompt_lengths=[2]), "prompt_lengths applies to a padded int array"),
    (dict(prompt_ids=np.array([1, 2, 3])), "must be int\\[B, P\\]"),
    (dict(prompt_ids=np.array([[1, 2, 3]]), prompt_lengths=[4]),
     "prompt_lengths\\[0\\]=4 must be an integer in"),
    (dict(prompt_ids=np.array([[1, 2, 3]]), prompt_lengths=[0]), "prompt_lengths\\[0\\]=0"),
    (dict(max_new_tokens=True), "max_new_tokens must be a positive integer"),
    (dict(stop_token_ids=5), "stop_token_ids must be a sequence of token ids"),
    (dict(stop_token_ids=[None]), "stop_token_ids must be a sequence of token ids"),
    (dict(pad_id=256), "pad_id=256 must be a token id"),
])
def test_bad_arguments_are_named(qwen, kwargs, message):
    _, _, model = qwen
    args = dict(prompt_ids=[[1, 2, 3]], max_new_tokens=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate(model, **args)


def test_numpy_and_jax_integers_and_huge_top_k_are_accepted(qwen):
    _, _, model = qwen
    res = generate(model, np.array([[1, 2, 3]]), np.int64(3), num_samples=np.int32(2), top_k=2**70,
                   temperature=1.0)
    assert res.tokens.shape == (2, 3)
    free = generate(model, [[1, 2, 3], [4, 5, 6]], 6).tokens
    stops = jnp.asarray([free[0, 1], free[1, 2]])
    res = generate(model, jnp.asarray([[1, 2, 3, 9], [4, 5, 6, 9]]), 6, stop_token_ids=stops,
                   prompt_lengths=jnp.asarray([3, 3]))
    assert res.lengths[0] <= 2 and res.lengths[1] <= 3


def test_tiny_temperatures_sample_the_argmax():
    logits = np.array([[50.0, 49.0, -50.0, 0.0], [-50.0, -49.0, -60.0, -70.0]], np.float32)
    for temperature in (1e-30, 1e-37):
        tokens = sampling.sample(jnp.asarray(logits), jnp.asarray([0.3, 0.9]),
                                 jnp.full((2,), temperature), jnp.zeros((2,), jnp.int32),
                                 jnp.ones((2,)))
        np.testing.assert_array_equal(tokens, [0, 1])


def test_a_value_model_cannot_generate(qwen):
    directory, _, _ = qwen
    with pytest.raises(ValueError, match="no LM head"):
        Engine(from_pretrained(directory, lm_head=False, value_head=True))
