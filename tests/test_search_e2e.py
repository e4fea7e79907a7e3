"""The search end to end with real parts: a tiny random policy (steered to write step tokens),
the engine, a random PPM, the sandboxed executor and the grader."""

import dataclasses
import types
import warnings

import numpy as np
import pytest
from scripted import CharTokenizer

from rstar_jax.engine import ValueScorer
from rstar_jax.models import CausalLM
from rstar_jax.search import tree as tree_ops
from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.search.driver import EnginePolicy, Problem, SearchStats, run_search
from rstar_jax.steps import format as fmt
from rstar_jax.testing import steered_tiny_policy

PROBLEMS = [Problem("What is 2 + 3?", "5"), Problem("What is 4 * 6?", "24")]
CONFIG = SearchConfig(rollouts=4, candidates=8, max_depth=6, max_step_tokens=24,
                      max_output_tokens=16)


def _search(world, config, problems=PROBLEMS, **kwargs):
    tokenizer, engine, scorer, executor = world
    return run_search(problems, EnginePolicy(engine, tokenizer, config), executor, tokenizer,
                      config, scorer=scorer, progress=False, **kwargs)


def check_tree(t, config):
    """What every searched tree satisfies, whatever the policy wrote."""
    n = t.num_nodes
    assert n <= config.nodes and t.parent[0] == -1 and t.depth[0] == 0
    for node in range(1, n):
        p = t.parent[node]
        assert 0 <= p < node and t.depth[node] == t.depth[p] + 1 <= config.max_depth + 1
        assert node in t.children[p]
    for node in range(n):
        kids = [c for c in t.children[node] if c >= 0]
        assert (t.children[node][len(kids):] == -1).all() and kids == sorted(kids)
        assert all(t.parent[c] == node for c in kids)
        if kids:  # an expanded node is open: it ran, or its failures are tolerated
            assert not t.is_answer[node] and t.errors[node] < config.errors_threshold
            assert t.valid[node] or config.errors_threshold > 1
    q = t.q
    assert (np.abs(q) <= 1 + 1e-6).all()
    assert (t.visits >= 0).all()
    assert len(t.outputs) == n and t.outputs[0] == ""
    for node in range(1, n):
        kind = fmt.classify_step(t.texts[node])
        assert t.is_answer[node] == (kind is fmt.StepKind.ANSWER)
        # what the program printed, or why it failed; nothing for steps that never ran
        if not kind.complete or t.is_answer[node]:
            assert t.outputs[node] == ""
        elif not t.valid[node]:
            assert t.outputs[node], f"node {node}: its code failed, but no error was kept"
        elif fmt.step_output(t.texts[node]):  # the output block holds (the start of) what ran
            block = fmt.escape_tokens(fmt.truncate_output(t.outputs[node].rstrip()))
            assert block.startswith(fmt.step_output(t.texts[node]))
        if t.is_answer[node]:
            assert t.terminal[node] and t.visits[node] == 1 and t.value_sum[node] == t.reward[node]
        elif not t.valid[node] and t.errors[node] >= config.errors_threshold:
            assert t.terminal[node] and t.visits[node] == 1 and t.value_sum[node] == -1
    assert t.rollouts <= config.rollouts
    assert t.rollouts == config.rollouts or t.terminal[0] or t.overflow
    if t.answer_node >= 0:
        answers = np.flatnonzero(t.is_answer)
        assert t.answer_node == answers[np.argmax(q[answers])]


@pytest.mark.parametrize("mode", list(Mode))
def test_two_problems_four_rollouts_build_consistent_trees(world, mode):
    config = dataclasses.replace(CONFIG, mode=mode)
    stats = SearchStats()
    trees = _search(world, config, stats=stats)
    assert [t.problem for t in trees] == PROBLEMS
    for t in trees:
        check_tree(t, config)
        # Each node holds what the policy wrote; a valid last code step also its output block.
        tokenizer = world[0]
        for node in range(1, t.num_nodes):
            assert tokenizer.decode(t.tokens[node]) == t.texts[node]
            if t.valid[node] and fmt.classify_step(t.texts[node]) is fmt.StepKind.LAST_CODE:
                assert fmt.step_output(t.texts[node]) is not None
        if mode is Mode.TERMINAL:
            assert not (t.init_value != 0).any()
        else:  # open nodes carry their PPM score as one visit
            assert (t.visits[1:][~t.terminal[1:]] >= 1).all()
    if mode is not Mode.TERMINAL:
        assert any((t.init_value[1:] != 0).any() for t in trees)
    assert stats.expansions > 2 and stats.rollouts == sum(t.rollouts for t in trees)
    assert sum(t.depth.max() for t in trees) > 2, "the steered policy should build trees deeper than one level"


def test_a_search_is_reproducible_and_each_problem_independent_of_its_batch(world):
    together = _search(world, CONFIG)
    # Seeds come from the search's seed, the problem's index in the list and the node.
    alone = _search(world, CONFIG, problems=PROBLEMS[:1])
    one_slot = _search(world, CONFIG, batch_size=1)
    # execution waits for sampling
    in_turn = _search(world, dataclasses.replace(CONFIG, overlap=False))
    for a, *others in zip(together, alone + one_slot[1:], one_slot, in_turn):
        for b in others:
            assert a.texts == b.texts
            for name in ("parent", "children", "visits", "value_sum", "terminal", "valid"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    other_seed = _search(world, dataclasses.replace(CONFIG, seed=1))
    assert [t.texts for t in other_seed] != [t.texts for t in together]


def test_device_paths_equal_the_paths_the_host_reads(world):
    """`paths` gives each expandable node's path (depth <= max_depth), the validity of its nodes
    and its own depth and errors: check them against the searched tree."""
    t = _search(world, CONFIG)[0]
    dev = tree_ops.init_tree(1, t.num_nodes, CONFIG.candidates)
    dev = dataclasses.replace(dev, parent=t.parent[None], depth=t.depth[None], valid=t.valid[None],
                              errors=t.errors[None])
    for node in np.flatnonzero(t.depth <= CONFIG.max_depth):
        path = tree_ops.paths(dev, np.array([node], np.int32), max_depth=CONFIG.max_depth)
        nodes = np.asarray(path.nodes)[0]
        assert nodes[nodes != tree_ops.NO_NODE].tolist() == t.path(node)
        assert np.asarray(path.valid)[0, :len(t.path(node))].tolist() == [bool(t.valid[m]) for m in t.path(node)]
        assert (int(path.depth[0]), int(path.errors[0])) == (t.depth[node], t.errors[node])


def test_value_scorer_equals_the_models_value_per_sequence(world):
    tokenizer, _, scorer, _ = world
    model = steered_tiny_policy(tokenizer, 1, value_head=True)
    sequences = [tokenizer.policy_prompt_ids("What is 1 + 1?")[:n] for n in (3, 17, 40)]
    got = scorer.score(sequences)
    for seq, value in zip(sequences, got):
        want = float(model.value(np.array([seq], np.int32))[0])
        assert value == pytest.approx(want, abs=1e-5)
    # Children of shared prefixes: each prefix runs once, the values are the same.
    prefixes = [sequences[1], sequences[2]]
    children = [[[5, 6, 7], [9], [30, 31, 32, 33, 34, 35, 36, 37, 38]], [[11, 12]]]
    grouped = scorer.score_children(prefixes, children)
    flat = scorer.score([p + c for p, cs in zip(prefixes, children) for c in cs])
    np.testing.assert_allclose(np.concatenate(grouped), flat, atol=1e-5)
    assert [len(g) for g in grouped] == [3, 1]
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        scorer.score([[1], []])
    with pytest.raises(ValueError, match="outside"):
        scorer.score([[10_000]])
    # max_rows rounds down to a power of two; chunks of 4 give the values of one batch.
    small = ValueScorer(model, max_rows=6)
    assert small.max_rows == 4
    many = [sequences[0] + [i] for i in range(9)]
    np.testing.assert_allclose(small.score(many), scorer.score(many), atol=1e-5)


def test_a_head_trained_without_tanh_is_read_as_tanh_of_raw_over_five(world):
    from flax import nnx

    tokenizer = world[0]
    model = steered_tiny_policy(tokenizer, 1, value_head=True)
    raw = CausalLM(model.config, value_head=True, value_tanh=False, rngs=nnx.Rngs(0))
    nnx.update(raw, nnx.state(model, nnx.Param))
    scorer = ValueScorer(raw, max_rows=8)
    seqs = [tokenizer.policy_prompt_ids("What is 1 + 1?")[:n] for n in (5, 9)]
    want = np.tanh(np.asarray(raw.value(np.array([seqs[0][:5], seqs[1][:5]], np.int32)),
                              np.float64) / 5)
    got = scorer.score([s[:5] for s in seqs])
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(scorer.score_children([seqs[0][:3]], [[seqs[0][3:5], seqs[1][3:5]]])),
                               np.tanh(np.asarray(raw.value(np.array([seqs[0][:5], seqs[0][:3] + seqs[1][3:5]],
                                                                     np.int32))) / 5), atol=1e-6)
    assert ValueScorer(model).raw_scale is None  # a tanh head is read as it is
    with pytest.raises(ValueError, match="raw_scale must be > 0"):
        ValueScorer(raw, raw_scale=0)


def test_engine_policy_warns_once_when_a_path_outgrows_the_context():
    calls = []

    class ShortContextEngine:
        config = types.SimpleNamespace(max_position_embeddings=30)

        def generate(self, prompts, **kwargs):
            calls.append(len(prompts))
            n = len(prompts) * kwargs["num_samples"]
            return types.SimpleNamespace(tokens=np.zeros((n, 1), np.int32),
                                         lengths=np.ones((n,), np.int32))

    tokenizer = CharTokenizer()
    policy = EnginePolicy(ShortContextEngine(), tokenizer,
                          dataclasses.replace(CONFIG, max_step_tokens=10))
    policy.sample([[1] * 20], 2, [0])  # 20 + 10 fits
    with pytest.warns(UserWarning,
                      match="path of 21 tokens plus max_step_tokens=10 exceeds the policy's "
                            "context of 30"):
        policy.sample([[1] * 21, [1] * 3], 2, [0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.sample([[1] * 40], 2, [0])
    assert calls == [1, 2, 1]


def test_bad_inputs_are_named(world):
    with pytest.raises(ValueError, match=r"problems \[0\] have answer=None"):
        _search(world, CONFIG, problems=[Problem("What is 1?")])
    tokenizer, engine, _, executor = world
    ppm = dataclasses.replace(CONFIG, mode=Mode.PPM)
    with pytest.raises(ValueError, match="pass scorer="):
        run_search(PROBLEMS, EnginePolicy(engine, tokenizer, ppm), executor, tokenizer, ppm)
    with pytest.raises(ValueError, match="candidates must be a positive int, got 0"):
        SearchConfig(candidates=0)
    with pytest.raises(ValueError, match="capacity must be an int >= 1 \\+ candidates = 9"):
        SearchConfig(candidates=8, capacity=5)
    with pytest.raises(ValueError, match="unknown stage 'round9'"):
        SearchConfig.preset("paper", "round9")
    assert run_search([], None, None, tokenizer, CONFIG) == []


def test_presets_follow_the_paper_and_the_reference_code():
    assert (SearchConfig.preset("paper", "round1").candidates,
            SearchConfig.preset("paper", "round1").rollouts) == (5, 8)
    r4 = SearchConfig.preset("paper", "round4")
    assert (r4.candidates, r4.rollouts, r4.mode) == (16, 16, Mode.PPM)
    assert r4.unsolved_rollouts == 64 and SearchConfig.preset("paper", "round3").unsolved_rollouts == 0
    ref = SearchConfig.preset("reference_code", "round2")
    assert (ref.candidates, ref.rollouts, ref.temperature, ref.mode) == (12, 48, 1.0, Mode.TERMINAL)
    boot = SearchConfig.preset("reference_code", "round1")
    assert boot.bootstrap and boot.errors_threshold == 2 and boot.temperature == 0.7
    test = SearchConfig.preset("paper", "test", rollouts=4)
    assert (test.candidates, test.rollouts, test.mode) == (32, 4, Mode.TEST)
    assert SearchConfig(rollouts=2, candidates=3, max_depth=4).nodes == 1 + 2 * 5 * 3


@pytest.mark.parametrize("store_rows", [1, 2, 5])
def test_a_policy_engine_with_a_prefix_store_builds_the_same_trees(world, store_rows):
    """The policy reuses the paths' keys and values, and the trees are those of an engine
    without a store: with a store too small for the problems (it evicts), a row per problem,
    and rows to spare."""
    from rstar_jax.engine import Engine

    tokenizer, engine, scorer, executor = world
    stored = Engine(steered_tiny_policy(tokenizer, 0), vocab_size=tokenizer.vocab_size,
                    pad_id=tokenizer.pad_id, prefix_rows=store_rows)
    config = dataclasses.replace(CONFIG, mode=Mode.TERMINAL)
    want = _search(world, config)
    got = run_search(PROBLEMS, EnginePolicy(stored, tokenizer, config), executor, tokenizer, config,
                     progress=False)
    assert [t.texts for t in got] == [t.texts for t in want]
    counts = stored.counts
    assert counts.prefill_tokens < counts.prompt_tokens  # the store was used
    # with a row to spare, the second problem forks off the first's row at their shared start
    # and the first's path stays
    assert sum(len(h) > 0 for h in stored.store.held) == min(store_rows, len(PROBLEMS))


@pytest.mark.parametrize("store_rows", [1, 2])
def test_a_ppm_with_a_prefix_store_scores_as_one_without(world, store_rows):
    tokenizer, _, scorer, executor = world
    stored = ValueScorer(steered_tiny_policy(tokenizer, 1, value_head=True),
                         pad_id=tokenizer.pad_id, prefix_rows=store_rows)
    config = dataclasses.replace(CONFIG, mode=Mode.PPM)
    want = _search(world, config)
    got = _search((tokenizer, world[1], stored, executor), config)
    for a, b in zip(got, want):
        assert a.texts == b.texts
        np.testing.assert_allclose(a.init_value, b.init_value, atol=1e-5)
    assert any(len(h) for h in stored.store.held)
    # The same prefixes were given to both; the store ran fewer of their tokens, and the
    # children's tokens ran in full either way.
    plain, kept = scorer.counts, stored.counts
    assert kept.prompt_tokens > kept.prefill_tokens and kept.scored_tokens > 0
    assert plain.prompt_tokens == plain.prefill_tokens
    assert kept.computed == kept.prefill_tokens + kept.scored_tokens
    assert kept.scored_slots > kept.scored_tokens  # rows padded to 8, and to the longest child
