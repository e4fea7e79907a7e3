"""Writes docs/configs.md: every field of the shipped configs, its value in each, and what it means.

    python scripts/config_docs.py            # (re)write docs/configs.md
    python scripts/config_docs.py --check    # exit 1 if docs/configs.md is not what it would write

Values come from running each config's `get_config()`; descriptions come from the `# comment`
beside (or just above) each field where it is set, read from the sources with `ast` and
`tokenize`, so the page is regenerated, not edited, and a test (`tests/test_docs.py`) keeps it
in step with the configs. Where a field is set first: rstar_jax/config_lib.py (the helpers every
config is built from), then the dataclasses whose fields the `search.*` and `extract` blocks
hold (SearchConfig, ExtractConfig), then the config files themselves.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import io
import pathlib
import sys
import tokenize

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "docs" / "configs.md"
# (column title, config file), in the order of the table's columns.
CONFIGS = (("tiny", "configs/tiny.py"), ("phi3", "configs/phi3.py"),
           ("qwen 7b", "configs/qwen25_math_7b.py"), ("qwen 1.5b", "configs/qwen25_math_1p5b.py"))
CONFIG_LIB = "rstar_jax/config_lib.py"
# Blocks holding a dataclass's fields: (path prefix, source file, class) -> descriptions by name.
DATACLASS_BLOCKS = (
    (("search.common", "search.round1", "search.round2", "search.round3", "search.round4",
      "eval.search"), "rstar_jax/search/config.py", "SearchConfig"),
    (("extract",), "rstar_jax/data/extract.py", "ExtractConfig"),
)
ABSENT = "—"

_CHECK = flags.DEFINE_bool("check", False,
                           "Compare docs/configs.md with what would be written; exit 1 if it "
                           "differs, 0 if not; write nothing.")


# --- values ------------------------------------------------------------------------------------


def load_config(rel: str):
    """`get_config()` (the default variant) of the config file at ROOT/rel."""
    path = ROOT / rel
    spec = importlib.util.spec_from_file_location(f"_config_docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(None)


def flatten(node, prefix: str = "") -> dict[str, object]:
    """{dotted path: value} of a ConfigDict's leaves; an empty block is a leaf (value {})."""
    out = {}
    for key in node.keys():
        value, path = node[key], f"{prefix}{key}"
        if hasattr(value, "keys") and len(value.keys()):
            out.update(flatten(value, path + "."))
        else:
            out[path] = {} if hasattr(value, "keys") else value
    return out


def show(value) -> str:
    """A value as a table cell: Python literal syntax, paths inside this checkout relative to it."""
    if isinstance(value, str) and value.startswith(str(ROOT) + "/"):
        value = value[len(str(ROOT)) + 1:]
    text = "{}" if value == {} else repr(value)
    return "`" + text.replace("|", "\\|") + "`"


# --- descriptions -----------------------------------------------------------------------------


class Comments:
    """The comments of one source file, by line: trailing ones, and lines holding only a comment."""

    def __init__(self, source: str):
        self.lines = source.splitlines()
        self.by_line: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                self.by_line[tok.start[0]] = tok.string.lstrip("#").strip()

    def alone(self, line: int) -> bool:
        return line in self.by_line and self.lines[line - 1].lstrip().startswith("#")

    def above(self, line: int) -> str:
        """The block of comment-only lines directly above `line`, joined."""
        block, i = [], line - 1
        while i >= 1 and self.alone(i):
            block.append(self.by_line[i])
            i -= 1
        return " ".join(reversed(block))

    def describe(self, first: int, last: int, shares_first: bool, shares_last: bool) -> str:
        """The comment of a field written on lines first..last: the trailing comment of its last
        line (unless a later field starts on it), else the comment block above it (unless an
        earlier field starts on its first line)."""
        if not shares_last and last in self.by_line and not self.alone(last):
            return self.by_line[last]
        return "" if shares_first else self.above(first)


def _attribute_path(node: ast.expr, root: str = "config") -> str | None:
    """"a.b" for the target `config.a.b`; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == root and parts:
        return ".".join(reversed(parts))
    return None


def _dict_of(node: ast.expr | None) -> ast.Dict | None:
    """The dict literal of `{...}` or `ConfigDict({...})`."""
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Dict):
        return node.args[0]
    return node if isinstance(node, ast.Dict) else None


def _has_fields(d: ast.Dict | None) -> bool:
    return d is not None and bool(d.keys)


def _called(node: ast.expr | None) -> str | None:
    """The function name of a call `f(...)` or `module.f(...)`."""
    if isinstance(node, ast.Call):
        f = node.func
        return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
    return None


class SourceDescriptions:
    """{dotted path: description} from one config source file."""

    def __init__(self, rel: str, prefixes_of: dict[str, set[str]]):
        source = (ROOT / rel).read_text()
        self.comments = Comments(source)
        self.tree = ast.parse(source)
        self.prefixes_of = prefixes_of  # function name -> paths its returned block is stored at
        self.found: dict[str, str] = {}

    def note(self, path: str, text: str) -> None:
        if text and path not in self.found:
            self.found[path] = text

    def walk_dict(self, d: ast.Dict, prefix: str, names: dict[str, ast.Dict]) -> None:
        """Each `"key": value` of `d` under `prefix`; `**name` spreads a dict assigned earlier."""
        starts = [k.lineno if k is not None else v.lineno for k, v in zip(d.keys, d.values)]
        for i, (key, value) in enumerate(zip(d.keys, d.values)):
            if key is None:
                if isinstance(value, ast.Name) and value.id in names:
                    self.walk_dict(names[value.id], prefix, names)
                continue
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                continue
            path = f"{prefix}{key.value}"
            first, last = key.lineno, value.end_lineno
            shares_first = any(s == first for s in starts[:i])
            shares_last = any(s == last for s in starts[i + 1:])
            inner = _dict_of(value)
            # A block's trailing comment belongs to its last field: a block has the one above it.
            self.note(path, self.comments.describe(first, last, shares_first,
                                                   shares_last or _has_fields(inner)))
            if inner is not None:
                self.walk_dict(inner, path + ".", names)

    def walk_function(self, fn: ast.FunctionDef) -> None:
        names: dict[str, ast.Dict] = {}
        for stmt in ast.walk(fn):
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target = stmt.targets[0]
                if isinstance(target, ast.Name) and isinstance(stmt.value, ast.Dict):
                    names[target.id] = stmt.value
                path = _attribute_path(target)
                if path is None:
                    continue
                inner = _dict_of(stmt.value)
                self.note(path, self.comments.describe(stmt.lineno, stmt.end_lineno, False,
                                                       _has_fields(inner)))
                if inner is not None:
                    self.walk_dict(inner, path + ".", names)
            elif isinstance(stmt, ast.Return) and _dict_of(stmt.value) is not None:
                for prefix in sorted(self.prefixes_of.get(fn.name, ())):
                    self.walk_dict(_dict_of(stmt.value), prefix + ".", names)

    def run(self) -> dict[str, str]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.FunctionDef):
                self.walk_function(node)
        return self.found


def block_prefixes(files: list[str]) -> dict[str, set[str]]:
    """{function: paths} from every `config.a.b = f(...)` in `files`: where f's block is stored."""
    out: dict[str, set[str]] = {}
    for rel in files:
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                path, name = _attribute_path(node.targets[0]), _called(node.value)
                if path and name:
                    out.setdefault(name, set()).add(path)
    return out


def dataclass_descriptions(rel: str, cls: str) -> dict[str, str]:
    """{field: description} of a dataclass's annotated fields, from their comments."""
    source = (ROOT / rel).read_text()
    comments = Comments(source)
    node = next(n for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.ClassDef) and n.name == cls)
    return {s.target.id: comments.describe(s.lineno, s.end_lineno, False, False)
            for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def descriptions(fields: set[str]) -> dict[str, str]:
    """{dotted path (or block path): description}; the first source that describes a path wins.
    The config files describe only `fields` (leaves) that neither config_lib nor a dataclass
    does: their other comments say why a config chose its values, not what a field means."""
    config_files = [rel for _, rel in CONFIGS]
    prefixes = block_prefixes([CONFIG_LIB, *config_files])
    found = SourceDescriptions(CONFIG_LIB, prefixes).run()
    for blocks, rel, cls in DATACLASS_BLOCKS:
        for name, text in dataclass_descriptions(rel, cls).items():
            for block in blocks:
                if text:
                    found.setdefault(f"{block}.{name}", text)
    for rel in config_files:
        for path, text in SourceDescriptions(rel, prefixes).run().items():
            if path in fields:
                found.setdefault(path, text)
    return found


# --- the page ----------------------------------------------------------------------------------

HEADER = """\
<!-- Generated by scripts/config_docs.py from configs/*.py and their sources; do not edit.
     Regenerate: python scripts/config_docs.py -->
# Config fields

Every field of the shipped configs (`get_config()` of each file, the default variant), its
value in each and what it means. Columns: `configs/tiny.py`, `configs/phi3.py`,
`configs/qwen25_math_7b.py`, `configs/qwen25_math_1p5b.py`. Any field can be changed on the
command line, e.g. `--config.search.batch=8`. {absent} marks a field a config does not set:
`search.common`, `search.roundN` and `eval.search` hold `SearchConfig` fields over the
preset (`rstar_jax/search/config.py`), `extract` holds `ExtractConfig` fields over the
paper's defaults (`rstar_jax/data/extract.py`). Variants (`configs/tiny.py:smoke`,
`configs/phi3.py:v5p`, ...) change some values; their files say which.
"""


def section_of(path: str) -> str:
    return path.split(".", 1)[0] if "." in path else ""


def render() -> str:
    """The whole page."""
    configs = [flatten(load_config(rel)) for _, rel in CONFIGS]
    paths = list(dict.fromkeys(p for flat in configs for p in flat))
    # An empty block in one config and fields beneath it in another: list only the fields.
    paths = [p for p in paths if not any(q.startswith(p + ".") for q in paths)]
    described = descriptions(set(paths))
    sections: dict[str, list[str]] = {}
    for p in paths:
        sections.setdefault(section_of(p), []).append(p)
    out = [HEADER.format(absent=ABSENT)]
    titles = " | ".join(t for t, _ in CONFIGS)
    for section in sorted(sections, key=lambda s: (s != "", s)):
        out.append(f"## {section or 'Top level'}\n")
        if described.get(section):
            out.append(described[section] + "\n")
        out.append(f"| field | {titles} | description |")
        out.append("|---|" + "---|" * len(CONFIGS) + "---|")
        shown: set[str] = set()
        for p in sections[section]:
            for block in _blocks(p):  # a described block (train.orm) gets a row before its fields
                if block not in shown and described.get(block):
                    shown.add(block)
                    out.append(_row(block, [""] * len(configs), described[block]))
            cells = [show(flat[p]) if p in flat else ABSENT for flat in configs]
            out.append(_row(p, cells, described.get(p, "")))
        out.append("")
    return "\n".join(out)


def _blocks(path: str) -> list[str]:
    """The blocks between a field's section and the field: "train.sft" for "train.sft.batch"."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _row(path: str, cells: list[str], text: str) -> str:
    return f"| `{path}` | " + " | ".join(cells) + f" | {text.replace('|', '/')} |"


def main(argv):
    del argv
    text = render()
    rel = OUT.relative_to(ROOT)
    if _CHECK.value:
        old = OUT.read_text() if OUT.exists() else ""
        if old == text:
            print(f"{rel} is up to date")
            return 0
        diff = list(difflib.unified_diff(old.splitlines(), text.splitlines(), f"{rel} (on disk)",
                                         f"{rel} (generated)", lineterm="", n=1))
        print(f"{rel} differs from what scripts/config_docs.py generates from the configs "
              f"({len(diff)} diff lines); run `python scripts/config_docs.py` and commit it.\n"
              + "\n".join(diff[:60]), file=sys.stderr)
        return 1
    OUT.write_text(text)
    print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    app.run(main)
