"""Answer grading (rstar_jax.steps.grading): labelled pairs, every reference answer of the eval
sets against itself and a reformatted variant, garbage, threads, and time bounds.

tests/data/grading_pairs.jsonl holds hand-written predictions against real reference answers:
one JSON object per line with the eval file and index the reference comes from, the label and a
short note on what the prediction changes."""

from __future__ import annotations

import functools
import importlib.resources
import json
import pathlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest

from rstar_jax.steps import grading
from rstar_jax.steps.grading import (
    clear_caches,
    is_equivalent,
    is_equivalent_batch,
    normalize_answer,
)

EVAL_DIR = importlib.resources.files("rstar_jax") / "assets" / "rstar" / "eval"
EVAL_FILES = ("MATH_test.json", "math500_test.json", "amc23_test.json", "aime2024_test.json",
              "collegemath_test.json", "GSM8K_test.json", "gaokao2023en_test.json")
PAIRS_FILE = pathlib.Path(__file__).parent / "data" / "grading_pairs.jsonl"
PAIRS = [json.loads(line) for line in PAIRS_FILE.read_text().splitlines() if line.strip()]


@functools.cache
def eval_answers(name: str) -> dict[int, str | list[str]]:
    return {row["index"]: row["answer"] for row in json.loads((EVAL_DIR / name).read_text())}


def all_reference_answers() -> list[str]:
    answers = []
    for name in EVAL_FILES:
        for answer in eval_answers(name).values():
            answers += answer if isinstance(answer, list) else [answer]
    return answers


# ----------------------------------------------------------------------------------------------
# Labelled pairs
# ----------------------------------------------------------------------------------------------


def test_labelled_pairs_file_is_sound():
    assert len(PAIRS) >= 150
    trues = sum(p["label"] for p in PAIRS)
    assert 0.4 <= trues / len(PAIRS) <= 0.6, f"{trues} true of {len(PAIRS)}"
    assert len({(p["pred"], p["ref"]) for p in PAIRS}) == len(PAIRS), "duplicate pairs"
    for p in PAIRS:
        assert p["source"] in EVAL_FILES
        assert eval_answers(p["source"])[p["index"]] == p["ref"], p  # a real reference answer
        assert isinstance(p["label"], bool) and p["note"]


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{i}-{p['note']}" for i, p in enumerate(PAIRS)])
def test_labelled_pair(pair):
    pred, ref, label = pair["pred"], pair["ref"], pair["label"]
    assert is_equivalent(pred, ref) is label, pair
    assert is_equivalent(ref, pred) is label, pair  # symmetric


def test_symmetry_across_unrelated_answers():
    """Every ordered pair of a mixed bag of answers, both ways, caches cleared in between."""
    bag = sorted({p["pred"] for p in PAIRS[::9]} | {p["ref"] for p in PAIRS[::9]})[:24]
    forward = {(a, b): is_equivalent(a, b) for a in bag for b in bag}
    clear_caches()
    for (a, b), value in forward.items():
        assert is_equivalent(b, a) is value, (a, b)
    assert all(forward[(a, a)] for a in bag)  # identical strings are equal


# ----------------------------------------------------------------------------------------------
# Every reference answer: itself, and a reformatted variant
# ----------------------------------------------------------------------------------------------


def _pair_brackets(s: str) -> list[tuple[int, int]] | None:
    """Matched ( [ ... ) ] pairs, any mix (intervals), ignoring escaped ones; None if unbalanced."""
    stack, pairs = [], []
    for i, c in enumerate(s):
        if i and s[i - 1] == "\\":
            continue
        if c in "([":
            stack.append(i)
        elif c in ")]":
            if not stack:
                return None
            pairs.append((stack.pop(), i))
    return None if stack else pairs


def reformat(answer: str) -> str:
    r"""A deterministic rewrite of a reference answer that keeps its meaning: terminating
    fractions become decimals, big integers get thousands separators, small ones an "x = "
    prefix, decimals a trailing zero, words a \text{}, choice letters "\text{(B)}"; anything
    else gets \dfrac for \frac, ^{\circ} for ^\circ, \left/\right on matched brackets, a space
    after commas (not inside "1,000") and spaces around "=" (outside matrices); if none of that
    applies, spaces around binary + and -, or else $...$ around the whole."""
    s = answer.strip()
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", s)
    if m and int(m.group(3)):
        value = Fraction(int(m.group(2)), int(m.group(3)))
        d = value.denominator
        while d % 2 == 0:
            d //= 2
        while d % 5 == 0:
            d //= 5
        if d == 1:
            return m.group(1) + format(float(value), ".10g")
    if re.fullmatch(r"-?\d{4,}", s):
        return f"{int(s):,}"
    if re.fullmatch(r"-?\d{1,3}", s):
        return f"x = {s}"
    if re.fullmatch(r"-?\d+\.\d+", s):
        return s + "0"
    if re.fullmatch(r"[A-Za-z]{2,}", s):
        return f"\\text{{{s}}}"
    if re.fullmatch(r"\(?[A-E]\)?", s):
        return f"\\text{{({s.strip('()')})}}"
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac(?![a-zA-Z])", r"\\dfrac", s)
    s = s.replace("^\\circ", "^{\\circ}")
    pairs = _pair_brackets(s) if "\\left" not in s and "\\right" not in s else None
    if pairs:
        sizes = {i: "\\left" for i, _ in pairs} | {j: "\\right" for _, j in pairs}
        s = "".join(sizes.get(i, "") + c for i, c in enumerate(s))
    if not re.search(r"\d,(?:\\!)?\d{3}(?!\d)", s):
        s = re.sub(r",(?=\S)", ", ", s)
    if "\\begin" not in s:
        s = re.sub(r"\s*=\s*", " = ", s)
    if s == answer.strip():
        s = re.sub(r"(?<=[\w}])([+-])(?=[\w\\{(])", r" \1 ", s)  # binary + and -
    if s == answer.strip():
        s = f"${s}$"  # inline math
    return s


@pytest.mark.parametrize(("answer", "variant"), [
    (r"\frac{7}{4}", "1.75"), ("27648", "27,648"), ("33", "x = 33"), ("3.21", "3.210"),
    ("Navin", r"\text{Navin}"), ("C", r"\text{(C)}"),
    (r"-\frac{\sqrt{3}}{2}", r"-\dfrac{\sqrt{3}}{2}"),
    ("(3,4]", r"\left(3, 4\right]"), (r"120^\circ", r"120^{\circ}"), ("y=2x+3", "y = 2x+3"),
    ("58,500", "$58,500$"), (r"\$32,\!348", r"$\$32,\!348$"), ("x^3+3x-6", "x^3 + 3x - 6"),
    (r"\sqrt{13}", r"$\sqrt{13}$"), ("2516_8", "$2516_8$"),
])
def test_reformat_examples(answer, variant):
    assert reformat(answer) == variant


def test_every_reference_answer_equals_itself_and_a_variant():
    """All 10,096 reference answers of the seven eval files (4,666 distinct), each against
    itself and against reformat() of itself. The two empty answers (gaokao2023en rows 167 and
    192, whose answers sit in their question text) are no answer and must grade False."""
    answers = all_reference_answers()
    assert len(answers) == 10_096
    distinct = sorted(set(answers))
    assert len(distinct) == 4_666
    empty = [a for a in distinct if not a.strip()]
    assert empty == [""]
    assert is_equivalent("", "") is False
    clear_caches()
    start = time.perf_counter()
    failures, changed = [], 0
    for answer in distinct:
        if not answer.strip():
            continue
        variant = reformat(answer)
        changed += variant != answer
        if not (is_equivalent(answer, answer) and is_equivalent(variant, answer)):
            failures.append((answer, variant))
    elapsed = time.perf_counter() - start
    assert not failures, failures[:20]
    assert changed == len(distinct) - 1  # every variant differs from its answer
    assert elapsed < 60, f"{elapsed:.1f} s for {len(distinct)} answers"


# ----------------------------------------------------------------------------------------------
# Documented decisions
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("0.3333", r"\frac13", True),  # relative error exactly 1e-4: the bound is inclusive
    ("0.33333", r"\frac{1}{3}", True),
    ("0.3334", r"\frac{1}{3}", False),  # 2e-4
    ("8.9443", r"4\sqrt5", True),
    ("27649", "27648", False),  # two exact integers must be equal
    ("27648.5", "27648", True),  # a decimal: relative tolerance 1e-4
    (r"50\%", "50", True), (r"50\%", "0.5", True),
    ("50", "0.5", False),  # no % sign: no rescaling (the reference grader would say True)
    ("70,110", "70110", True), ("70,110", "110, 70", True), ("1,000", "1000", True),
    ("(1,2)", "1,2", True), ("(1,2)", "2,1", False), ("[1,2)", "1,2", False),
    ("x = 3", "y = 3", True),  # a single "var =" prefix is dropped on both sides
    (r"\frac{2\pi}{3}", r"120^\circ", False),  # degrees are not converted to radians
    (r"\sin 45^\circ", r"\frac{\sqrt{2}}{2}", True),  # ... except inside a trig function
    ("2516_8", "2516", True), ("2516_8", "2516_{10}", False),
    ("A", "a", False),  # choice letters are upper case
    (r"\text{ACF}", "A, C, F", True), ("(C) and (D)", "C", False),
    ("5 apples", "5", True), (r"99\pi \text{ square inches}", r"99\pi", True), ("5 x", "5", False),
    (r"0.1\overline{6}", r"\frac16", True),
    (r"\{\{1,2\},\{3\}\}", r"\{\{3\},\{2,1\}\}", True), ("((1,2),(3,4))", "((1,2),(4,3))", False),
])
def test_documented_decision(a, b, expected):
    assert is_equivalent(a, b) is expected
    assert is_equivalent(b, a) is expected


def test_alternatives_and_plain_numbers():
    assert is_equivalent("-3", ["3", "-3"])  # MATH_test row 334 lists two accepted answers
    assert is_equivalent(("3", "-3"), "-3")
    assert not is_equivalent("4", ["3", "-3"])
    assert is_equivalent(5, "5") and is_equivalent("0.5", 0.5) and is_equivalent(5, 5.0)
    assert not is_equivalent(True, "1") and not is_equivalent(float("nan"), "nan")
    assert eval_answers("MATH_test.json")[334] == ["3", "-3"]


def test_batch():
    preds = [p["pred"] for p in PAIRS[:40]]
    refs = [p["ref"] for p in PAIRS[:40]]
    assert is_equivalent_batch(preds, refs) == [p["label"] for p in PAIRS[:40]]
    many = [r"\frac{1}{2}", "0.5", "1/2", "0.4", "(1,2)", "", None, r"50\%"]
    assert is_equivalent_batch(many, [r"\dfrac12"] * len(many)) == [True, True, True, False, False,
                                                                     False, False, True]
    with pytest.raises(ValueError, match="predictions"):
        is_equivalent_batch(["1"], ["1", "2"])


@pytest.mark.parametrize(("raw", "normal"), [
    (r"\dfrac{1}{2}", r"\frac{1}{2}"), (r"\tfrac12", r"\frac{1}{2}"), (r"\sqrt2", r"\sqrt{2}"),
    (r"5 \text{ cm}", "5"), (r"\text{(B)}", "(B)"), (r"x = 3", "3"), (r"\$15,\!000", "15,000"),
    (r"76^\circ", "76"), (r"50\%", "50%"), (r"\left( 1, 2 \right)", "( 1, 2 )"),
    (r"\boxed{42}", "42"),
    (r"864 \mbox{ inches}^2", "864"), (r"22.1cm^{2}", "22.1"), (r"[2,+\infty)", r"[2,\infty)"),
    (r"\{x \mid x > 0\}", "x > 0"), (r"x \in [-2,7]", "[-2,7]"), (r"\text{Friday}", "Friday"),
    (None, ""), (5, ""), ("x" * 20_000, ""),
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


# ----------------------------------------------------------------------------------------------
# Garbage, threads, time
# ----------------------------------------------------------------------------------------------

GARBAGE = ["", "   ", "\n\t", None, b"5", object(), [], {}, 3 + 4j, "{{{", "}}}", "\\frac{",
           "\\boxed{", "$$", "\\", "\x00\x01\xff\xfe", "\ud800", "\\begin{pmatrix}", "(((", ")(",
           "1/0", "0/0", "\\frac{1}{0}", "\\left(", "\\text{", "^^^", "_", "&&&", "\\\\\\\\", "%",
           "\\%", ",,,", bytes(range(256)).decode("latin-1"), "x" * 100_000,
           "(" * 5000 + ")" * 5000, "\\sqrt{" * 3000, "1," * 4000, "\\{" * 2000]
REAL = ["5", r"\frac{1}{2}", "(1,2)", "x+1", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "A", ""]


@pytest.mark.parametrize("junk", GARBAGE, ids=[f"garbage{i}" for i in range(len(GARBAGE))])
def test_garbage_is_false_and_never_raises(junk):
    for real in REAL:
        assert is_equivalent(junk, real) is False
        assert is_equivalent(real, junk) is False


def test_identical_nonempty_strings_are_equal_even_when_huge():
    huge = "7" * 100_000
    assert is_equivalent(huge, huge) is True
    assert is_equivalent(huge, huge[:-1] + "8") is False


def test_off_main_thread_gives_the_same_answers():
    sample = PAIRS[::3]
    clear_caches()
    results = {}

    def work():
        for i, p in enumerate(sample):
            results[i] = is_equivalent(p["pred"], p["ref"])

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert [results[i] for i in range(len(sample))] == [p["label"] for p in sample]

    clear_caches()
    with ThreadPoolExecutor(4) as pool:  # and several graders at once
        got = list(pool.map(lambda p: is_equivalent(p["pred"], p["ref"]), sample))
    assert got == [p["label"] for p in sample]


SLOW = [
    (r"10^{10^{10^{10}}}", "1"),  # screened: never evaluated
    (r"9^{9^9}", "1"),
    ("100000!", "1"),
    ("(x+1)^{5000}", "x+1"),
    ("x" * 100_000, "1"),  # too long for anything but exact match
    ("x^{50}+x=1", "x=2"),  # sympy solve: stopped by the deadline
    ("\\{" * 2000 + "1" + "\\}" * 2000, "\\{" * 2000 + "2" + "\\}" * 2000),  # nesting is capped
]


@pytest.mark.parametrize(("a", "b"), SLOW, ids=[f"slow{i}" for i in range(len(SLOW))])
@pytest.mark.parametrize("where", ["main", "thread"])
def test_pathological_inputs_return_in_bounded_time(a, b, where, monkeypatch):
    monkeypatch.setattr(grading, "TIME_LIMIT_SECONDS", 1.0)  # keeps the suite quick; default is 3 s
    clear_caches()
    out = {}

    def run():
        start = time.perf_counter()
        out["value"] = is_equivalent(a, b)
        out["seconds"] = time.perf_counter() - start

    if where == "main":
        run()
    else:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert out["value"] is False
    assert out["seconds"] < 10, out


def test_default_deadline_holds_off_the_main_thread():
    """The real limit, on the real slow case, from a worker thread (no signals there)."""
    clear_caches()
    out = {}

    def run():
        start = time.perf_counter()
        out["value"] = is_equivalent("(x+1)^{64}=(x-1)^{64}", "x=2")
        out["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert out["value"] is False
    assert out["seconds"] < grading.TIME_LIMIT_SECONDS + 5, out
    time.sleep(0.2)
    # nothing left behind
    assert not [t for t in threading.enumerate() if t.name == "grading-watchdog"]


def test_long_inputs_are_not_cached():
    clear_caches()
    long_a, long_b = "1" * 3000, "2" * 3000
    assert is_equivalent(long_a, long_b) is False
    assert grading._grade_cached.cache_info().currsize == 0
    assert is_equivalent("1", "2") is False
    assert grading._grade_cached.cache_info().currsize == 1


def test_a_fired_deadline_does_not_leak_into_the_caller(monkeypatch):
    """After a pair times out, the caller's own code must run undisturbed (no stray exception
    from the watchdog), in the main thread and in a worker."""
    monkeypatch.setattr(grading, "TIME_LIMIT_SECONDS", 0.2)

    def grade_then_keep_working():
        clear_caches()
        assert is_equivalent("x^{50}+x=1", "x=2") is False
        total, end = 0, time.perf_counter() + 0.5  # longer than the watchdog's 50 ms re-fire
        while time.perf_counter() < end:
            total += sum(range(100))
        return total

    assert grade_then_keep_working() > 0
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(grade_then_keep_working).result(timeout=60) > 0


def test_grading_under_a_profiler_terminates(monkeypatch):
    """Regression: clearing a pending async exception with a NULL PyThreadState_SetAsyncExc
    left CPython 3.11's eval breaker set, and under a profiler the next call looped forever."""
    import cProfile

    out = []

    def limit(seconds):  # the pairs that must be decided get room on a loaded machine
        monkeypatch.setattr(grading, "TIME_LIMIT_SECONDS", seconds)

    def profiled():
        clear_caches()
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            limit(20.0)
            out.append(is_equivalent("4.4641", r"1+2\sqrt{3}"))
            limit(0.5)
            out.append(is_equivalent("x^{50}+x=1", "x=2"))  # the deadline fires
            limit(20.0)
            out.append(is_equivalent(r"1+2\sqrt{2}", r"1+2\sqrt{3}"))
        finally:
            profiler.disable()

    thread = threading.Thread(target=profiled, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "grading hung under the profiler"
    assert out == [True, False, False]
