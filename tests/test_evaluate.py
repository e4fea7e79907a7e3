"""Evaluation: the selection rules, accuracy curves, the report, and solving with the real search."""

import itertools
import json
import math

import numpy as np
import pytest

from scripted import CharTokenizer, ScriptedPolicy, ScriptedScorer, random_rule

from rstar_jax import evaluate
from rstar_jax.data.records import read_records
from rstar_jax.evaluate import Candidate, Solutions
from rstar_jax.search.config import SearchConfig
from rstar_jax.search.driver import Problem


def sols(*cands, answer="5"):
    return Solutions(Problem("q", answer), [Candidate(a, s, c) for a, s, c in cands])


def test_selection_rules_pick_what_section_3_says():
    s = sols(("4", 0.9, False), ("5", 0.8, True), ("5.0", 0.7, True), ("6", 0.1, False),
             (None, 1.0, False))
    # the best-scored trajectory (a missing answer never counts)
    assert s.select("highest").answer == "4"
    assert s.select("majority").answer == "5"  # 5 and 5.0 are one answer: two votes
    # {4, 5}: a tie goes to the group seen first
    assert s.select("top_k_vote", top_k=2).answer == "4"
    assert s.select("top_k_vote", top_k=3).answer == "5"
    assert s.select("weighted_vote").answer == "5"  # (0.8 + 1) + (0.7 + 1) > 0.9 + 1
    assert s.select("highest", k=1).answer == "4" and s.select("majority", k=1).answer == "4"
    heavy = sols(("4", 0.95, False), ("5", -0.9, True), ("5", -0.9, True))
    assert heavy.select("weighted_vote").answer == "4"  # 1.95 > 0.1 + 0.1
    assert sols((None, 0.0, False)).select("highest") is None
    # pass@k: any correct
    assert s.select("oracle").answer == "5" and s.select("oracle", k=1).answer == "4"
    assert sols(("4", 0.1, False), ("6", 0.9, False)).select("oracle").correct is False
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


def test_the_wilson_interval_matches_a_hand_computation():
    # 8 of 10: centre (0.8 + 1.96^2 / 20) / (1 + 1.96^2 / 10) = 0.7167, half-width 0.2266.
    lo, hi = evaluate.wilson_interval(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert evaluate.wilson_interval(0, 5)[0] == 0 and evaluate.wilson_interval(5, 5)[1] == 1
    assert all(math.isnan(x) for x in evaluate.wilson_interval(0, 0))


def test_the_paired_bootstrap_interval_matches_the_exact_resampling_distribution():
    a, b = [1, 1, 1, 0], [0, 0, 1, 1]  # per-problem differences 1, 1, 0, -1
    # Every one of the 4^4 equally likely resamples: the mean difference's 2.5% and 97.5% points.
    means = sorted(np.mean(c) for c in itertools.product([1, 1, 0, -1], repeat=4))
    exact = np.quantile(means, [0.025, 0.975], method="inverted_cdf")  # -0.5 and 1.0
    got = evaluate.paired_difference(a, b)
    assert got["ci95"] == list(exact) and got["difference"] == 0.25 and (got["wins"], got["losses"]) == (2, 1)
    assert got == evaluate.paired_difference(a, b)  # a fixed seed: the same interval every time
    with pytest.raises(ValueError, match="one length"):
        evaluate.paired_difference([1, 0], [1])


def test_auc_counts_ties_as_half():
    assert evaluate.auc([0.9, 0.8, 0.8, 0.1], [True, False, True, False]) == 3.5 / 4
    assert evaluate.auc([0.1, 0.9], [True, False]) == 0 and math.isnan(evaluate.auc([0.5], [True]))


def test_a_summary_has_the_interval_the_right_ids_and_levels():
    def level(i, lv, right):
        return Solutions(Problem(f"q{i}", "5", id=f"p{i}", metadata={"level": lv}),
                         [Candidate("5" if right else "4", 0.0, right)])

    out = evaluate.summary([level(0, 1, True), level(1, 1, False), level(2, 2, True),
                            level(3, 3, True)])
    assert (out["accuracy"], out["n"], out["correct"]) == (0.75, 4, ["p0", "p2", "p3"])
    assert out["ci95"] == list(evaluate.wilson_interval(3, 4)) and out["trajectories"] == 1
    assert out["levels"]["1"] == {"accuracy": 0.5, "n": 2,
                                  "ci95": list(evaluate.wilson_interval(1, 2))}
    assert set(out["levels"]) == {"1", "2", "3"} and "curve" not in out


def test_report_writes_a_table_json_and_a_plot(tmp_path):
    greedy = {"accuracy": 0.25, "n": 4, "ci95": [0.05, 0.7], "correct": ["a"], "trajectories": 1.0}
    mcts = {"accuracy": 0.5, "n": 4, "ci95": [0.15, 0.85], "correct": ["a", "b"],
            "trajectories": 4.0, "curve": [(1, 0.25), (2, 0.4), (4, 0.5)]}
    ids = ["a", "b", "c", "d"]
    ev = evaluate.Evaluation(ids, {"greedy": greedy, "MCTS + PPM": mcts},
                             {"ppm_auc": 0.8, "ppm_auc_within": 0.7},
                             {"MCTS + PPM vs greedy": evaluate.compare(ids, mcts, greedy)})
    table = evaluate.report(ev, tmp_path, title="test")
    assert "| greedy | 25.0% [5.0%, 70.0%] | 4 | 1.0 |" in table and "| PPM | 0.800 | 0.700 |" in table
    assert "| MCTS + PPM vs greedy | +25.0 [" in table and "| 1 / 0 |" in table
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["MCTS + PPM"]["correct"] == ["a", "b"]
    assert results["greedy"]["ci95"] == [0.05, 0.7]
    assert json.loads((tmp_path / "evaluation.json").read_text())["quality"]["ppm_auc"] == 0.8
    assert (tmp_path / "accuracy.png").stat().st_size > 1000


PROBLEMS = [Problem("What is 2 + 3?", "5"), Problem("What is 4 * 6?", "24")]
BUDGET = SearchConfig(max_depth=4, max_step_tokens=24, max_output_tokens=16)


def test_greedy_is_one_deterministic_path_and_samples_differ(world):
    tokenizer, engine, scorer, executor = world
    a = evaluate.solve(PROBLEMS, engine, executor, tokenizer, search=BUDGET, progress=False)
    b = evaluate.solve(PROBLEMS, engine, executor, tokenizer, search=BUDGET, progress=False)
    assert [len(s.candidates) for s in a] == [1, 1]
    assert [c.answer for s in a for c in s.candidates] == [c.answer for s in b
                                                           for c in s.candidates]
    with pytest.raises(ValueError, match="greedy decoding gives one solution"):
        evaluate.solve(PROBLEMS, engine, executor, tokenizer, samples=2, search=BUDGET)
    scored = evaluate.solve(PROBLEMS, engine, executor, tokenizer, samples=3, temperature=1.0,
                            scorer=scorer, search=BUDGET, progress=False)
    assert [len(s.candidates) for s in scored] == [3, 3]
    for s in scored:  # a scored answer carries the PPM's value; a path without one gets -1
        for c in s.candidates:
            assert -1 <= c.score <= 1 and (c.answer is not None or c.score == -1)


def test_mcts_pools_the_answers_of_independent_searches(world):
    tokenizer, engine, scorer, executor = world
    search = SearchConfig(rollouts=4, candidates=4, max_depth=4, max_step_tokens=24,
                          max_output_tokens=16)
    one = evaluate.mcts(PROBLEMS, engine, scorer, executor, tokenizer, search, searches=1,
                        progress=False)
    two = evaluate.mcts(PROBLEMS, engine, scorer, executor, tokenizer, search, searches=2,
                        progress=False)
    for a, b in zip(one, two):
        # the first search is the same search
        assert b.candidates[:len(a.candidates)] == a.candidates
        assert all(c.answer is not None for c in b.candidates)
    with pytest.raises(ValueError, match="needs a PPM scorer"):
        evaluate.mcts(PROBLEMS, engine, None, executor, tokenizer, search)


def test_evaluate_policy_compares_every_method_at_equal_trajectories(world, tmp_path):
    tokenizer, engine, scorer, executor = world
    search = SearchConfig(rollouts=2, candidates=2, max_depth=3, max_step_tokens=24,
                          max_output_tokens=16)
    ev = evaluate.evaluate_policy(PROBLEMS, engine, executor, tokenizer, budget=BUDGET,
                                  search=search, ppm=scorer, orm=scorer, searches=2, progress=False,
                                  trees_dir=tmp_path / "trees")
    # the MCTS trees are kept, search by search; an evaluation run again replaces them
    trees = list(read_records(tmp_path / "trees", "tree"))
    assert [t.problem for t in trees] == PROBLEMS * 2
    assert all(t.outputs is not None and t.rollouts <= 2 for t in trees)
    evaluate.tree_writer(tmp_path / "trees", 0)
    assert list(read_records(tmp_path / "trees", "tree")) == []
    assert list(ev.results) == ["greedy", "maj@N", "pass@N (oracle)", "best-of-N (PPM)",
                                "best-of-N (ORM)", "MCTS + PPM", "MCTS + PPM (weighted vote)"]
    oracle = ev.results["pass@N (oracle)"]  # the ceiling of the selections over the same samples
    for name in ("maj@N", "best-of-N (PPM)", "best-of-N (ORM)"):
        assert set(ev.results[name]["correct"]) <= set(oracle["correct"])
    assert ev.results["maj@N"]["trajectories"] == 4  # N = 2 rollouts x 2 searches
    for r in ev.results.values():
        assert r["n"] == 2 and set(r["correct"]) <= set(ev.problems) and len(r["ci95"]) == 2
    assert {"ppm_auc", "orm_auc", "ppm_auc_within", "ppm_auc_greedy", "orm_auc_greedy"} <= set(ev.quality)
    assert "MCTS + PPM vs best-of-N (PPM)" in ev.comparisons and ev.comparisons["maj@N vs greedy"]["n"] == 2
    alone = evaluate.evaluate_policy(PROBLEMS, engine, executor, tokenizer, budget=BUDGET,
                                     search=search, methods=["greedy", "sampled"], progress=False)
    assert list(alone.results) == ["greedy", "maj@N", "pass@N (oracle)"] and not alone.quality


def test_processes_evaluate_their_shares_and_gather_the_evaluation_of_all():
    # Three processes, played by threads with their own executor pools as hosts have, each solving
    # its share (every third batch of two problems) and swapping solutions at a barrier; their
    # evaluation is the one of a single process, sample for sample.
    import threading

    from rstar_jax.steps.executor import CodeExecutor

    tokenizer = CharTokenizer()
    problems = [Problem(f"What is {a} + {a}?", str(2 * a)) for a in range(7)]
    rules = {p.question: random_rule(0, p.answer, "-1") for p in problems}
    policy = ScriptedPolicy(lambda q, r, s: rules[q](q, r, s), tokenizer, 48, seeded=True)
    scorer = ScriptedScorer(tokenizer=tokenizer)
    search = SearchConfig(rollouts=3, candidates=2, max_depth=3, max_step_tokens=48,
                          max_output_tokens=16)
    budget = SearchConfig(max_depth=4, max_step_tokens=48, max_output_tokens=16)
    kwargs = dict(budget=budget, search=search, samples=3, temperature=1.0, batch_size=2,
                  progress=False, methods=["greedy", "sampled", "mcts"])
    assert evaluate.share(7, 0, 3, 2) == [0, 1, 6] and evaluate.share(7, 2, 3, 2) == [4, 5]
    with CodeExecutor(num_workers=1) as executor:
        alone = evaluate.evaluate_policy(problems, policy, executor, tokenizer, ppm=scorer,
                                         orm=scorer, **kwargs)
    assert 0 < alone.results["maj@N"]["accuracy"] < 1  # answers right and wrong: the samples matter

    count = 3
    barrier, parts, solved, out = threading.Barrier(count, timeout=600), {}, {}, {}

    def gather(index):
        def exchange(name, mine):
            parts[name, index] = mine
            solved.setdefault(index, set()).update(d["problem"] for d in mine)
            barrier.wait()
            return [parts[name, i] for i in range(count)]
        return exchange

    def process(index):
        try:
            with CodeExecutor(num_workers=1) as executor:
                out[index] = evaluate.evaluate_policy(problems, policy, executor, tokenizer,
                                                      ppm=scorer, orm=scorer,
                                                      process=(index, count), gather=gather(index),
                                                      **kwargs)
        except BaseException as e:  # noqa: BLE001 (reported below, in the test's thread)
            out[index] = e
            barrier.abort()

    threads = [threading.Thread(target=process, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index in range(count):
        assert not isinstance(out[index], BaseException), out[index]
        assert out[index].results == alone.results and out[index].quality == alone.quality
        assert out[index].comparisons == alone.comparisons
    assert solved == {i: {problems[j].id for j in evaluate.share(7, i, count, 2)}
                      for i in range(count)}
    with pytest.raises(ValueError, match="need a gather"):  # refused before any work
        evaluate.evaluate_policy(problems, policy, None, tokenizer, process=(0, 2), **kwargs)
