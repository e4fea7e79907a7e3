"""SFT and PPM extraction on hand-built trees; every expected row and pair is written out by
hand from the rules in rstar_jax/data/extract.py's docstring."""

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from rstar_jax.data import Problem
from rstar_jax.data.extract import (
    ExtractConfig,
    extract,
    extract_outcomes,
    extract_ppm,
    extract_sft,
    trajectories,
)
from rstar_jax.data.tree import SearchTree
from rstar_jax.steps import format as fmt

QUESTION = "What is 6 * 7?"
PROMPT = fmt.policy_prompt(QUESTION)


def text(name: str, kind: str) -> str:
    """A step whose text differs from every other name's by far more than 20 characters."""
    if kind in ("right", "wrong"):
        return f"<answer>{name * 24} \\boxed{{{42 if kind == 'right' else 41}}}<end_of_answer>"
    return f"\n# {name * 24}\nx = 1\n<end_of_step>"


def build(nodes, question=QUESTION) -> SearchTree:
    """A tree from [(name, parent, q, kind)], node i + 1 being the i-th entry (0 is the root).
    kind: "code" (a valid step), "fail" (its code failed), "right" / "wrong" (an answer with
    reward +1 / -1, Q = reward). Only Q, the flags and the texts matter to extraction; every
    node gets N = 1, W = Q."""
    n = len(nodes) + 1
    parent, texts = [-1], [""]
    q, valid, answer, reward = [0.0], [True], [False], [0.0]
    kids = [[] for _ in range(n)]
    for i, (name, p, value, kind) in enumerate(nodes, 1):
        parent.append(p)
        kids[p].append(i)
        texts.append(text(name, kind))
        r = {"right": 1.0, "wrong": -1.0}.get(kind, 0.0)
        q.append(r if r else value)
        valid.append(kind != "fail")
        answer.append(bool(r))
        reward.append(r)
    k = max(4, max(len(c) for c in kids))
    children = np.full((n, k), -1, np.int32)
    for i, c in enumerate(kids):
        children[i, :len(c)] = c
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[parent[i]] + 1
    answer = np.array(answer)
    return SearchTree(problem=Problem(question, "42", id="p1"), prompt_ids=[],
                      parent=np.array(parent, np.int32),
                      depth=np.array(depth, np.int32), children=children,
                      visits=np.ones(n, np.int32), value_sum=np.array(q, np.float32),
                      init_value=np.zeros(n, np.float32),
                      reward=np.array(reward, np.float32), terminal=answer.copy(),
                      valid=np.array(valid), is_answer=answer, errors=np.zeros(n, np.int32),
                      tokens=[[] for _ in range(n)], texts=texts,
                      rollouts=int(answer.sum()), overflow=False, answer=None, answer_node=-1)


def response(*steps) -> str:
    return "".join(text(name, kind) for name, kind in steps)


# --- SFT ------------------------------------------------------------------------------------

# 1 s1 (.5) -> 3 right, 4 wrong, 5 right;  2 s2 (0) -> 6 right
SFT_TREE = [("a", 0, 0.5, "code"), ("b", 0, 0.0, "code"), ("c", 1, 0, "right"),
            ("d", 1, 0, "wrong"), ("e", 1, 0, "right"), ("f", 2, 0, "right")]


def test_trajectories_have_their_texts_qs_and_flags():
    trajs = trajectories(build(SFT_TREE))
    assert [t.nodes for t in trajs] == [(1, 3), (1, 4), (1, 5), (2, 6)]
    assert [t.correct for t in trajs] == [True, False, True, True]
    assert [(t.mean_q, t.min_q) for t in trajs] == [(0.75, 0.5), (-0.25, -1.0), (0.75, 0.5),
                                                    (0.5, 0.0)]
    assert trajs[0].response == response(("a", "code"), ("c", "right")) and not any(t.has_error for t in trajs)


def test_sft_keeps_the_top_two_correct_by_mean_q_ties_to_the_first_created():
    rows = extract_sft(build(SFT_TREE))
    # (1,3) and (1,5) tie on mean and min Q: node 3 was created first; (2,6) has a lower mean.
    assert [r.response for r in rows] == [response(("a", "code"), ("c", "right")),
                                          response(("a", "code"), ("e", "right"))]
    assert (rows[0].problem_id, rows[0].question, rows[0].mean_q, rows[0].min_q,
            rows[0].source) == (
        "p1", QUESTION, 0.75, 0.5, "search")
    assert len(extract_sft(build(SFT_TREE), ExtractConfig(sft_per_problem=3))) == 3


def test_sft_breaks_mean_ties_by_min_q_and_drops_paths_with_a_failed_step():
    tree = build([("a", 0, 0.5, "code"), ("b", 0, 0.25, "code"), ("c", 0, 0.9, "fail"),
                  ("d", 1, 0.75, "code"), ("e", 2, 1.0, "code"), ("f", 3, 0.9, "code"),
                  ("g", 4, 0, "right"), ("h", 5, 0, "right"), ("i", 6, 0, "right")])
    # a-d-g: [.5, .75, 1] mean .75 min .5; b-e-h: [.25, 1, 1] mean .75 min .25; c-f-i failed.
    rows = extract_sft(tree, ExtractConfig(sft_per_problem=3))
    assert [r.response for r in rows] == [response(("a", "code"), ("d", "code"), ("g", "right")),
                                          response(("b", "code"), ("e", "code"), ("h", "right"))]


def test_sft_drops_problems_under_the_correct_fraction():
    tree = build([("a", 0, 0.5, "code"), ("b", 1, 0, "right"), ("c", 1, 0, "wrong"),
                  ("d", 0, 0, "wrong")])
    assert extract_sft(tree) == []  # 1 of 3 correct < 50%
    assert [r.response for r in extract_sft(tree, ExtractConfig(min_correct_fraction=0))] == [
        response(("a", "code"), ("b", "right"))]
    half = build([("a", 0, 0.5, "code"), ("b", 1, 0, "right"), ("c", 1, 0, "wrong")])
    assert len(extract_sft(half)) == 1  # exactly 50% stays
    _, _, stats = extract([tree, half])
    assert (stats.problems, stats.trajectories, stats.correct, stats.sft,
            stats.low_correct_problems) == (2, 5, 2, 1, 1)


def test_outcome_examples_take_right_and_wrong_in_turn_without_failed_or_repeated_paths():
    tree = build([("a", 0, 0.5, "code"), ("b", 1, 0, "wrong"), ("c", 1, 0, "wrong"),
                  ("d", 1, 0, "right"), ("e", 0, 0.9, "fail"), ("f", 5, 0, "right"),
                  ("g", 0, 0, "right")])
    got = extract_outcomes(tree)
    assert [(o.response, o.correct) for o in got] == [
        (response(("a", "code"), ("d", "right")), True),
        (response(("a", "code"), ("b", "wrong")), False),
        (response(("g", "right")), True), (response(("a", "code"), ("c", "wrong")), False)]
    assert (got[0].problem_id, got[0].question) == ("p1", QUESTION)
    assert len(extract_outcomes(tree, ExtractConfig(outcomes_per_problem=3))) == 3


# --- PPM pairs ------------------------------------------------------------------------------

# root: 1 (.8, right below), 2 (.5, right and wrong below), 3 (-.4, wrong below),
#       4 (failing, wrong below), 5 (.2, no answer below)
PPM_TREE = [("a", 0, 0.8, "code"), ("b", 0, 0.5, "code"), ("c", 0, -0.4, "code"),
            ("d", 0, -0.9, "fail"), ("e", 0, 0.2, "code"), ("f", 1, 0, "right"),
            ("g", 2, 0, "right"), ("h", 2, 0, "wrong"), ("i", 3, 0, "wrong"), ("j", 4, 0, "wrong")]


def _pairs(pairs):
    return [(p.kind, p.prompt, p.positive, p.negative, round(p.q_positive, 4),
             round(p.q_negative, 4)) for p in pairs]


def test_step_and_final_pairs_of_a_tree_written_out():
    got = extract_ppm(build(PPM_TREE))
    a, b, c = text("a", "code"), text("b", "code"), text("c", "code")
    f, g, h, i = text("f", "right"), text("g", "right"), text("h", "wrong"), text("i", "wrong")
    assert _pairs(got) == [
        # root: positives a (.8), b (.5); negatives c (-.4), b (.5); d failed, e has no answer.
        # (a, b) has margin .3 < .5; (b, b) is a child with itself.
        ("step", PROMPT, a, c, 0.8, -0.4),
        ("step", PROMPT, b, c, 0.5, -0.4),
        # node 2: g against h.
        ("step", PROMPT + b, g, h, 1.0, -1.0),
        # whole trajectories: a-f (.9), b-g (.75) against c-i (-.7), b-h (-.25); d-j failed.
        ("final", PROMPT, a + f, c + i, 0.9, -0.7),
        ("final", PROMPT, a + f, b + h, 0.9, -0.25),
        ("final", PROMPT, b + g, c + i, 0.75, -0.7),
        ("final", PROMPT, b + g, b + h, 0.75, -0.25),
    ]
    _, pairs, stats = extract([build(PPM_TREE)])
    assert _pairs(pairs) == _pairs(got)
    assert (stats.step_pairs, stats.final_pairs, stats.dropped_margin,
            stats.dropped_distance) == (3, 4, 1, 0)
    assert _pairs(extract_ppm(build(PPM_TREE), ExtractConfig(final_pairs=0))) == _pairs(got)[:3]


def test_one_candidate_on_a_side_lets_the_other_take_four():
    # Positives p1..p5 (.9 .7 .5 .3 .1), one negative n (-.8): four positives pair with it.
    nodes = [(name, 0, value, "code") for name, value in zip("pqrst", (0.9, 0.7, 0.5, 0.3, 0.1))]
    nodes += [("n", 0, -0.8, "code")] + [(f"{k}", i + 1, 0, "right") for i, k in enumerate("PQRST")]
    nodes += [("N", 6, 0, "wrong")]
    cfg = ExtractConfig(final_pairs=0)
    got = extract_ppm(build(nodes), cfg)
    assert [(p.positive, p.negative) for p in got] == [(text(k, "code"), text("n", "code"))
                                                       for k in "pqrs"]
    # A second negative (-.6): two per side again.
    nodes.insert(6, ("m", 0, -0.6, "code"))
    nodes = [(name, parent + (parent >= 7), q, kind) for name, parent, q, kind in nodes] + [("M", 7, 0, "wrong")]
    got = extract_ppm(build(nodes), cfg)
    assert [(p.positive[3], p.negative[3]) for p in got] == [("p", "n"), ("p", "m"), ("q", "n"),
                                                             ("q", "m")]


def test_texts_closer_than_min_distance_are_not_a_pair():
    tree = build([("a", 0, 0.8, "code"), ("b", 0, -0.5, "code"), ("c", 1, 0, "right"),
                  ("d", 2, 0, "wrong")])
    tree.texts[2] = tree.texts[1].replace("a" * 19, "z" * 19)  # 19 substitutions
    cfg = ExtractConfig(final_pairs=0)
    _, pairs, stats = extract([tree], cfg)
    assert pairs == [] and stats.dropped_distance == 1
    assert len(extract_ppm(tree, ExtractConfig(final_pairs=0, min_distance=19))) == 1
    tree.texts[2] = tree.texts[1].replace("a" * 20, "z" * 20)
    assert len(extract_ppm(tree, cfg)) == 1


def test_an_ungraded_tree_is_refused():
    tree = build([("a", 0, 0.5, "code"), ("b", 1, 0, "right")])
    tree.reward[2] = tree.value_sum[2] = 0.37  # a test-time search scores answers with the PPM
    with pytest.raises(ValueError, match=r"answer nodes \[2\] have rewards \[0.37.*graded search"):
        extract_sft(tree)
    with pytest.raises(ValueError, match="graded search"):
        extract_ppm(tree)


@pytest.mark.parametrize("field,value,message", [
    ("sft_per_problem", -1, "sft_per_problem must be an int >= 0, got -1"),
    ("min_correct_fraction", 1.5, r"min_correct_fraction must be in \[0, 1\], got 1.5"),
    ("min_margin", -0.1, r"min_margin must be in \[0, 2\]"),
    ("fallback_per_side", 1, "fallback_per_side=1 must be at least pairs_per_side=2"),
    ("min_distance", 2.5, "min_distance must be an int >= 0, got 2.5"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ExtractConfig(**{field: value})


def test_the_distance_filter_is_levenshtein_at_the_threshold():
    from rstar_jax.data.extract import _far

    def plain(a, b):
        row = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            prev, row[0] = row[0], i
            for j, y in enumerate(b, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
        return row[-1]

    rng = np.random.default_rng(0)
    for _ in range(200):
        a = "".join(rng.choice(list("abc"), size=rng.integers(0, 40)))
        b = list(a)
        for _ in range(rng.integers(0, 30)):
            b.insert(int(rng.integers(0, len(b) + 1)), str(rng.choice(list("abcd"))))
        b = "".join(b)
        k = int(rng.integers(0, 25))
        assert _far(a, b, k) == (plain(a, b) >= k) == (Levenshtein.distance(a, b) >= k)


def test_a_margin_of_exactly_min_margin_in_float32_is_kept():
    # Q = 0.7 and 0.2 are float32 in a tree; read as Python floats their difference is 0.49999998.
    tree = build([("a", 0, 0.7, "code"), ("b", 0, 0.2, "code"), ("c", 1, 0, "right"),
                  ("d", 2, 0, "wrong")])
    assert float(tree.q[1]) - float(tree.q[2]) < 0.5
    pairs = extract_ppm(tree, ExtractConfig(final_pairs=0))
    assert [(p.positive, p.negative) for p in pairs] == [(text("a", "code"), text("b", "code"))]


def test_each_example_names_the_nodes_it_comes_from():
    tree = build(SFT_TREE)
    assert [r.metadata["answer_node"] for r in extract_sft(tree)] == [3, 5]
    pairs = extract_ppm(tree, ExtractConfig(min_distance=0))
    assert {p.kind for p in pairs} == {"step", "final"}
    for p in pairs:
        m = p.metadata
        if p.kind == "step":
            assert tree.parent[m["positive_node"]] == tree.parent[m["negative_node"]] == m["node"]
            assert (p.positive, p.negative) == (tree.texts[m["positive_node"]],
                                                tree.texts[m["negative_node"]])
        else:
            assert p.positive == "".join(tree.texts[v] for v in tree.path(m["positive_node"]))
            assert p.negative == "".join(tree.texts[v] for v in tree.path(m["negative_node"]))
