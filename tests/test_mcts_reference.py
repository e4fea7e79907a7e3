"""The reference search (tests/mcts_reference.py) on hand-written scenarios whose trees are worked
out by hand from the driver's docstring, and the scripted stand-ins it runs with."""

import numpy as np
import pytest
from mcts_reference import compare_trees, reference_search
from scripted import (
    CharTokenizer,
    ScriptedPolicy,
    ScriptedScorer,
    random_rule,
    table_rule,
)

from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.data.tree import SearchTree
from rstar_jax.search.driver import Problem, expansion_seed
from rstar_jax.steps import format as fmt
from rstar_jax.steps.executor import CodeExecutor

TOK = CharTokenizer()
QUESTION = "What is 6 * 7?"
PROBLEM = Problem(QUESTION, "42")
PROMPT = TOK.policy_prompt_ids(QUESTION)

A = "<code>\nx = 6 * 7\n<end_of_step>"
B = "<code>\nx = 7\n<end_of_step>"
FAIL = "<code>\nraise ValueError('no')\n<end_of_step>"
PRINT = "\nprint(x)\n<end_of_code>"
OUT42 = "\n<output>42<end_of_output>\n"


def ans(value, lead="The answer is "):
    return f"<answer>{lead}\\boxed{{{value}}}<end_of_answer>"


class RecordingExecutor:
    def __init__(self, executor):
        self.executor, self.calls = executor, []

    def run(self, programs):
        self.calls.append(list(programs))
        return self.executor.run(programs)


@pytest.fixture(scope="module")
def executor():
    with CodeExecutor(num_workers=2) as ex:
        yield ex


def search(executor, table, *, problem=PROBLEM, scorer=None, stop_ids=None, **fields):
    """The reference tree of `problem` under a table policy; also the policy and the executor
    calls. Defaults: TERMINAL mode, K = 3, 8 rollouts."""
    config = SearchConfig(**{"candidates": 3, "rollouts": 8, "max_depth": 8, "max_step_tokens": 64,
                             "max_output_tokens": 16, **fields})
    policy = ScriptedPolicy(table_rule(table), TOK, config.max_step_tokens, stop_ids)
    ex = RecordingExecutor(executor)
    tree = reference_search(problem, 0, policy, ex, TOK, config, scorer=scorer)
    return tree, policy, ex


def ending_scorer(values):
    """A scorer giving `values[s]` to a sequence whose text ends with step s."""
    def fn(text):
        return next(v for s, v in values.items() if text.endswith(s))
    return ScriptedScorer(fn, TOK)


def expanded(policy):
    """The nodes expanded, in order, read back from the seeds of the policy's calls."""
    by_seed = {expansion_seed(0, 0, n): n for n in range(64)}
    return [by_seed[seeds[0]] for _, seeds in policy.calls]


# --- the stand-ins ------------------------------------------------------------------------------


def test_char_tokenizer_round_trips_and_keeps_special_tokens_whole():
    text = fmt.policy_prompt("2 < 3?") + A + PRINT + OUT42 + ans(42) + "<end_of_answe"
    ids = TOK.encode(text)
    assert TOK.decode(ids) == text
    assert sorted(TOK.step_token_ids.values()) == list(range(3, 10))
    assert TOK.encode(fmt.END_OF_OUTPUT + fmt.OUTPUT) == [7, 6]
    assert TOK.encode(fmt.USER + fmt.ASSISTANT) == [10, 11]
    assert TOK.encode("a<") == [16 + 97, 16 + 60] and max(ids) < TOK.vocab_size
    assert TOK.decode(TOK.encode(A), skip_special=True) == "\nx = 6 * 7\n"
    with pytest.raises(ValueError):
        TOK.encode("é")


def test_scripted_policy_cuts_steps_at_stops_and_budget():
    rule = table_rule({"": [A + "junk", "<code>\n" + "y" * 50, ans(1)]})
    policy = ScriptedPolicy(rule, TOK, 20)
    tokens, lengths = policy.sample([PROMPT, PROMPT], 3, [5, 6])
    assert tokens.dtype == np.int32 and lengths.dtype == np.int32 and tokens.shape == (6, 20)
    steps = [TOK.decode(tokens[i, :lengths[i]]) for i in range(6)]
    assert steps[0] == A and steps[3:] == steps[:3]
    assert TOK.encode(steps[1]) == TOK.encode("<code>\n" + "y" * 50)[:20]
    assert fmt.classify_step(steps[1]) is fmt.StepKind.INCOMPLETE
    assert (tokens[0, lengths[0]:] == 0).all()
    assert policy.calls == [([PROMPT, PROMPT], [5, 6])]


def test_random_rule_and_scorer_are_deterministic():
    rule = random_rule(3, "42")
    responses = ("", A, A + PRINT + OUT42)
    outs = [[rule(QUESTION, r, s) for s in range(16)] for r in responses]
    assert outs == [[random_rule(3, "42")(QUESTION, r, s) for s in range(16)] for r in responses]
    assert all(s.startswith(("<code>", "<answer>")) for s in outs[0])
    assert len(set(outs[0])) < 16  # repeats within one expansion
    values = ScriptedScorer().score([TOK.encode(t) for t in outs[0] + outs[1]])
    assert values.dtype == np.float32 and (np.abs(values) <= 1).all()
    assert (values * 8 == np.round(values * 8)).all()


# --- hand-worked trees --------------------------------------------------------------------------


def test_a_code_then_output_then_right_answer(executor):
    table = {"": [A, FAIL, A], A: [PRINT] * 3, A + PRINT + OUT42: [ans(42)] * 3}
    t, policy, ex = search(executor, table)
    assert t["parent"] == [-1, 0, 0, 1, 3] and t["depth"] == [0, 1, 1, 2, 3]
    assert t["children"] == [[1, 2], [3], [], [4], []]
    assert t["texts"] == ["", A, FAIL, PRINT + OUT42, ans(42)]
    assert "<output>42<end_of_output>" in t["texts"][3] and t["tokens"][3] == TOK.encode(PRINT + OUT42)
    assert t["valid"] == [True, True, False, True, True] and t["errors"] == [0, 0, 1, 0, 0]
    assert t["is_answer"] == [False, False, False, False, True]
    # The failing step: N = 1, W = -1 on itself only; the answer's +1 goes up to the root.
    assert t["visits"] == [1, 1, 1, 1, 1] and t["value_sum"] == [1, 1, -1, 1, 1]
    assert t["reward"] == [0, 0, -1, 0, 1] and t["init_value"] == [0] * 5
    # Rollouts: 1 ends at node 3 (its only child is terminal), 2 at node 1, 3 at the root.
    assert t["terminal"] == [True] * 5 and t["rollouts"] == 3 and not t["overflow"]
    assert (t["answer"], t["answer_node"]) == ("42", 4)
    assert expanded(policy) == [0, 1, 3]
    paths = ["", A, A + PRINT + OUT42]
    assert [p for p, _ in policy.calls] == [[PROMPT + TOK.encode(path)] for path in paths]
    assert ex.calls == [["\nx = 6 * 7\n", "\nraise ValueError('no')\n"],
                        ["\nx = 6 * 7\n\nprint(x)\n"]]


@pytest.mark.parametrize("step, answer", [(ans(41), "41"),
                                          ("<answer>No idea.<end_of_answer>", None)])
def test_b_a_wrong_or_missing_answer_backs_up_minus_one(executor, step, answer):
    t, _, _ = search(executor, {"": [A] * 3, A: [PRINT] * 3, A + PRINT + OUT42: [step] * 3})
    assert t["visits"] == [1, 1, 1, 1] and t["value_sum"] == [-1, -1, -1, -1]
    assert t["reward"] == [0, 0, 0, -1] and t["is_answer"][3]
    assert (t["answer"], t["answer_node"]) == (answer, 3)


def test_c_one_answer_per_expansion(executor):
    table = {"": [ans(41), ans(42), B], B: [ans(42), ans(42), ans(42, "So ")]}
    t, _, _ = search(executor, table)
    assert t["children"] == [[1, 2], [], [3], []] and t["texts"][1:] == [ans(41), B, ans(42)]
    assert t["visits"] == [2, 1, 1, 1] and t["value_sum"] == [0, -1, 1, 1]
    assert t["rollouts"] == 2 and t["terminal"] == [True] * 4
    assert (t["answer"], t["answer_node"]) == ("42", 3)


@pytest.mark.parametrize("rollouts, counted, root_terminal", [(2, 2, False), (10, 3, True)])
def test_d_all_terminal_children_end_the_rollout(executor, rollouts, counted, root_terminal):
    fails = ["\nraise ValueError('a')\n<end_of_step>", "\n1/0\n<end_of_step>",
             "\nq = (\n<end_of_step>"]
    t, policy, _ = search(executor, {"": [A, B, A], A: fails, B: [ans(42)] * 3}, rollouts=rollouts)
    # Rollout 1: root -> node 1 (tie) -> three failing children -> node 1 terminal.
    # Rollout 2: root -> node 2 -> an answer -> node 2 terminal. Rollout 3: the root.
    assert t["children"] == [[1, 2], [3, 4, 5], [6], [], [], [], []]
    assert t["terminal"] == [root_terminal] + [True] * 6 and t["rollouts"] == counted
    assert t["visits"] == [1, 0, 1, 1, 1, 1, 1] and t["value_sum"] == [1, 0, 1, -1, -1, -1, 1]
    assert expanded(policy) == [0, 1, 2]


def test_d_root_with_only_terminal_children_ends_the_search(executor):
    t, _, _ = search(executor, {"": [FAIL, "<code>\n1/0\n<end_of_step>", ans(5)]}, rollouts=5)
    assert t["terminal"] == [True] * 4 and t["rollouts"] == 1
    assert t["visits"] == [1, 1, 1, 1] and t["value_sum"] == [-1, -1, -1, -1]


def test_e_ppm_mode_scores_open_nodes(executor):
    table = {"": [A, B, A], A: [ans(42)] * 3, B: [ans(41)] * 3}
    scorer = ending_scorer({A: 0.5, B: -0.25})
    t, policy, _ = search(executor, table, mode=Mode.PPM, scorer=scorer)
    # Rollout 1: root (N = 0, no bonus) -> node 1 (Q 0.5) -> answer 42; rollout 2: node 2 -> 41.
    assert t["children"] == [[1, 2], [3], [4], [], []]
    assert t["init_value"] == [0, 0.5, -0.25, 0, 0] and t["reward"] == [0, 0, 0, 1, -1]
    assert t["visits"] == [2, 2, 2, 1, 1] and t["value_sum"] == [0, 1.5, -1.25, 1, -1]
    assert scorer.calls == [[PROMPT + TOK.encode(A), PROMPT + TOK.encode(B)]]
    assert t["rollouts"] == 3 and (t["answer"], t["answer_node"]) == ("42", 3)
    assert expanded(policy) == [0, 1, 2]


def test_e_test_mode_scores_answers_and_backs_them_up(executor):
    table = {"": [A, B, A], A: [ans(42)] * 3, B: [ans(41)] * 3}
    scorer = ending_scorer({A: 0.5, B: -0.25, ans(42): 0.75, ans(41): 0.875})
    t, _, _ = search(executor, table, problem=Problem(QUESTION), mode=Mode.TEST, scorer=scorer)
    assert t["init_value"] == [0, 0.5, -0.25, 0.75, 0.875] and t["reward"] == [0, 0, 0, 0.75, 0.875]
    assert t["visits"] == [2, 2, 2, 1, 1] and t["value_sum"] == [1.625, 1.25, 0.625, 0.75, 0.875]
    assert scorer.calls == [[PROMPT + TOK.encode(A), PROMPT + TOK.encode(B)],
                            [PROMPT + TOK.encode(A + ans(42))], [PROMPT + TOK.encode(B + ans(41))]]
    assert (t["answer"], t["answer_node"]) == ("41", 4)  # the highest Q, not the right answer


def test_e_answer_ties_go_to_the_first_answer(executor):
    table = {"": [A, B, A], A: [ans(42)] * 3, B: [ans(41)] * 3}
    scorer = ending_scorer({A: 0.5, B: -0.25, "<end_of_answer>": 0.25})
    t, _, _ = search(executor, table, problem=Problem(QUESTION), mode=Mode.TEST, scorer=scorer)
    assert t["is_answer"] == [False, False, False, True, True] and t["answer_node"] == 3


@pytest.mark.parametrize("mode", [Mode.TERMINAL, Mode.PPM])
def test_f_non_answer_steps_deeper_than_max_depth_are_terminal(executor, mode):
    deep, fail = "\nx = x + 1\n<end_of_step>", "\n1/0\n<end_of_step>"
    scorer = ending_scorer({A: 0.5})
    table = {"": [A] * 3, A: [deep, ans(42), fail]}
    t, _, ex = search(executor, table, max_depth=1, mode=mode, scorer=scorer)
    assert t["children"] == [[1], [2, 3, 4], [], [], []] and t["depth"] == [0, 1, 2, 2, 2]
    assert t["valid"] == [True, True, True, True, False] and t["terminal"] == [True] * 5
    assert t["reward"] == [0, 0, -1, 1, -1]
    assert t["visits"][2:] == [1, 1, 1] and t["value_sum"][2:] == [-1, 1, -1]
    assert ex.calls[1] == ["\nx = 6 * 7\n\nx = x + 1\n", "\nx = 6 * 7\n\n1/0\n"]
    if mode is Mode.PPM:  # node 2 is not scored: it is terminal
        assert scorer.calls == [[PROMPT + TOK.encode(A)]]
        assert t["init_value"] == [0, 0.5, 0, 0, 0]
        assert t["visits"][:2] == [1, 2] and t["value_sum"][:2] == [1, 1.5]
    else:
        assert scorer.calls == [] and t["visits"][:2] == [1, 1] and t["value_sum"][:2] == [1, 1]
    assert t["rollouts"] == 2


def test_f_a_step_at_max_depth_is_still_expanded(executor):
    deep = "\nx = x + 1\n<end_of_step>"
    table = {"": [A] * 3, A: [deep] * 3, A + deep: [deep, ans(42), ans(41)]}
    t, _, _ = search(executor, table, max_depth=2)
    assert t["depth"] == [0, 1, 2, 3, 3] and t["children"][2] == [3, 4]
    assert t["reward"][3:] == [-1, 1] and t["terminal"][3:] == [True, True]


def test_g_errors_threshold_two(executor):
    fail1 = "<code>\nraise ValueError('a')\n<end_of_step>"
    x, fail2 = "\nx = 6 * 7\n<end_of_step>", "\n1/0\n<end_of_step>"
    table = {"": [fail1] * 3, fail1: [x, fail2, x], fail1 + x: [PRINT] * 3,
             fail1 + x + PRINT + OUT42: [ans(42)] * 3}
    t, policy, ex = search(executor, table, errors_threshold=2)
    assert t["parent"] == [-1, 0, 1, 1, 2, 4]
    assert t["valid"] == [True, False, True, False, True, True] and t["errors"] == [0, 1, 0, 2, 0, 0]
    # A first failure stays open; the second in a row is terminal; the program of a child of a
    # failing node leaves out the failing node's code.
    assert ex.calls == [["\nraise ValueError('a')\n"], ["\nx = 6 * 7\n", "\n1/0\n"],
                        ["\nx = 6 * 7\n\nprint(x)\n"]]
    assert t["texts"][4] == PRINT + OUT42
    assert t["visits"] == [1, 1, 1, 1, 1, 1] and t["value_sum"] == [1, 1, 1, -1, 1, 1]
    assert t["reward"] == [0, 0, 0, -1, 0, 1] and t["terminal"] == [True] * 6
    assert t["rollouts"] == 4 and expanded(policy) == [0, 1, 2, 4]


def test_incomplete_and_malformed_steps_fail_without_running(executor):
    cut = "<code>\ny = " + "9" * 80  # no terminator within the 64-token budget
    malformed = "<code>\nw = 1<output>\n<end_of_step>"
    t, _, ex = search(executor, {"": [cut, malformed, A], A: [ans(42)] * 3})
    assert t["tokens"][1] == TOK.encode(cut)[:64] and t["valid"] == [True, False, False, True, True]
    assert t["terminal"][1:3] == [True, True] and t["reward"][1:3] == [-1, -1]
    assert ex.calls == [["\nx = 6 * 7\n"]]


@pytest.mark.parametrize("capacity, nodes, counted", [(4, 3, 0), (5, 4, 1)])
def test_h_overflow_ends_the_search(executor, capacity, nodes, counted):
    # K = 2: the root's expansion needs 1 + 2 <= capacity; node 1's needs 3 + 2 <= capacity
    # (counting K, not the one child it keeps); node 2's needs 4 + 2 > 5.
    t, policy, _ = search(executor, {"": [A, B], A: [ans(42)] * 2}, candidates=2, capacity=capacity)
    assert len(t["parent"]) == nodes and t["overflow"] and t["rollouts"] == counted
    assert expanded(policy) == [0, 1][:nodes - 2]
    assert not t["terminal"][0] and not t["terminal"][2]


def test_i_uct_ties_go_to_the_first_child(executor):
    t, policy, _ = search(executor, {"": [A, B, A], A: [ans(42)] * 3, B: [ans(42)] * 3}, rollouts=2)
    # Both children open, N = 0: node 1 first. Then root N = 1 (ln 1 = 0): only Q counts.
    assert expanded(policy) == [0, 1, 2] and t["visits"][:3] == [2, 1, 1]


@pytest.mark.parametrize("c_uct", [2.0, 0.0])
def test_i_the_uct_bonus_decides(executor, c_uct):
    a2 = "\nx = x + 1\n<end_of_step>"
    table = {"": [A, B], A: [ans(42), a2], A + a2: [ans(41)] * 2}
    scorer = ending_scorer({A: 0.5, B: -0.25, a2: 0.0})
    t, policy, _ = search(executor, table, mode=Mode.PPM, scorer=scorer, candidates=2, rollouts=2,
                          c_uct=c_uct)
    # After rollout 1: root N = 2; node 1 N = 3, W = 0.5 + 1 + 0 - 1; node 2 N = 1, W = -0.25.
    assert t["visits"][:3] == [2 + (c_uct > 0), 3, 1 + (c_uct > 0)] and t["value_sum"][1] == 0.5
    f = np.float32
    score_1 = f(0.5) / f(3) + f(c_uct) * np.sqrt(np.log(f(2)) / f(3))  # 0.167 + 0.961
    score_2 = f(-0.25) + f(c_uct) * np.sqrt(np.log(f(2)) / f(1))  # -0.25 + 1.665
    if c_uct > 0:  # node 2 has the lower Q but the larger bonus: rollout 2 expands it
        assert score_2 > score_1 and expanded(policy) == [0, 1, 4, 2] and not t["terminal"][1]
    else:  # by Q alone node 1 wins, and rollout 2 finds its children all terminal
        assert score_1 > score_2 and expanded(policy) == [0, 1, 4] and t["terminal"][1]


def test_bootstrap_cuts_a_written_output_and_runs_the_code(executor):
    ids = TOK.step_token_ids
    stops = [ids[fmt.END_OF_STEP], ids[fmt.END_OF_OUTPUT], ids[fmt.END_OF_ANSWER]]
    code = "<code>\nprint(6 * 7)\n<end_of_code>"
    table = {"": [code + "\n<output>99<end_of_output>", code, A], code + OUT42: [ans(42)] * 3}
    t, policy, _ = search(executor, table, bootstrap=True, stop_ids=stops, rollouts=1)
    assert policy.calls[0][0] == [TOK.prompt_ids(QUESTION, bootstrap=True)]
    assert t["texts"] == ["", code + OUT42, A, ans(42)] and t["value_sum"][:2] == [1, 1]


def random_tree(executor, mode, seed):
    config = SearchConfig(mode=mode, candidates=4, rollouts=6, max_depth=5,
                          errors_threshold=1 + seed % 2,
                          max_step_tokens=48, max_output_tokens=16, seed=seed)
    problem = Problem(QUESTION, "42") if mode.graded else Problem(QUESTION)
    policy = ScriptedPolicy(random_rule(seed, "42"), TOK, config.max_step_tokens)
    return reference_search(problem, seed, policy, executor, TOK, config,
                            scorer=ScriptedScorer()), config


@pytest.mark.parametrize("mode", list(Mode))
def test_random_trees_are_deterministic_and_consistent(executor, mode):
    """random_rule trees: the same twice, several levels deep, every step kind, and in TERMINAL
    mode N, W of an open node the sums over its children that back up."""
    kinds, depth = set(), 0
    for seed in range(3):
        t, config = random_tree(executor, mode, seed)
        assert t == random_tree(executor, mode, seed)[0]
        n = len(t["parent"])
        assert n <= config.nodes and t["rollouts"] <= config.rollouts
        kinds |= {fmt.classify_step(text) for text in t["texts"][1:]}
        depth = max(depth, *t["depth"])
        for node in range(n):
            kids = t["children"][node]
            assert all(t["parent"][c] == node and t["depth"][c] == t["depth"][node] + 1
                       for c in kids)
            if kids and mode is Mode.TERMINAL:
                live = [c for c in kids if t["is_answer"][c] or t["reward"][c] != -1]
                assert t["visits"][node] == sum(t["visits"][c] for c in live)
                assert t["value_sum"][node] == pytest.approx(sum(t["value_sum"][c] for c in live))
            if t["is_answer"][node]:
                assert t["visits"][node] == 1 and t["value_sum"][node] == t["reward"][node]
    assert kinds == set(fmt.StepKind) and depth >= 4

def as_search_tree(want, k):
    """A driver SearchTree holding the reference tree `want`, children padded to K with -1."""
    n = len(want["parent"])
    children = np.full((n, k), -1, np.int32)
    for node, kids in enumerate(want["children"]):
        children[node, :len(kids)] = kids
    arrays = {name: np.array(want[name], dtype) for name, dtype in (
        ("parent", np.int32), ("depth", np.int32), ("visits", np.int32), ("value_sum", np.float32),
        ("init_value", np.float32), ("reward", np.float32), ("terminal", bool), ("valid", bool),
        ("is_answer", bool), ("errors", np.int32))}
    return SearchTree(problem=PROBLEM, prompt_ids=PROMPT, children=children, **arrays,
                      tokens=want["tokens"], texts=want["texts"], rollouts=want["rollouts"],
                      overflow=want["overflow"], answer=want["answer"],
                      answer_node=want["answer_node"])


def test_compare_trees_accepts_the_tree_and_names_each_difference(executor):
    table = {"": [A, FAIL, A], A: [PRINT] * 3, A + PRINT + OUT42: [ans(42)] * 3}
    want, _, _ = search(executor, table)
    compare_trees(as_search_tree(want, 3), want)
    got = as_search_tree(want, 3)
    got.value_sum[1] += 2e-6  # within tolerance
    compare_trees(got, want)
    for change, message in [
        (lambda t: t.visits.__setitem__(3, 2), "visits differs at 1 node"),
        (lambda t: t.value_sum.__setitem__(2, -0.5), "value_sum differs"),
        (lambda t: t.terminal.__setitem__(0, False), "terminal differs"),
        (lambda t: t.children.__setitem__((0, slice(None)), [2, 1, -1]), "children differs"),
        (lambda t: t.children.__setitem__((0, slice(None)), [-1, 1, 2]), "not packed"),
        (lambda t: t.texts.__setitem__(3, PRINT), "texts differs"),
        (lambda t: setattr(t, "rollouts", 2), "rollouts: got 2, want 3"),
        (lambda t: setattr(t, "answer_node", -1), "answer_node"),
    ]:
        got = as_search_tree(want, 3)
        got.texts, got.tokens = list(got.texts), [list(x) for x in got.tokens]
        change(got)
        with pytest.raises(AssertionError, match=message):
            compare_trees(got, want)
    short = {**want, **{name: want[name][:4] for name in ("parent", "depth", "children", "tokens",
                                                          "texts")}}
    with pytest.raises(AssertionError, match="node count: got 5, want 4"):
        compare_trees(as_search_tree(want, 3), short)
