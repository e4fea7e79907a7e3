"""Continuous batching (`ContinuousDecoder`): samples equal `Engine.generate`'s, reused keys and
values equal a full prefill's, and a search builds the same trees with it as without."""

import dataclasses
import threading

import checkpoints
import jax
import numpy as np
import pytest

from rstar_jax import Engine, from_pretrained
from rstar_jax.engine import continuous, generation
from rstar_jax.engine.continuous import ContinuousDecoder
from rstar_jax.models import make_mesh
from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.search.driver import EnginePolicy, Problem, SearchStats, run_search
from rstar_jax.testing import steered_tiny_policy

MODELS = ["qwen2_gqa", "phi3_gqa_sliding", "phi3_longrope"]


@pytest.fixture(scope="module", params=MODELS)
def model(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    checkpoints.save(request.param, directory)
    return from_pretrained(directory)


def _prompts():
    return [checkpoints.token_ids(1, n, seed=n)[0].tolist() for n in (5, 11, 17)]


def _drain(decoder):
    out = {}
    while decoder.busy:
        out.update(decoder.step())
    return out


def test_samples_equal_generate_whenever_a_place_is_admitted(model):
    """Ragged prompts admitted at different times, each sampled 3 times: every place's samples
    are the ones `Engine.generate` draws for its prompt and seed alone (stop tokens, greedy and
    sampled rows, a place that starts while others are mid-way)."""
    plain = Engine(model)
    prompts, seeds = _prompts(), [7, 8, 9]
    stops = [int(plain.generate([p], max_new_tokens=3).tokens[0, 2]) for p in prompts]
    for temperature in (0.0, 1.0):
        decoder = ContinuousDecoder(Engine(model, prefix_rows=3), 3, 3, max_new_tokens=12,
                                    stop_token_ids=stops, temperature=temperature, chunk=3)
        decoder.admit([2, 0], [prompts[0], prompts[1]], seeds[:2])
        got = decoder.step()
        decoder.admit([1], [prompts[2]], seeds[2:])
        got.update(_drain(decoder))
        for place, prompt, seed in zip([2, 0, 1], prompts, seeds):
            want = plain.generate([prompt], max_new_tokens=12, temperature=temperature, seed=seed,
                                  num_samples=3, stop_token_ids=stops)
            np.testing.assert_array_equal(got[place][0], want.tokens, err_msg=f"place {place}")
            np.testing.assert_array_equal(got[place][1], want.lengths)
        assert any((lengths < 12).any() for _, lengths in got.values())  # some rows stopped


def _full_prefill(model, prompt, max_new):
    """Per layer (keys [K, D, P], values [K, P, D]) of a plain prefill of `prompt`."""
    engine = Engine(model)
    ids = np.array([prompt], np.int32)
    keys, values, _ = generation._prefill(engine.graphdef, engine.state, ids,
                                          np.array([len(prompt)], np.int32),
                                          np.array([len(prompt) + max_new], np.int32))
    return [(np.asarray(k)[0], np.asarray(v)[0]) for k, v in zip(keys, values)]


def test_a_continued_prompt_reuses_its_samples_keys_and_values(model):
    """The next prompt of a place continues its last one with one of its samples (as a search
    expands a child it just made): the sample's keys and values are copied from the decoder's
    buffers, only the rest runs, and the store row equals a full prefill's (float32, 1e-5).
    Under longrope a prompt that moves to the long factors is run whole instead."""
    engine = Engine(model, prefix_rows=2)
    decoder = ContinuousDecoder(engine, 2, 2, max_new_tokens=6, temperature=1.0, chunk=4)
    prompt = _prompts()[0]  # 5 tokens: with 6 new ones, under phi3_longrope's 16
    decoder.admit([1], [prompt], [3])
    tokens, lengths = _drain(decoder)[1]
    grown = prompt + tokens[1, :lengths[1]].tolist() + [11, 12]
    before = engine.counts.prefill_tokens
    decoder.admit([1], [grown], [4])
    ran = engine.counts.prefill_tokens - before
    longrope = engine.store.switch_at is not None
    # The sample's last token has no keys yet (it was chosen, never run): it and the two
    # tokens after it run. phi3_longrope: 13 + 6 > 16 changes the factors, so all of it runs.
    assert ran == (len(grown) if longrope else 3)
    want = _full_prefill(model, grown, 6)
    store, row = jax.device_get(engine.store.arrays()), decoder.rows[1]
    for layer, ((k, v), (wk, wv)) in enumerate(zip(store, want)):
        n = len(grown)
        np.testing.assert_allclose(k[row, :, :, :n], wk[:, :, :n], atol=1e-5, rtol=1e-5,
                                   err_msg=f"keys, layer {layer}")
        np.testing.assert_allclose(v[row, :, :n], wv[:, :n], atol=1e-5, rtol=1e-5,
                                   err_msg=f"values, layer {layer}")
    # and its samples are still generate's
    got = _drain(decoder)[1]
    want = Engine(model).generate([grown], max_new_tokens=6, temperature=1.0, seed=4,
                                  num_samples=2)
    np.testing.assert_array_equal(got[0], want.tokens)


def test_places_that_share_a_row_each_continue_their_own_sample(model, monkeypatch):
    """Two places given the same prompt share its store row. Admitted again together, each with
    one of its own samples, only one sample's keys and values go to that row (two would land on
    the same positions, in an order a scatter does not promise): the other place runs its
    sample, and both sample as `generate` does."""
    carried = []
    real = continuous._carry

    def spy(store, buffers, rows, *args):
        carried.append([r for r in np.asarray(rows).tolist() if r < engine.store.rows])
        return real(store, buffers, rows, *args)

    monkeypatch.setattr(continuous, "_carry", spy)
    engine = Engine(model, prefix_rows=2)
    decoder = ContinuousDecoder(engine, 2, 2, max_new_tokens=6, temperature=1.0, chunk=4)
    prompt = _prompts()[0]
    firsts = {}
    for place, seed in ((0, 3), (1, 5)):
        decoder.admit([place], [prompt], [seed])
        firsts[place] = _drain(decoder)[place]
    shared = int(decoder.rows[0])
    assert decoder.rows[1] == shared
    grown = [prompt + tokens[1, :lengths[1]].tolist() + [11 + p]
             for p, (tokens, lengths) in sorted(firsts.items())]
    decoder.admit([0, 1], grown, [6, 7])
    got = _drain(decoder)
    for place, seed in ((0, 6), (1, 7)):
        want = Engine(model).generate([grown[place]], max_new_tokens=6, temperature=1.0,
                                      seed=seed, num_samples=2)
        np.testing.assert_array_equal(got[place][0], want.tokens, err_msg=f"place {place}")
    if engine.store.switch_at is None:  # (phi3_longrope: the grown prompts change factors)
        assert carried == [[shared]]


def test_samples_that_stop_at_their_first_token_take_no_lane(model):
    """A sample whose first token is a stop token is done when its place is admitted: no chunk
    runs it, and a place whose samples all stopped so comes back from `step` without one."""
    prompts = _prompts()
    first = int(Engine(model).generate([prompts[0]], max_new_tokens=1).tokens[0, 0])
    engine = Engine(model, prefix_rows=2)
    decoder = ContinuousDecoder(engine, 2, 3, max_new_tokens=8, stop_token_ids=[first],
                                temperature=0.0)
    decoder.admit([1], [prompts[0]], [4])
    got = decoder.step()
    assert engine.counts.calls == 0 and engine.counts.decode_steps == 0
    np.testing.assert_array_equal(got[1][1], [1, 1, 1])
    np.testing.assert_array_equal(got[1][0][:, 0], [first] * 3)
    assert not decoder.busy


def test_a_place_over_several_groups_samples_as_generate(model, monkeypatch):
    """With one cell a group, each running slot reads its place's prompt in a group of its
    own: the samples are still `Engine.generate`'s."""
    monkeypatch.setattr(continuous, "cell_grid", lambda running, samples: (1, running.copy()))
    prompts, seeds = _prompts(), [7, 8, 9]
    decoder = ContinuousDecoder(Engine(model, prefix_rows=3), 3, 3, max_new_tokens=10,
                                temperature=1.0, chunk=4)
    decoder.admit([0, 1, 2], prompts, seeds)
    got = _drain(decoder)
    for place, (prompt, seed) in enumerate(zip(prompts, seeds)):
        want = Engine(model).generate([prompt], max_new_tokens=10, temperature=1.0, seed=seed,
                                      num_samples=3)
        np.testing.assert_array_equal(got[place][0], want.tokens, err_msg=f"place {place}")


@pytest.mark.parametrize("running, samples, per, taken", [
    ([4] * 32, 8, 4, [1] * 32),  # every place alike: one group each, as many cells as slots
    ([8] + [1] * 12, 8, 2, [4] + [1] * 12),  # one busy place takes 4 groups of 2 cells
    ([8] + [1] * 7, 8, 8, [1] * 8),  # ... unless its groups would double the grid's
    ([3, 3, 3, 3], 3, 3, [1] * 4),  # C may be `samples` itself, or a power of two below it
    ([3, 2, 1], 3, 2, [2, 1, 1]),
    ([1] * 5, 8, 1, [1] * 5),
    ([17, 1], 32, 32, [1, 1]),  # C = 8 would cost less, in more groups than the dry run's grid
])
def test_cell_grid_pads_few_cells_and_groups(running, samples, per, taken):
    got_per, got_taken = continuous.cell_grid(np.array(running), samples)
    assert (got_per, got_taken.tolist()) == (per, taken)


def test_a_sharded_decoder_samples_as_one_device(tmp_path):
    """On a mesh (batch over data and fsdp, KV heads over tensor) the same jitted calls give
    the same samples as on one device."""
    checkpoints.save("qwen2_gqa", tmp_path)
    prompts, got = _prompts(), []
    for mesh in (None, make_mesh({"data": 2, "fsdp": 2, "tensor": 2})):
        decoder = ContinuousDecoder(Engine(from_pretrained(tmp_path, mesh=mesh), prefix_rows=4),
                                    4, 2, max_new_tokens=10, temperature=1.0, chunk=4)
        decoder.admit([3, 0, 1], prompts, [1, 2, 3])
        got.append(_drain(decoder))
    for place in (3, 0, 1):
        np.testing.assert_array_equal(got[1][place][0], got[0][place][0])
    assert decoder._buffers[0][0].sharding.spec[0] == ("data", "fsdp")


def test_bad_use_is_refused_with_the_fix(model):
    with pytest.raises(ValueError, match=r"build Engine\(prefix_rows=4\)"):
        ContinuousDecoder(Engine(model, prefix_rows=2), 4, 2, max_new_tokens=4)
    decoder = ContinuousDecoder(Engine(model, prefix_rows=2, prefix_length=24), 2, 2,
                                max_new_tokens=4)
    decoder.admit([0], [[5, 6, 7]], [1])
    with pytest.raises(ValueError, match=r"not running; got \[0\] with \[0\] running"):
        decoder.admit([0], [[5, 6, 7]], [1])
    with pytest.raises(ValueError, match="does not fit the prefix store's 24 positions"):
        decoder.admit([1], [[5] * 21], [1])
    with pytest.raises(ValueError, match="one prompt and one seed a place"):
        decoder.admit([1], [[5]], [1, 2])
    with pytest.raises(ValueError, match="token ids in"):
        decoder.admit([1], [[5, 10**6]], [1])


def test_a_search_builds_the_same_trees_with_continuous_batching(world):
    """PPM mode, three problems in two batch places: continuous batching decodes each place's
    samples as soon as its leaf is chosen and finishes problems out of step; the trees (texts,
    values) are those of the lockstep search, with fewer decode steps on stopped rows."""
    tokenizer, _, scorer, executor = world
    problems = [Problem("What is 2 + 3?", "5"), Problem("What is 4 * 6?", "24"),
                Problem("What is 9 - 1?", "8")]
    config = SearchConfig(mode=Mode.PPM, rollouts=3, candidates=4, max_depth=4,
                          max_step_tokens=24, max_output_tokens=16)
    trees, counts = {}, {}
    for continuous in (False, True):
        engine = Engine(steered_tiny_policy(tokenizer, 0), vocab_size=tokenizer.vocab_size,
                        pad_id=tokenizer.pad_id, prefix_rows=2)  # a row a place: all pinned
        c = dataclasses.replace(config, continuous=continuous)
        stats = SearchStats()
        trees[continuous] = run_search(problems, EnginePolicy(engine, tokenizer, c), executor,
                                       tokenizer, c, scorer=scorer, batch_size=2, progress=False,
                                       stats=stats)
        counts[continuous] = engine.counts
        assert stats.expansions > 3
    for a, b in zip(trees[True], trees[False]):
        assert a.texts == b.texts and a.parent.tolist() == b.parent.tolist()
        np.testing.assert_allclose(a.init_value, b.init_value, atol=1e-5)
        np.testing.assert_allclose(a.q, b.q, atol=1e-5)
    assert counts[True].decoded_tokens == counts[False].decoded_tokens
    assert counts[True].decode_steps < counts[False].decode_steps
    # the same samples of the same prompts: the same prompt positions needed, whatever read them
    assert counts[True].prefix_needed == counts[False].prefix_needed > 0
    assert counts[True].prefix_reads >= counts[True].prefix_needed
    # a store too small for the places: the lockstep path, the same trees
    small = Engine(steered_tiny_policy(tokenizer, 0), vocab_size=tokenizer.vocab_size,
                   pad_id=tokenizer.pad_id, prefix_rows=1)
    on = dataclasses.replace(config, continuous=True)
    assert EnginePolicy(small, tokenizer, on).decoder(2, 4) is None
    assert isinstance(EnginePolicy(small, tokenizer, on).decoder(1, 4), ContinuousDecoder)
    assert EnginePolicy(small, tokenizer, config).decoder(1, 4) is None  # off by default


def test_the_ppm_scores_a_group_while_other_places_decode(world):
    """The PPM scores a group of places off the main thread while the decoder runs the other
    places: a scorer called while places are decoding waits for a chunk to start, and sees one
    start (a search that scored on its main thread would wait in vain). The decoder returns
    one finished place a chunk, so groups form while others decode."""
    tokenizer, _, scorer, executor = world
    chunks = [0]  # chunks started
    started = threading.Condition()

    class Decoder:
        def __init__(self, decoder):
            self.decoder, self.admit, self.held = decoder, decoder.admit, {}

        @property
        def busy(self):
            return self.decoder.busy or bool(self.held)

        def step(self):
            with started:
                chunks[0] += 1
                started.notify_all()
            finished = self.decoder.step() if self.decoder.busy else {}
            with started:  # a scorer waiting for a chunk stops once none will come
                self.held.update(finished)
                out = {p: self.held.pop(p) for p in sorted(self.held)[:1]}
                started.notify_all()
            return out

    class Policy(EnginePolicy):
        def decoder(self, places, samples):
            self.made = Decoder(super().decoder(places, samples))
            return self.made

    class Scorer:
        def __init__(self):
            self.overlapped, self.threads = [], set()

        def score_children(self, prefixes, children):
            self.threads.add(threading.current_thread().name)
            if threading.current_thread() is not threading.main_thread():
                with started:
                    before = chunks[0]
                    # a chunk starts, or the decoder runs out of places (no chunk will come)
                    ended = started.wait_for(lambda: chunks[0] > before or not policy.made.busy,
                                             timeout=120)
                    self.overlapped.append(chunks[0] > before if ended else None)
            return scorer.score_children(prefixes, children)

    problems = [Problem(f"What is {i} + 3?", str(i + 3)) for i in range(4)]
    config = SearchConfig(mode=Mode.PPM, rollouts=2, candidates=4, max_depth=3,
                          max_step_tokens=24, max_output_tokens=16, continuous=True)
    engine = Engine(steered_tiny_policy(tokenizer, 0), vocab_size=tokenizer.vocab_size,
                    pad_id=tokenizer.pad_id, prefix_rows=4)
    policy, ppm = Policy(engine, tokenizer, config), Scorer()
    run_search(problems, policy, executor, tokenizer, config, scorer=ppm, batch_size=4,
               progress=False)
    assert ppm.threads == {"rstar-search-ppm_0"}
    assert None not in ppm.overlapped and any(ppm.overlapped), ppm.overlapped
