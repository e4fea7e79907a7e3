"""On-disk records: lossless round trips, shards, crash safety, resume, schema checks, and the
import of the released rStar-Math data."""

import dataclasses
import json
import math
import pathlib

import msgpack
import numpy as np
import pytest

from rstar_jax.data import PPMPair, SFTExample
from rstar_jax.data import records as rec
from rstar_jax.testing import random_search_tree

ASSETS = pathlib.Path(__file__).parent.parent / "rstar_jax" / "assets" / "rstar"


def assert_same_tree(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True), f.name
        else:
            assert x == y, f.name
    assert a.problem.metadata == b.problem.metadata


def unicode_tree():
    tree = random_search_tree(3, nodes=30)
    tree.texts[1] = "<code>\n# π ≈ 3.14, 日本語 🙂\nx = 1\n<end_of_step>"
    tree.init_value[2] = np.nan
    tree.tokens[0] = []
    return dataclasses.replace(tree,
                               problem=dataclasses.replace(tree.problem,
                                                           metadata={"level": 3, "tags": ["a"]}))


def test_every_kind_round_trips_exactly(tmp_path):
    tree = unicode_tree()
    sft = SFTExample("p1", "What is 1?", "<answer>\\boxed{1}<end_of_answer>", 0.5, math.nan,
                     "search", {"k": 1})
    pair = PPMPair("p1", "prompt", "pos", "neg", 0.75, -0.25, "final", "search")
    for kind, item in (("tree", tree), ("sft", sft), ("ppm", pair)):
        rec.write_records(tmp_path, kind, [item, item])
        back = list(rec.read_records(tmp_path, kind))
        assert len(back) == 2
        if kind == "tree":
            assert_same_tree(back[0], tree)
        else:
            # NaN compares unequal; repr does not
            assert repr(back[0]) == repr(back[1]) == repr(item)
    assert rec.count_records(tmp_path, "tree") == 2


def test_shards_roll_over_and_a_new_writer_continues_the_numbering(tmp_path):
    items = [PPMPair(f"p{i}", "prompt", "a", "b") for i in range(7)]
    rec.write_records(tmp_path, "ppm", items[:5], shard_size=2)
    assert [p.name for p in rec.shard_paths(tmp_path, "ppm")] == [
        "ppm-00000.arrayrecord", "ppm-00001.arrayrecord", "ppm-00002.arrayrecord"]
    rec.write_records(tmp_path, "ppm", items[5:], shard_size=2)
    rec.write_records(tmp_path, "ppm", items[:1], prefix="round2")
    names = [p.name for p in rec.shard_paths(tmp_path, "ppm")]
    assert names == ["ppm-00000.arrayrecord", "ppm-00001.arrayrecord", "ppm-00002.arrayrecord",
                     "ppm-00003.arrayrecord", "ppm-round2-00000.arrayrecord"]
    assert [p.problem_id for p in rec.read_records(tmp_path, "ppm")] == [f"p{i}" for i in range(7)] + ["p0"]


def test_a_crash_loses_only_the_open_shard(tmp_path, caplog):
    trees = [random_search_tree(s, nodes=20) for s in range(5)]
    writer = rec.RecordWriter(tmp_path, "tree", shard_size=2)
    for t in trees:
        writer.write(t)
    # The process dies here: shards 0 and 1 are complete, the fifth tree is in a temp file.
    assert len(list(tmp_path.glob(".tree-*.tmp"))) == 1
    assert rec.written_problem_ids(tmp_path) == {t.problem.id for t in trees[:4]}
    with caplog.at_level("WARNING"):
        resumed = rec.RecordWriter(tmp_path, "tree", shard_size=2)
    assert "did not finish" in caplog.text and not list(tmp_path.glob(".*.tmp"))
    todo = rec.pending([t.problem for t in trees], tmp_path)
    assert todo == [trees[4].problem]
    with resumed:
        resumed.write(trees[4])
    assert rec.pending([t.problem for t in trees], tmp_path) == []
    back = list(rec.read_records(tmp_path, "tree"))
    assert len(back) == 5 and sorted(t.problem.id for t in back) == sorted(t.problem.id for t in trees)
    assert_same_tree(back[4], trees[4])


def test_wrong_kind_newer_schema_and_wrong_types_are_named(tmp_path):
    rec.write_records(tmp_path, "sft", [SFTExample("p", "q", "r")])
    shard = rec.shard_paths(tmp_path, "sft")[0]
    shard.rename(tmp_path / "ppm-00000.arrayrecord")
    with pytest.raises(ValueError,
                       match="a 'sft' record where 'ppm' records were expected; read it with "
                             "kind='sft'"):
        list(rec.read_records(tmp_path, "ppm"))
    newer = msgpack.packb([rec.SCHEMA_VERSION + 1, "sft", "p", b""], use_bin_type=True)
    with pytest.raises(ValueError,
                       match=f"schema {rec.SCHEMA_VERSION + 1} is newer than this rstar_jax reads"):
        rec.decode("sft", newer)
    with pytest.raises(TypeError, match="a 'ppm' record is a PPMPair, got SFTExample"):
        rec.RecordWriter(tmp_path, "ppm").write(SFTExample("p", "q", "r"))
    with pytest.raises(ValueError,
                       match="unknown record kind 'trees'; choose one of tree, sft, ppm"):
        rec.RecordWriter(tmp_path, "trees")
    with pytest.raises(ValueError, match="shard_size must be a positive int, got 0"):
        rec.RecordWriter(tmp_path, "tree", shard_size=0)
    assert list(rec.read_records(tmp_path / "nothing", "tree")) == []


def test_released_rstar_data_imports():
    sft = rec.import_rstar_sft(ASSETS / "sft_data_examples.json")
    ppm = rec.import_rstar_ppm(ASSETS / "rm_data_examples.json")
    assert len(sft) == 8 and len(ppm) == 5
    assert sft[0].question.startswith("If $G(m, n, p, q) = m^n + p \\times q$")
    assert sft[0].response.startswith("<code>\n# Step 1: Define the function G") and sft[0].source == "rstar_release"
    assert ppm[0].prompt.startswith("<|user|>:\nWe have a triangle") and ppm[0].kind == "released"
    assert ppm[0].positive.startswith("\n<|assistant|>: Let's think step by step")
    assert "IndentationError" in ppm[0].negative and math.isnan(ppm[0].q_positive)


def test_released_files_with_bad_rows_are_named(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"query": "q", "response": "r"}) + "\n"
                                      + json.dumps({"query": "q2", "answer": "r"}) + "\n")
    with pytest.raises(ValueError,
                       match=r"a.jsonl, row 1: key 'response' is missing \(keys: \['answer', "
                             r"'query'\]\)"):
        rec.import_rstar_sft(tmp_path / "a.jsonl")
    (tmp_path / "b.json").write_text(json.dumps([{"prompt": "p", "pos": 1, "neg": "n"}]))
    with pytest.raises(ValueError, match="row 0: key 'pos' is a int, not a string"):
        rec.import_rstar_ppm(tmp_path / "b.json")
    with pytest.raises(FileNotFoundError, match="c.json does not exist"):
        rec.import_rstar_ppm(tmp_path / "c.json")
