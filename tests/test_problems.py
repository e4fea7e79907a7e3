"""The Problem record, the shipped benchmarks, user problem files and their presets, and
deduplication / decontamination."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rstar_jax.data import Problem, problem_id
from rstar_jax.data.dedup import decontaminate, deduplicate, normalize_question
from rstar_jax.data.sources import BENCHMARKS, load_benchmark, read_problems

# --- Problem --------------------------------------------------------------------------------


def test_problem_ids_are_stable_and_depend_on_source_and_question():
    p = Problem("What is 2 + 2?", "4")
    assert p.id == problem_id("What is 2 + 2?") == Problem("What is 2 + 2?", "5").id
    assert Problem("What is 2 + 2?", source="a").id.startswith("a/") and Problem("What is 2 + 2?", source="a").id != p.id
    assert Problem("What is 2 + 2?", id="mine").id == "mine"
    assert Problem.from_json(json.loads(json.dumps(Problem("q?", "1", source="s", metadata={"k": [1]}).to_json()))) \
        == Problem("q?", "1", source="s", metadata={"k": [1]})
    assert hash(Problem("q?", metadata={"a": 1})) == hash(Problem("q?", metadata={"b": 2}))


def test_problem_rejects_what_it_cannot_hold():
    with pytest.raises(TypeError, match="question must be a non-empty string"):
        Problem("  ")
    with pytest.raises(TypeError,
                       match="answer must be a string or None, got int 4; convert numbers with "
                             "str"):
        Problem("What is 2 + 2?", 4)
    with pytest.raises(TypeError, match="metadata must be a mapping"):
        Problem("q?", metadata=[1])


def test_references_list_every_acceptable_answer():
    assert Problem("q?", "4").references == ("4",)
    assert Problem("q?").references == ()
    assert Problem("q?", "3", metadata={"references": ["3", "-3"]}).references == ("3", "-3")


# --- benchmarks -----------------------------------------------------------------------------


@pytest.mark.parametrize("name,count", [("math500", 500), ("math", 5000), ("gsm8k", 1319),
                                        ("aime2024", 30), ("amc23", 40), ("collegemath", 2818),
                                        ("gaokao2023en", 385)])
def test_each_shipped_benchmark_loads_with_unique_ids(name, count):
    problems = load_benchmark(name)
    assert len(problems) == count and len({p.id for p in problems}) == count
    assert all(p.source == name and p.id == f"{name}/{p.metadata['index']}" for p in problems)
    unanswered = [p.id for p in problems if p.answer is None]
    assert unanswered == (["gaokao2023en/167", "gaokao2023en/192"] if name == "gaokao2023en" else [])


def test_benchmark_rows_with_several_answers_keep_them_all():
    multi = [p for p in load_benchmark("math") if len(p.references) > 1]
    assert len(multi) == 4 and multi[0].references == ("3", "-3") and multi[0].answer == "3"
    assert load_benchmark("math500")[0].answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert set(BENCHMARKS) == {"math500", "math", "gsm8k", "aime2024", "amc23", "collegemath",
                               "gaokao2023en"}
    with pytest.raises(ValueError,
                       match="unknown benchmark 'math501'; choose one of math500, math, gsm8k"):
        load_benchmark("math501")


# --- user files -----------------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


NUMINA = [{"source": "olympiads", "problem": "Find $x$ if $2x = 6$.",
           "solution": "Divide: $x = \\boxed{3}$.", "messages": [{"role": "user"}]},
          {"source": "cn_k12", "problem": "Compute $1/2 + 1/4$.",
           "solution": "We get $\\boxed{\\frac{3}{4}}$"}]
METAMATH = [{"query": "Tom has 3 apples and buys 4. How many?",
             "response": "3 + 4 = 7\nThe answer is: 7",
             "type": "GSM_Rephrased", "original_question": "..."}]
GSM8K = [{"question": "A shop sells 1,200 pens a day. How many in 2 days?",
          "answer": "1200 * 2 = 2400\n#### 2,400"}]


def test_presets_read_numina_metamath_and_gsm8k_layouts(tmp_path):
    numina = read_problems(_write_jsonl(tmp_path / "numina.jsonl", NUMINA), preset="numina")
    assert [(p.question, p.answer, p.source) for p in numina] == [
        ("Find $x$ if $2x = 6$.", "3", "olympiads"),
        ("Compute $1/2 + 1/4$.", "\\frac{3}{4}", "cn_k12")]
    assert numina[0].metadata == {"messages": [{"role": "user"}],
                                  "solution": "Divide: $x = \\boxed{3}$."}
    meta = read_problems(_write_jsonl(tmp_path / "mm.jsonl", METAMATH), preset="metamath")
    assert (meta[0].answer, meta[0].source, meta[0].metadata["original_question"]) == ("7", "GSM_Rephrased", "...")
    gsm = read_problems(_write_jsonl(tmp_path / "gsm.jsonl", GSM8K), preset="gsm8k")
    assert gsm[0].answer == "2400" and gsm[0].source == "gsm"


def test_json_and_parquet_read_like_jsonl(tmp_path):
    rows = [{"index": 7, "question": "What is 1 + 1?", "answer": "2", "level": 3}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    a = read_problems(tmp_path / "p.json")
    b = read_problems(tmp_path / "p.parquet")
    c = read_problems(_write_jsonl(tmp_path / "p.jsonl", rows))
    assert a == b == c and a[0].id == "p/7" and a[0].metadata == {"level": 3}


def test_fields_override_the_preset_and_answers_can_be_optional(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl",
                        [{"prompt": "What is 3 * 3?", "final": 9, "uid": "a1"},
                                                 {"prompt": "What is 4 * 4?", "uid": "a2"}])
    with pytest.raises(ValueError,
                       match=r"mine.jsonl, row 1: no answer field 'final'.*require_answer=False"):
        read_problems(path, fields={"question": "prompt", "answer": "final", "id": "uid"})
    problems = read_problems(path, fields={"question": "prompt", "answer": "final", "id": "uid"},
                             source="mine", require_answer=False)
    assert [(p.id, p.answer) for p in problems] == [("mine/a1", "9"), ("mine/a2", None)]


def test_bad_problem_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        read_problems(tmp_path / "nope.jsonl")
    (tmp_path / "p.csv").write_text("question,answer\n")
    with pytest.raises(ValueError,
                       match="unknown problem file type '.csv'; use .jsonl, .json or .parquet"):
        read_problems(tmp_path / "p.csv")
    (tmp_path / "bad.jsonl").write_text('{"question": "a?", "answer": "1"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 2: not JSON"):
        read_problems(tmp_path / "bad.jsonl")
    _write_jsonl(tmp_path / "numina.jsonl", NUMINA)
    with pytest.raises(ValueError,
                       match=r"row 0: no question in field 'question' \(keys: \['messages', "
                             r"'problem'"):
        read_problems(tmp_path / "numina.jsonl")
    _write_jsonl(tmp_path / "nobox.jsonl", [{"problem": "p?", "solution": "no box here"}])
    with pytest.raises(ValueError, match="row 0: no final answer found in field 'solution'"):
        read_problems(tmp_path / "nobox.jsonl", preset="numina")
    with pytest.raises(ValueError,
                       match="unknown preset 'numina2'; choose one of rstar, numina, metamath, "
                             "gsm8k"):
        read_problems(tmp_path / "numina.jsonl", preset="numina2")
    with pytest.raises(ValueError, match=r"unknown field names \['text'\]"):
        read_problems(tmp_path / "numina.jsonl", fields={"text": "problem"})
    (tmp_path / "obj.json").write_text('{"question": "a?"}')
    with pytest.raises(ValueError, match="holds a list of objects, got a dict"):
        read_problems(tmp_path / "obj.json")


# --- duplicates and contamination -----------------------------------------------------------


def test_normalisation_ignores_spacing_case_delimiters_and_final_punctuation():
    spaced = r"What is $\dfrac{1}{2} + \left( 3 \right)$?  "
    assert normalize_question(spaced) == normalize_question(r"what is \frac{1}{2}+(3)")
    assert normalize_question("What is 1.5 times 2?") != normalize_question("What is 15 times 2?")
    assert normalize_question("Find x.") == normalize_question("FIND  X")


def test_deduplicate_keeps_the_first_of_each_question():
    problems = [Problem("What is 2 + 2?", "4", id="a"), Problem("What is 2 + 2?", "4", id="b"),
                Problem("what is 2+2", "4", id="c"), Problem("What is 2 + 3?", "5", id="d")]
    kept, report = deduplicate(problems)
    assert [p.id for p in kept] == ["a", "d"]
    assert (report.exact["self"], report.normalized["self"], report.removed_ids, report.kept) == (1, 1, ["b", "c"], 2)


def test_decontaminate_removes_benchmark_questions_and_counts_them():
    math500 = load_benchmark("math500")
    train = [Problem(math500[0].question, id="copy"),
             Problem(math500[1].question.upper() + "  ", id="shouty"),
             Problem("What is 2 + 2?", "4", id="fresh")]
    kept, report = decontaminate(train)
    assert [p.id for p in kept] == ["fresh"]
    # MATH500 is a subset of MATH: a match counts under the first benchmark listed that has it.
    assert report.exact["math500"] == 1 and report.normalized["math500"] == 1 and report.exact["gsm8k"] == 0
    kept, report = decontaminate(train, {"mine": [Problem("what is 2+2")]})
    assert [p.id for p in kept] == ["copy", "shouty"] and report.normalized["mine"] == 1
    assert "mine" in report.table() and "kept 2, removed 1" in report.table()


def test_load_problems_reads_every_kind_of_source_from_one_string(tmp_path):
    from rstar_jax.data import load_problems
    from rstar_jax.data.synthetic import generate
    from rstar_jax.data.tfds_builder import build

    assert load_problems("amc23") == load_benchmark("amc23")
    assert load_problems("synthetic:n=12,seed=3,levels=23") == generate(12, 3, (2, 3))
    assert len(load_problems("synthetic")) == 1000
    path = _write_jsonl(tmp_path / "numina.jsonl", NUMINA)
    assert load_problems(f"{path}?preset=numina") == read_problems(path, preset="numina")
    assert load_problems(str(build("aime2024", tmp_path))) == load_benchmark("aime2024")
    with pytest.raises(ValueError, match="'nowhere.jsonl' is neither a benchmark"):
        load_problems("nowhere.jsonl")
    with pytest.raises(ValueError, match=r"unknown synthetic options \['size'\]"):
        load_problems("synthetic:size=3")
    with pytest.raises(ValueError, match="options are name=value pairs"):
        load_problems("synthetic:12")
    with pytest.raises(ValueError, match=r"unknown file options \['format'\]"):
        load_problems(f"{path}?format=x")
