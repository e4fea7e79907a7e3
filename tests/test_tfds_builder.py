"""The rstar_problems TFDS builder: built from local files without TensorFlow, read back as
Problems with tfds.data_source-style random access and through grain."""

import importlib.util
import json

import grain
import pytest

from rstar_jax.data import tfds_builder as tb
from rstar_jax.data.sources import load_benchmark
from rstar_jax.data.synthetic import generate


def test_tensorflow_is_not_needed():
    assert importlib.util.find_spec("tensorflow") is None


def test_a_benchmark_builds_and_reads_back_exactly(tmp_path):
    path = tb.build("math500", tmp_path)
    assert path == tmp_path / "rstar_problems" / "math500" / "1.0.0"
    assert list(path.glob("*.array_record-*")) and (path / "dataset_info.json").is_file()
    problems = tb.problems_source(path)
    want = load_benchmark("math500")
    assert len(problems) == 500 and list(problems) == want  # in file order: shuffling is off
    assert [p.metadata for p in problems] == [p.metadata for p in want]
    # Building again reuses what is there.
    files = sorted(p.name for p in path.iterdir())
    assert tb.build("math500", tmp_path) == path and sorted(p.name for p in path.iterdir()) == files
    assert len(tb.problems_source(path, split="test")) == 500


def test_missing_answers_stay_missing(tmp_path):
    problems = tb.problems_source(tb.build("gaokao2023en", tmp_path))
    assert [p.id for p in problems if p.answer is None] == ["gaokao2023en/167", "gaokao2023en/192"]


def test_synthetic_and_file_configs(tmp_path):
    path = tb.build("synthetic", tmp_path, n=40, seed=3)
    assert path.parent.name == "synthetic_n40_seed3"
    assert list(tb.problems_source(path)) == generate(40, seed=3)
    rows = [{"problem": "Find $x$ if $2x = 6$.", "solution": "$x = \\boxed{3}$", "source": "amc"},
            {"problem": "What is $1 + 1$?", "solution": "$\\boxed{2}$", "source": "gsm"}]
    jsonl = tmp_path / "numina.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = tb.problems_source(tb.build_files("numina_small", [jsonl], tmp_path,
                                                 preset="numina"))
    assert [(p.question, p.answer, p.source) for p in problems] == [
        ("Find $x$ if $2x = 6$.", "3", "amc"), ("What is $1 + 1$?", "2", "gsm")]


def test_grain_reads_a_built_split(tmp_path):
    problems = tb.problems_source(tb.build("amc23", tmp_path))
    dataset = grain.MapDataset.source(problems).shuffle(seed=0).map(lambda p: p.id)
    ids = list(dataset)
    assert sorted(ids) == sorted(p.id for p in load_benchmark("amc23")) and ids != [p.id for p in problems]


def test_bad_requests_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown config 'math501'; choose one of math500"):
        tb.build("math501", tmp_path)
    with pytest.raises(ValueError,
                       match="n, seed and levels are options of the synthetic config, not 'gsm8k'"):
        tb.build("gsm8k", tmp_path, n=3)
    with pytest.raises(FileNotFoundError, match="missing: .*nope.jsonl"):
        tb.build_files("mine", [tmp_path / "nope.jsonl"], tmp_path)
    with pytest.raises(ValueError, match="'math500' is a built-in config"):
        tb.build_files("math500", [tmp_path / "nope.jsonl"], tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a built dataset"):
        tb.problems_source(tmp_path)
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"index": 1, "question": "a?", "answer": "1"}\n{"index": 1, "question": '
                     '"b?", "answer": "2"}\n')
    with pytest.raises(Exception, match="problem id 'twice/1' appears twice"):
        tb.build_files("twice", [twice], tmp_path)
