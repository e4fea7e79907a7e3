"""Evaluation: the selection rules, accuracy curves, the report, and solving with the real search."""

import json
import math

import pytest

from rstar_jax import evaluate
from rstar_jax.evaluate import Candidate, Solutions
from rstar_jax.search.config import SearchConfig
from rstar_jax.search.driver import Problem


def sols(*cands, answer="5"):
    return Solutions(Problem("q", answer), [Candidate(a, s, c) for a, s, c in cands])


def test_selection_rules_pick_what_section_3_says():
    s = sols(("4", 0.9, False), ("5", 0.8, True), ("5.0", 0.7, True), ("6", 0.1, False), (None, 1.0, False))
    assert s.select("highest").answer == "4"  # the best-scored trajectory (a missing answer never counts)
    assert s.select("majority").answer == "5"  # 5 and 5.0 are one answer: two votes
    assert s.select("top_k_vote", top_k=2).answer == "4"  # {4, 5}: a tie goes to the group seen first
    assert s.select("top_k_vote", top_k=3).answer == "5"
    assert s.select("weighted_vote").answer == "5"  # (0.8 + 1) + (0.7 + 1) > 0.9 + 1
    assert s.select("highest", k=1).answer == "4" and s.select("majority", k=1).answer == "4"
    heavy = sols(("4", 0.95, False), ("5", -0.9, True), ("5", -0.9, True))
    assert heavy.select("weighted_vote").answer == "4"  # 1.95 > 0.1 + 0.1
    assert sols((None, 0.0, False)).select("highest") is None
    with pytest.raises(ValueError, match="unknown selection rule 'best'"):
        s.select("best")


def test_accuracy_and_its_curve_over_trajectories():
    right_late = sols(("4", 0.1, False), ("5", 0.9, True), ("5", 0.8, True), ("6", 0.0, False))
    always = sols(("5", 0.5, True))
    never = sols(("7", 0.5, False))
    assert evaluate.accuracy([right_late, always, never]) == pytest.approx(2 / 3)
    assert evaluate.accuracy([right_late, always, never], "highest", k=1) == pytest.approx(1 / 3)
    assert evaluate.accuracy_curve([right_late, always, never], "highest") == [
        (1, pytest.approx(1 / 3)), (2, pytest.approx(2 / 3)), (4, pytest.approx(2 / 3))]
    assert math.isnan(evaluate.accuracy([]))


def test_report_writes_a_table_json_and_a_plot(tmp_path):
    results = {"greedy": {"accuracy": 0.25, "trajectories": 1},
               "mcts": {"accuracy": 0.5, "trajectories": 4, "curve": [(1, 0.25), (2, 0.4), (4, 0.5)]}}
    table = evaluate.report(results, tmp_path, title="test")
    assert "| greedy | 25.0% | 1 |" in table and "| mcts | 50.0% | 4 |" in table
    assert json.loads((tmp_path / "results.json").read_text())["mcts"]["accuracy"] == 0.5
    assert (tmp_path / "accuracy.png").stat().st_size > 1000


PROBLEMS = [Problem("What is 2 + 3?", "5"), Problem("What is 4 * 6?", "24")]
BUDGET = SearchConfig(max_depth=4, max_step_tokens=24, max_output_tokens=16)


def test_greedy_is_one_deterministic_path_and_samples_differ(world):
    tokenizer, engine, scorer, executor = world
    a = evaluate.solve(PROBLEMS, engine, executor, tokenizer, search=BUDGET, progress=False)
    b = evaluate.solve(PROBLEMS, engine, executor, tokenizer, search=BUDGET, progress=False)
    assert [len(s.candidates) for s in a] == [1, 1]
    assert [c.answer for s in a for c in s.candidates] == [c.answer for s in b for c in s.candidates]
    with pytest.raises(ValueError, match="greedy decoding gives one solution"):
        evaluate.solve(PROBLEMS, engine, executor, tokenizer, samples=2, search=BUDGET)
    scored = evaluate.solve(PROBLEMS, engine, executor, tokenizer, samples=3, temperature=1.0, scorer=scorer,
                            search=BUDGET, progress=False)
    assert [len(s.candidates) for s in scored] == [3, 3]
    for s in scored:  # a scored answer carries the PPM's value; a path without one gets -1
        for c in s.candidates:
            assert -1 <= c.score <= 1 and (c.answer is not None or c.score == -1)


def test_mcts_pools_the_answers_of_independent_searches(world):
    tokenizer, engine, scorer, executor = world
    search = SearchConfig(rollouts=4, candidates=4, max_depth=4, max_step_tokens=24, max_output_tokens=16)
    one = evaluate.mcts(PROBLEMS, engine, scorer, executor, tokenizer, search, searches=1, progress=False)
    two = evaluate.mcts(PROBLEMS, engine, scorer, executor, tokenizer, search, searches=2, progress=False)
    for a, b in zip(one, two):
        assert b.candidates[:len(a.candidates)] == a.candidates  # the first search is the same search
        assert all(c.answer is not None for c in b.candidates)
    with pytest.raises(ValueError, match="needs a PPM scorer"):
        evaluate.mcts(PROBLEMS, engine, None, executor, tokenizer, search)
