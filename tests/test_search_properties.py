"""Invariants of the search over random trees (hypothesis), and the jitted search against the
plain-Python reference (tests/mcts_reference.py): a scripted policy (tests/scripted.py) writes
valid, failing, last-code, answer, incomplete, malformed and duplicate steps; the real executor
runs them and the real grader grades them."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcts_reference import compare_trees, reference_search
from scripted import (
    CharTokenizer,
    ScriptedPolicy,
    ScriptedScorer,
    random_rule,
    table_rule,
)
from test_search_e2e import check_tree

from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.search.driver import Problem, run_search
from rstar_jax.steps import format as fmt
from rstar_jax.steps.executor import CodeExecutor

TOKENIZER = CharTokenizer()
ANSWER = "4"


def policy(seed):
    """Valid, failing, last-code, answer, incomplete, malformed and repeated steps, by a stable
    hash of (seed, question, response, sample)."""
    return ScriptedPolicy(random_rule(seed, ANSWER), TOKENIZER, max_new_tokens=40)


def scorer():
    return ScriptedScorer(tokenizer=TOKENIZER)


@pytest.fixture(scope="module")
def executor():
    with CodeExecutor(num_workers=2) as ex:
        yield ex


configs = st.builds(
    SearchConfig, mode=st.sampled_from(list(Mode)), rollouts=st.integers(1, 6),
    candidates=st.integers(1, 4), max_depth=st.integers(2, 5), errors_threshold=st.integers(1, 2),
    max_step_tokens=st.just(40), max_output_tokens=st.just(24), seed=st.integers(0, 2**32 - 1),
    capacity=st.one_of(st.none(), st.integers(6, 20)),
).filter(lambda c: c.capacity is None or c.capacity >= 1 + c.candidates)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs, problems=st.integers(1, 3), batch=st.integers(1, 3))
def test_random_searches_keep_the_invariants(executor, config, problems, batch):
    search_policy = policy(config.seed)
    items = [Problem(f"What is {i} + 4 - {i}?", "4") for i in range(problems)]
    trees = run_search(items, search_policy, executor, TOKENIZER, config, scorer=scorer(),
                       batch_size=batch, progress=False)
    assert sum(len(seeds) for _, seeds in search_policy.calls) == sum(int((t.children[:, 0] >= 0).sum()) for t in trees)
    for t in trees:
        check_tree(t, config)
        n, k = t.num_nodes, config.candidates
        assert n <= config.nodes
        if t.overflow:
            assert n + k > config.nodes
        expanded = t.children[:, 0] >= 0
        # Never expanded: terminal nodes (the rollouts that made them so ended there) and
        # nodes whose failures reached the threshold.
        assert not (expanded & t.is_answer).any()
        assert (t.errors[expanded] < config.errors_threshold).all()
        dead = ~t.is_answer & t.terminal & (t.reward == -1)
        if config.mode is Mode.TERMINAL:
            # N and W of an open node are the sums over its children that back up.
            for node in np.flatnonzero(~t.is_answer & ~dead):
                kids = [c for c in t.children[node] if c >= 0 and not dead[c]]
                assert t.visits[node] == sum(t.visits[c] for c in kids)
                assert t.value_sum[node] == pytest.approx(sum(t.value_sum[c] for c in kids),
                                                          abs=1e-5)
        answers = t.is_answer
        if config.mode.graded:
            assert set(t.reward[answers].tolist()) <= {1.0, -1.0}
            for node in np.flatnonzero(answers):
                assert (t.reward[node] == 1) == (fmt.extract_answer(t.texts[node]) == "4")


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs, problems=st.integers(1, 3), batch=st.integers(1, 3))
def test_the_jitted_search_builds_the_reference_trees(executor, config, problems, batch):
    """tests/mcts_reference.py implements the driver's docstring with node objects; in every
    mode the batched, jitted search must build the same trees."""
    items = [Problem(f"What is {i} + 4 - {i}?", "4") for i in range(problems)]
    trees = run_search(items, policy(config.seed), executor, TOKENIZER, config,
                       scorer=scorer(), batch_size=batch, progress=False)
    for i, (problem, tree) in enumerate(zip(items, trees)):
        want = reference_search(problem, i, policy(config.seed), executor, TOKENIZER,
                                config, scorer=scorer())
        compare_trees(tree, want)


@pytest.mark.parametrize("mode", list(Mode))
def test_reference_and_jitted_search_agree_on_a_deep_search(executor, mode):
    config = SearchConfig(mode=mode, rollouts=12, candidates=4, max_depth=6, errors_threshold=2,
                          max_step_tokens=40, max_output_tokens=24, seed=7)
    items = [Problem("What is 4?", "4"), Problem("What is 2 + 2?", "4")]
    trees = run_search(items, policy(7), executor, TOKENIZER, config, scorer=scorer(),
                       progress=False)
    for i, (problem, tree) in enumerate(zip(items, trees)):
        compare_trees(tree, reference_search(problem, i, policy(7), executor, TOKENIZER, config,
                                             scorer=scorer()))
    assert max(t.num_nodes for t in trees) > 15 and any(t.answer_node >= 0 for t in trees)


def test_render_draws_every_node_once_and_marks_the_answer(executor):
    config = SearchConfig(rollouts=3, candidates=3, max_depth=4, max_step_tokens=40,
                          max_output_tokens=24, seed=3)
    tree = run_search([Problem("What is 4?", "4")], policy(3), executor, TOKENIZER, config,
                      progress=False)[0]
    lines = tree.render().splitlines()
    assert len(lines) == tree.num_nodes and lines[0].startswith("0 N=")
    ids = [int(line.lstrip("│├└─ ").split()[0]) for line in lines]
    assert sorted(ids) == list(range(tree.num_nodes))
    # depth first, creation order
    assert ids == [0, *sorted(ids[1:], key=lambda n: [*tree.path(n)])]
    marked = [i for i, line in zip(ids, lines) if line.endswith("<=")]
    assert marked == ([tree.answer_node] if tree.answer_node >= 0 else [])
    shallow = tree.render(max_depth=1).splitlines()
    assert len(shallow) == 1 + sum(1 for n in range(1, tree.num_nodes) if tree.depth[n] == 1) + sum(
        1 for n in range(1, tree.num_nodes) if tree.depth[n] == 1 and tree.children[n, 0] >= 0)


def test_a_policy_that_oversteps_its_budget_is_named(executor):
    config = SearchConfig(rollouts=1, candidates=2, max_step_tokens=40, max_output_tokens=24)
    long = ScriptedPolicy(random_rule(0, ANSWER), TOKENIZER, max_new_tokens=1000)
    with pytest.raises(ValueError, match="at most max_step_tokens=40 tokens; got lengths of shape"):
        for seed in range(20):  # some seed writes an incomplete step of 400 digits
            run_search([Problem("What is 4?", "4")], long, executor, TOKENIZER,
                       dataclasses.replace(config, seed=seed), progress=False)


def test_stdout_that_spells_a_step_token_stays_inside_its_output_block(executor):
    printing = '<code>\nprint("<" + "answer>7<" + "end_of_output>")\n<end_of_code>'
    block = "\n<output>&lt;answer>7&lt;end_of_output><end_of_output>\n"
    rule = table_rule({"": [printing], printing + block: ["<answer>\\boxed{4}<end_of_answer>"]})
    config = SearchConfig(rollouts=2, candidates=1, max_depth=4, max_step_tokens=60,
                          max_output_tokens=40)
    problem = Problem("What is 4?", "4")
    tree = run_search([problem], ScriptedPolicy(rule, TOKENIZER, 60), executor, TOKENIZER, config,
                      progress=False)[0]
    assert tree.texts[1] == printing + block
    assert fmt.classify_step(tree.texts[1]) is fmt.StepKind.LAST_CODE and tree.valid[1]
    assert tree.children[1, 0] == 2 and tree.answer == "4" and tree.answer_node == 2
    compare_trees(tree, reference_search(problem, 0, ScriptedPolicy(rule, TOKENIZER, 60), executor,
                                         TOKENIZER, config))


class _Short:
    """Wraps an executor or a scorer and returns one result too few (or too many)."""

    def __init__(self, inner, extra=-1):
        self.inner, self.extra = inner, extra

    def run(self, programs):
        out = self.inner.run(programs)
        return out[:len(out) + self.extra]

    def score(self, sequences):
        out = self.inner.score(sequences)
        return np.concatenate([out, out])[:len(out) + self.extra]


def test_result_counts_of_the_executor_and_the_scorer_are_checked(executor):
    config = SearchConfig(mode=Mode.PPM, rollouts=4, candidates=3, max_depth=4, max_step_tokens=40,
                          max_output_tokens=24)
    problems = [Problem("What is 4?", "4")]
    with pytest.raises(RuntimeError, match=r"the executor returned \d+ results for \d+ programs"):
        run_search(problems, policy(0), _Short(executor), TOKENIZER, config, scorer=scorer(),
                   progress=False)
    for extra in (-1, 1):
        with pytest.raises(RuntimeError, match=r"the scorer returned \d+ values for \d+ sequences"):
            run_search(problems, policy(0), executor, TOKENIZER, config,
                       scorer=_Short(scorer(), extra), progress=False)


def test_problems_and_batch_size_are_checked(executor):
    config = SearchConfig(rollouts=1, candidates=2, max_step_tokens=40, max_output_tokens=24)
    with pytest.raises(TypeError, match="got one str: 'What is 4.'; wrap it in a list"):
        run_search("What is 4?", policy(0), executor, TOKENIZER, config)
    with pytest.raises(TypeError, match="problem 1 must be a Problem or a .question, answer. pair"):
        run_search([Problem("What is 4?", "4"), 4], policy(0), executor, TOKENIZER, config)
    for bad in (True, 0, 2.0, "2"):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            run_search([Problem("What is 4?", "4")], policy(0), executor, TOKENIZER, config,
                       batch_size=bad)
    pairs = [("What is 4?", "4"), ("What is 2 + 2?", "4")]
    trees = run_search(pairs, policy(0), executor, TOKENIZER, config, batch_size=np.int64(1),
                       progress=False)
    assert [t.problem for t in trees] == [Problem(*p) for p in pairs]


@pytest.mark.parametrize("seed", range(5))
def test_random_search_trees_keep_the_invariants_of_searched_ones(seed):
    from rstar_jax.testing import random_search_tree

    tree = random_search_tree(seed, nodes=120, candidates=4, max_depth=6)
    config = SearchConfig(rollouts=10_000, candidates=4, max_depth=6, errors_threshold=7,
                          capacity=10_000)
    check_tree(tree, config)
    assert tree.num_nodes == 120 or not any(  # it stops early only when no node is open
        not tree.terminal[n] and tree.children[n, 0] < 0 for n in range(tree.num_nodes))
    answers = np.flatnonzero(tree.is_answer)
    assert set(tree.reward[answers]) <= {-1.0, 1.0} and tree.visits[0] == len(answers)


def test_problems_no_rollout_solved_are_searched_again_with_the_larger_budget(executor):
    config = SearchConfig(rollouts=2, candidates=3, max_depth=4, max_step_tokens=40,
                          max_output_tokens=24)
    # the second: never solved
    problems = [Problem("What is 1 + 3?", ANSWER), Problem("What is 2 + 3?", "5")]
    plain = run_search(problems, policy(0), executor, TOKENIZER, config)
    trees = run_search(problems, policy(0), executor, TOKENIZER,
                       dataclasses.replace(config, unsolved_rollouts=6))
    assert plain[0].solved and not plain[1].solved and (trees[1].searches, trees[1].rollouts,
                                                        plain[1].rollouts) == (2, 6, 2)
    for first, final in zip(plain, trees):
        if first.solved:
            assert final.searches == 1 and final.texts == first.texts


def test_the_second_search_of_unsolved_problems_keeps_the_first_searchs_tree_shapes(executor):
    from rstar_jax.search import tree as tree_ops

    config = SearchConfig(rollouts=3, candidates=3, max_depth=4, max_step_tokens=40,
                          max_output_tokens=24, seed=5)
    problems = [Problem("What is 1 + 3?", ANSWER), Problem("What is 2 + 3?", "5"),
                Problem("What is 3 + 3?", "6")]
    run_search(problems, policy(0), executor, TOKENIZER, config)
    compiled = tree_ops.expand._cache_size()
    # one unsolved problem of three, with fewer rollouts: a narrower, smaller tree if not padded
    trees = run_search(problems, policy(0), executor, TOKENIZER,
                       dataclasses.replace(config, unsolved_rollouts=1))
    assert [t.searches for t in trees] == [1, 2, 2] and trees[1].rollouts == 1
    assert tree_ops.expand._cache_size() == compiled
