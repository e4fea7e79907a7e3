"""Where problems come from: the benchmarks shipped with the project, and user files.

Benchmarks: the test sets under `rstar_jax/assets/rstar/eval` (MIT, see PROVENANCE.md beside
them), by name: `load_benchmark("math500")`. Rows keep their index as `metadata["index"]` and
get the id `"{name}/{index}"`.

User files: JSONL, JSON (a list of objects) or Parquet, one problem per row, read with
`read_problems(path, preset=..., fields=...)`. A preset names the fields of a known layout and
how to find the final answer in it:

- "rstar": {"question", "answer"} (the shipped benchmarks' layout; also the default)
- "numina": NuminaMath-CoT {"problem", "solution", "source"}: answer = the solution's last \\boxed{}
- "metamath": MetaMathQA {"query", "response", "type"}: answer = the text after "The answer is:"
- "gsm8k": GSM8K {"question", "answer"}: answer = the number after "####"

`fields=` overrides any of the preset's keys: `{"question": "prompt", "answer": "final", "id":
"uid"}`. Every other column of a row is kept in `metadata`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from rstar_jax.data.problem import Problem
from rstar_jax.steps import format as fmt

BENCHMARK_FILES = {
    "math500": "math500_test.json",
    "math": "MATH_test.json",
    "gsm8k": "GSM8K_test.json",
    "aime2024": "aime2024_test.json",
    "amc23": "amc23_test.json",
    "collegemath": "collegemath_test.json",
    "gaokao2023en": "gaokao2023en_test.json",
}
BENCHMARKS = tuple(BENCHMARK_FILES)


def _eval_dir():
    return importlib.resources.files("rstar_jax") / "assets" / "rstar" / "eval"


def load_benchmark(name: str) -> list[Problem]:
    """The test problems of a shipped benchmark (`BENCHMARKS`), in file order.

    A row with several acceptable answers (four in MATH) gets the first as `answer` and all of
    them as `metadata["references"]` (see `Problem.references`); an empty reference (two rows
    of gaokao2023en) becomes answer=None.
    """
    if name not in BENCHMARK_FILES:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    rows = json.loads((_eval_dir() / BENCHMARK_FILES[name]).read_text(encoding="utf-8"))
    out = []
    for row in rows:
        answer, metadata = row["answer"], {"index": row["index"]}
        if isinstance(answer, list):
            metadata["references"] = [str(a) for a in answer]
            answer = answer[0]
        answer = str(answer).strip() or None  # two Gaokao rows have an empty reference
        out.append(Problem(row["question"], answer, id=f"{name}/{row['index']}", source=name,
                           metadata=metadata))
    return out


# --- user files -----------------------------------------------------------------------------


_ANSWER_IS = re.compile(r"The answer is:?\s*(.+?)\s*$", re.DOTALL)
_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def _after(pattern: re.Pattern, drop: str = "") -> Callable[[str], str | None]:
    """The text the pattern's group catches, without the characters in `drop`; None if no match."""
    def find(text: str) -> str | None:
        m = pattern.search(text)
        return m.group(1).translate({ord(c): None for c in drop}) if m else None
    return find


@dataclasses.dataclass(frozen=True)
class Layout:
    """The keys of a row: question, answer (None: the file has none), id and source (None: made
    up), and how to turn the answer field into a final answer (None: it is one already)."""

    question: str = "question"
    answer: str | None = "answer"
    id: str | None = None
    source: str | None = None
    extract: Callable[[str], str | None] | None = None


PRESETS: dict[str, Layout] = {
    "rstar": Layout(id="index"),
    "numina": Layout(question="problem", answer="solution", source="source",
                     extract=fmt.extract_boxed),
    "metamath": Layout(question="query", answer="response", source="type",
                       extract=_after(_ANSWER_IS)),
    "gsm8k": Layout(extract=_after(_GSM8K, drop=",")),
}


def _rows(path: pathlib.Path) -> Iterator[dict]:
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}, line {n}: not JSON ({e.msg}): "
                                         f"{line[:80]!r}") from None
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: a JSON problem file holds a list of objects, got a "
                             f"{type(data).__name__}; use JSONL for one object per line")
        yield from data
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            yield from batch.to_pylist()
    else:
        raise ValueError(f"{path}: unknown problem file type {suffix or '(none)'!r}; "
                         "use .jsonl, .json or .parquet")


def _json_like(value: Any) -> Any:
    """Metadata must survive JSON: numpy scalars and the like become plain values."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_like(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_like(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def read_problems(path: str | pathlib.Path, *, preset: str = "rstar",
                  fields: Mapping[str, str | None] | None = None,
                  source: str | None = None, require_answer: bool = True) -> list[Problem]:
    """Problems from a JSONL, JSON or Parquet file (see the module docstring for presets).

    source: every problem's source (default: the row's source field if the layout has one,
    else the file's stem). require_answer: a row whose answer is missing or cannot be found
    is an error naming the row; pass False to keep such problems with answer=None (test-time
    search needs no answer). Ids: the id field if the layout has one (prefixed with the
    source), else `problem_id(question, source)`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"problem file {path} does not exist")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    layout = PRESETS[preset]
    if fields:
        unknown = set(fields) - {"question", "answer", "id", "source"}
        if unknown:
            raise ValueError(f"unknown field names {sorted(unknown)}; fields= may set question, "
                             "answer, id, source")
        layout = dataclasses.replace(layout, **fields)
    out = []
    for i, row in enumerate(_rows(path)):
        where = f"{path}, row {i}"
        if not isinstance(row, Mapping):
            # a bad file's content, not a bad argument: ValueError
            raise ValueError(f"{where}: a problem is an object, got {type(row).__name__} "
                             f"{str(row)[:60]!r}")
        question = row.get(layout.question)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: no question in field {layout.question!r} (keys: "
                             f"{sorted(row)[:12]}); pick the preset for this layout "
                             f"({', '.join(PRESETS)}) or pass fields={{'question': ...}}")
        answer = row.get(layout.answer) if layout.answer else None
        if answer is not None and not isinstance(answer, str):
            answer = str(_json_like(answer))
        if answer is not None and layout.extract is not None:
            answer = layout.extract(answer)
        if answer is None and require_answer:
            if layout.answer and layout.answer not in row:
                what = f"no answer field {layout.answer!r}"
            elif layout.answer:
                what = f"no final answer found in field {layout.answer!r}"
            else:
                what = "no answer field"
            raise ValueError(f"{where}: {what}; fix the row, pass fields={{'answer': ...}}, "
                             "or require_answer=False to keep it without one")
        src = source or (str(row.get(layout.source))
                         if layout.source and row.get(layout.source) else path.stem)
        used = {layout.question, layout.answer, layout.id, layout.source} - {None}
        metadata = {k: _json_like(v) for k, v in row.items() if k not in used}
        if layout.answer and layout.extract is not None:
            metadata[layout.answer] = row[layout.answer]  # the full solution, for reference
        rid = row.get(layout.id) if layout.id else None
        out.append(Problem(question, answer, id=f"{src}/{rid}" if rid is not None else "",
                           source=src, metadata=metadata))
    return out
