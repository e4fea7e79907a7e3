"""The self-evolution rounds end to end on the smoke config, straight through and resumed."""

import dataclasses
import json
import math
import pathlib
import uuid

import fsspec
import jax
import jax.numpy as jnp
import pytest

from rstar_jax import evolve
from rstar_jax.config_lib import TINY_BASE
from rstar_jax.data import records
from rstar_jax.data.load import load_problems

ROOT = pathlib.Path(__file__).parent.parent


def smoke_config(**changes):
    from configs import tiny

    config = tiny.get_config("smoke")
    for key, value in changes.items():
        node = config
        *head, last = key.split(".")
        for part in head:
            node = node[part]
        node[last] = value
    return config


@pytest.fixture
def straight(smoke_run):
    """The smoke config run straight through (conftest)."""
    return smoke_run


class Stop(Exception):
    """Stands for the process being killed."""


def test_smoke_rounds_run_every_stage_and_write_the_report(straight):
    workdir, results = straight
    assert [x.round for x in results] == [0, 1, 2, 3, 4]
    for r in range(1, 5):
        for stage in evolve.STAGES:
            assert (workdir / f"round_{r}" / f"{stage}.json").exists()
    for x in results[1:]:
        assert x.problems == 8 and 0 <= x.solved <= x.problems
        assert 0 <= x.greedy <= 1
    report = (workdir / "report.md").read_text()
    assert report.startswith("| round | search policy |") and len(report.splitlines()) >= 7
    assert json.loads((workdir / "report.json").read_text())[4]["round"] == 4
    assert (workdir / "rounds.png").stat().st_size > 1000
    assert (workdir / "round_1" / "eval" / "results.md").exists()
    # the round figures, for TensorBoard
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    assert list((workdir / "round_1" / "policy" / "tb").glob("events.out.tfevents.*")) or results[1].sft == 0


def test_killed_in_search_and_in_training_resumes_to_the_same_report(straight, tmp_path, monkeypatch):
    """On a URL workdir, each try on a new, empty cache, as on a new machine: all it resumes from
    is what the killed tries uploaded. (A local workdir resumes through the same code: the cache
    is its local directory.)"""
    from rstar_jax.search import driver
    from rstar_jax.train import trainer as trainer_lib

    config = smoke_config()  # two chunks of 4 problems in each search
    reference = straight[1]
    tries = iter(range(3))
    workdir = f"memory://bucket/{uuid.uuid4().hex}"

    def run():
        return evolve.run(config, workdir, progress=False,
                          cache_dir=tmp_path / f"machine{next(tries)}")

    def finished(rel):
        return fsspec.filesystem("memory").exists(f"{workdir}/{rel}")

    real_search, calls = driver.run_search, {"search": 0, "resumed search": 0, "step": 0}

    def search_then_die(*args, **kwargs):
        calls["search"] += 1
        if calls["search"] == 2:  # the first chunk of round 1 is written, the second is not
            raise Stop
        return real_search(*args, **kwargs)

    monkeypatch.setattr(driver, "run_search", search_then_die)
    with pytest.raises(Stop):
        run()
    assert not finished("round_1/search.json") and finished("round_1/search")

    def search(*args, **kwargs):
        calls["resumed search"] += 1
        return real_search(*args, **kwargs)

    monkeypatch.setattr(driver, "run_search", search)

    real_step = trainer_lib.Trainer.step

    def step_then_die(self, batch):
        calls["step"] += 1
        if calls["step"] == 2:
            raise Stop
        return real_step(self, batch)

    monkeypatch.setattr(trainer_lib.Trainer, "step", step_then_die)
    with pytest.raises(Stop):
        run()
    monkeypatch.setattr(trainer_lib.Trainer, "step", real_step)
    assert finished("round_1/search.json")
    # the resumed search did only the chunk that was not written
    assert calls["resumed search"] == 1

    resumed = run()
    assert finished("report.md") and finished("rounds.png")
    untimed = [json.dumps([dataclasses.asdict(x) | {"minutes": 0} for x in rs])
               for rs in (resumed, reference)]
    assert untimed[0] == untimed[1]  # (as JSON: NaN, no MCTS figure, equals itself there)
    assert any(x.sft for x in reference), "the smoke run should train a policy, or the kill in training tests nothing"


def test_a_missing_checkpoint_names_the_field_and_the_path(tmp_path):
    with pytest.raises(evolve.ConfigError,
                       match=r"config.model.checkpoint='/nowhere/phi3': no config.json there"):
        evolve.run(smoke_config(**{"model.checkpoint": "/nowhere/phi3"}), tmp_path)
    from configs import phi3

    with pytest.raises(evolve.ConfigError, match="Phi-3-mini-4k-instruct"):
        evolve.check_config(phi3.get_config())


@pytest.mark.parametrize("field, value, message", [
    ("bootstrap.kind", "oracle",
     "config.bootstrap.kind must be one of base, few_shot, checkpoint, reference, got 'oracle'"),
    ("rounds", 0, "config.rounds must be an int in 1..8, got 0"),
    ("problems.train", "synthetic:n=4,colour=red",
     "config.problems.train='synthetic:n=4,colour=red'"),
    ("search.round2", {"rollouts": -1},
     r"config.search \(round 2\): SearchConfig.rollouts must be a positive int"),
])
def test_bad_fields_are_named(tmp_path, field, value, message):
    config = smoke_config(**{field: value})
    with pytest.raises(evolve.ConfigError, match=message):
        evolve.search_config(config, 2) if field.startswith("search") else \
            evolve.run(config, tmp_path, progress=False)


@pytest.mark.parametrize("kind, bootstrap, errors", [("base", False, 1), ("reference", False, 1),
                                                     ("few_shot", True, 2),
                                                     ("checkpoint", True, 2)])
def test_round_one_tolerates_two_errors_only_with_the_bootstrap_prompt(kind, bootstrap, errors):
    config = evolve.search_config(smoke_config(**{"bootstrap.kind": kind}), 1)
    assert (config.bootstrap, config.errors_threshold) == (bootstrap, errors)
    assert evolve.search_config(smoke_config(**{"bootstrap.kind": kind}), 2).errors_threshold == 1


def test_a_workdir_of_another_config_is_refused(tmp_path):
    evolve.Evolution(smoke_config(), tmp_path)
    with pytest.raises(evolve.ConfigError, match="holds a run with another config.*rounds"):
        evolve.Evolution(smoke_config(rounds=2), tmp_path)


def test_the_shipped_base_is_a_complete_checkpoint():
    base = pathlib.Path(TINY_BASE)
    for name in ("config.json", "model.safetensors", "tokenizer.model", "PROVENANCE.json"):
        assert (base / name).exists(), name


def _launch(script, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(ROOT / "launch" / script), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_the_launchers_evaluate_a_run_and_refuse_a_missing_model(straight, tmp_path):
    workdir, _ = straight
    done = _launch("evaluate.py", "--config=configs/tiny.py:smoke", f"--workdir={workdir}",
                   "--limit=2", "--methods=greedy,sampled", "--samples=2")
    assert done.returncode == 0, done.stderr[-2000:]
    table = (workdir / "evaluate" / "test-round4" / "results.md").read_text()
    assert "| greedy |" in table and "| maj@N |" in table
    # Best-of-N with the PPM when the run trained one (a smoke search may find no step pairs).
    has_ppm = evolve.Evolution(smoke_config(), workdir).ppm_path(4) is not None
    assert ("| best-of-N (PPM) |" in table) == has_ppm
    assert has_ppm or "has no PPM" in done.stderr
    spec = "synthetic:n=3,seed=77,levels=3"
    cache = tmp_path / "jax_cache"
    for again in (False, True):
        # the second run compiles nothing: every program comes from the cache
        done = _launch("evaluate.py", "--config=configs/tiny.py:smoke", f"--workdir={workdir}",
                       "--round=0", f"--problems={spec}", "--methods=greedy",
                       f"--config.compilation_cache={cache}")
        assert done.returncode == 0, done.stderr[-2000:]
        entries = sorted(cache.iterdir())
        if again:
            assert entries == first
        else:
            first = entries
            assert any("_decode" in e.name for e in entries) and any("_extend" in e.name for e in entries)
    results = json.loads((workdir / "evaluate" / "synthetic_n_3_seed_77_levels_3-round0" / "results.json").read_text())
    greedy = results["greedy"]
    assert set(greedy) >= {"accuracy", "n", "ci95", "correct", "levels"} and greedy["n"] == 3
    ids = {p.id for p in load_problems(spec)}
    assert set(greedy["correct"]) <= ids and greedy["accuracy"] == len(greedy["correct"]) / 3
    # A round the run never trained: a message, not a traceback.
    failed = _launch("evaluate.py", "--config=configs/tiny.py:smoke", f"--workdir={workdir}",
                     "--round=9", "--methods=greedy")
    assert failed.returncode == 2 and "round_9" in failed.stderr, failed.stderr[-2000:]
    failed = _launch("tpu_evolve.py", "--config=configs/phi3.py", f"--workdir={tmp_path}")
    assert failed.returncode == 2
    assert "config.model.checkpoint='/mnt/models/Phi-3-mini-4k-instruct': no config.json there" in failed.stderr


def test_a_skipped_round_is_reported_without_an_evaluation(tmp_path):
    run = evolve.Evolution(smoke_config(**{"eval.skip_rounds": (2,)}), tmp_path)
    problems = load_problems("synthetic:n=2,seed=5")
    summary = run._evaluate(tmp_path, 2, problems).to_json()  # no model is loaded
    assert summary["evaluation"]["results"] == {} and "not evaluated" in summary["notes"][0]
    from rstar_jax.report import RoundResult, table

    x = RoundResult(2, "SLM-r1", notes=summary["notes"])
    x.set_evaluation(summary["evaluation"])
    # no figure, and the note says why
    assert math.isnan(x.greedy) and "not evaluated" in table([x])


def test_search_outcomes_counts_a_rounds_trajectories_per_family(straight):
    import subprocess
    import sys

    workdir, _ = straight
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "search_outcomes.py"),
                           str(workdir / "round_1")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    trees = list(records.read_records(workdir / "round_1" / "search", "tree"))
    for family in {t.problem.metadata["family"] for t in trees}:
        mine = [t for t in trees if t.problem.metadata["family"] == family]
        right = sum(int((t.reward[t.is_answer] > 0).sum()) for t in mine)
        assert f"| {family} | {right} / {sum(int(t.is_answer.sum()) for t in mine)} |" in done.stdout


def test_problem_sets_drop_the_excluded_problems_from_both_then_cut_to_size():
    import ml_collections

    from rstar_jax.data import synthetic

    every = synthetic.generate(12, seed=9)
    c = ml_collections.ConfigDict({"train": "synthetic:n=12,seed=9",
                                   "test": "synthetic:n=10,seed=9",
                                   "exclude": "synthetic:n=6,seed=9", "max_train": 0,
                                   "max_test": 3})
    train, test = evolve.problem_sets(c)
    assert [p.id for p in test] == [p.id for p in every[6:9]]  # after the 6 excluded, the first 3
    assert [p.id for p in train] == [p.id for p in every[9:]]  # neither excluded nor a test problem


def test_searches_run_on_the_inference_mesh_with_weights_in_the_compute_dtype(tmp_path):
    config = smoke_config(**{"inference_mesh.tensor": 2, "model.dtype": "bfloat16",
                             "model.scan_layers": True})
    run = evolve.Evolution(config, tmp_path)
    engine, scorer = run.engine(TINY_BASE), run.scorer(TINY_BASE)
    local = jax.local_devices()
    for mesh in (engine.mesh, scorer.mesh):
        assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 2} and list(mesh.devices.flat) == local[:2]
    assert {x.dtype for x in jax.tree.leaves(engine.state)} == {jnp.dtype("bfloat16")}
    # Training keeps float32 master weights on the training mesh.
    policy = run.models.model(TINY_BASE, value_head=False, training=True)
    assert policy.embed[...].dtype == jnp.float32 and policy.embed[...].sharding.mesh.size == 8
    # ... and scans its layers; the engine decodes layer by layer through its KV cache.
    assert policy.scan_layers and not run.models.model(TINY_BASE, value_head=False).scan_layers
