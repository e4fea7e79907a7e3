"""Code health of a checkout, read from its source (ast) without importing it: imports against the
package's layers and import cycles, the longest functions and classes, lines over 100 characters,
nested conditional expressions and module sizes, as a plain text (markdown) report.

    python scripts/code_report.py [--repo=DIR] [--top=15]

The layers are the measured tree's own (rstar_jax/_layers.py, or tests/test_layers.py before it)
when it states them, else this checkout's; so an old commit can be measured against them too:

    git worktree add /tmp/before <commit> && python scripts/code_report.py --repo=/tmp/before
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from rstar_jax import _layers  # noqa: E402  (stdlib only: imports nothing of the package)

PACKAGE = _layers.PACKAGE
AREAS = (PACKAGE, "tests", "launch", "scripts", "benchmarks", "configs")
LONG_LINE = 100
BIG_MODULE = 500


@dataclasses.dataclass
class Definition:
    lines: int
    name: str  # qualified within its module: Class.method, outer.inner
    where: str  # path:line


@dataclasses.dataclass
class FileStats:
    path: str  # relative to the repo
    area: str
    lines: int
    long_lines: list[int]  # line numbers over LONG_LINE characters
    nested_ifexps: list[int]  # lines of conditional expressions holding another one
    functions: list[Definition]
    classes: list[Definition]


def _definitions(tree: ast.Module, path: str):
    functions, classes = [], []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                found = Definition(lines, name, f"{path}:{child.lineno}")
                (classes if isinstance(child, ast.ClassDef) else functions).append(found)
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return functions, classes


def _nested_ifexps(tree: ast.Module) -> list[int]:
    """The lines of the outermost conditional expressions that hold another one."""
    out = []

    def visit(node, inside):
        if isinstance(node, ast.IfExp) and not inside:
            if any(isinstance(n, ast.IfExp) for n in ast.walk(node) if n is not node):
                out.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, inside or isinstance(node, ast.IfExp))

    visit(tree, False)
    return out


def file_stats(repo: pathlib.Path, path: pathlib.Path) -> FileStats:
    rel = path.relative_to(repo).as_posix()
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=rel)
    lines = text.splitlines()
    functions, classes = _definitions(tree, rel)
    return FileStats(rel, rel.split("/")[0], len(lines),
                     [i for i, line in enumerate(lines, 1) if len(line) > LONG_LINE],
                     _nested_ifexps(tree), functions, classes)


def _python_files(repo: pathlib.Path, area: str) -> list[pathlib.Path]:
    return sorted((repo / area).rglob("*.py"))


def measured_layers(repo: pathlib.Path) -> tuple[tuple[tuple[str, ...], ...], str]:
    """The layers the tree at `repo` states, and where they came from."""
    for rel in (f"{PACKAGE}/_layers.py", "tests/test_layers.py"):
        path = repo / rel
        if not path.exists():
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "LAYERS" for t in node.targets):
                return ast.literal_eval(node.value), rel
    return _layers.LAYERS, f"{PACKAGE}/_layers.py of {pathlib.Path(_layers.__file__).parents[1]}"


@dataclasses.dataclass
class Report:
    repo: pathlib.Path
    layers: tuple
    layers_from: str
    files: list[FileStats]
    unlayered: list[str]
    back_edges: list[tuple[str, _layers.Import]]
    cycles: list[str]
    area_imports: dict[str, tuple[int, list[str]]]  # area: (rstar_jax imports, unresolved ones)


def measure(repo: pathlib.Path) -> Report:
    repo = repo.resolve()
    layers, layers_from = measured_layers(repo)
    layer = _layers.ranks(layers)
    root = repo / PACKAGE
    known = _layers.modules(root)
    files, area_imports = [], {}
    for area in AREAS:
        paths = _python_files(repo, area)
        count, unresolved = 0, []
        for path in paths:
            rel = path.relative_to(repo).as_posix()
            files.append(file_stats(repo, path))
            for site in _layers.import_sites(path, known):
                count += 1
                if site.target not in known:
                    unresolved.append(f"{rel}:{site.line} {site.target}")
        if paths:
            area_imports[area] = (count, unresolved)
    return Report(repo, layers, layers_from, files, _layers.unlayered(root, layer),
                  _layers.back_edges(root, layer), _layers.cycles(root), area_imports)


def _table(header: tuple[str, ...], rows) -> list[str]:
    rows = [tuple(str(c) for c in row) for row in rows]
    if not rows:
        return ["(none)"]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _counts(files: list[FileStats]) -> tuple[int, ...]:
    """Files, lines, long lines, nested conditional expressions, modules over BIG_MODULE lines."""
    return (len(files), sum(f.lines for f in files), sum(len(f.long_lines) for f in files),
            sum(len(f.nested_ifexps) for f in files), sum(f.lines > BIG_MODULE for f in files))


def render(report: Report, top: int) -> str:
    package_files = [f for f in report.files if f.area == PACKAGE]
    functions = [d for f in package_files for d in f.functions]
    classes = [d for f in package_files for d in f.classes]
    longest = lambda defs: sorted(defs, key=lambda d: (-d.lines, d.where))[:top]  # noqa: E731
    in_functions = sum(site.in_function for _, site in report.back_edges)
    out = [f"# Code report: {report.repo}", ""]

    out += ["## Layers", "", f"From {report.layers_from}, lowest first:", ""]
    out += [f"{i}. {', '.join(names)}" for i, names in enumerate(report.layers)]
    out += ["", f"Packages with no layer: {', '.join(report.unlayered) or 'none'}", ""]

    out += ["## Imports against the layers (rstar_jax/)", "",
            f"Back edges: {len(report.back_edges)} ({in_functions} inside functions)", "",
            "A back edge imports a sibling package of the module's layer, a higher layer's, "
            "or the package root.",
            ""]
    layer = _layers.ranks(report.layers)
    rank = lambda module: layer.get(_layers.package(module), "-")  # noqa: E731
    out += _table(("module (layer)", "imports (layer)", "line", "where"), [
        (f"{m} ({rank(m)})", f"{s.target} ({rank(s.target)})", s.line,
         "function" if s.in_function else "module level") for m, s in report.back_edges])
    out += ["", "## Import cycles (module level and inside functions)", "",
            f"Cycles: {len(report.cycles)}", ""]
    out += [f"- {c}" for c in report.cycles] or ["(none)"]

    out += ["", "## Imports of rstar_jax per area", ""]
    out += _table(("area", "imports of rstar_jax", "unresolved"), [
        (f"{area}/", count, len(unresolved))
        for area, (count, unresolved) in report.area_imports.items()])
    unresolved = [u for _, us in report.area_imports.values() for u in us]
    if unresolved:
        out += ["", "Unresolved (no such module):", "", *(f"- {u}" for u in unresolved)]

    out += ["", f"## Longest functions and methods (rstar_jax/, top {top})", ""]
    out += _table(("lines", "name", "where"),
                  [(d.lines, d.name, d.where) for d in longest(functions)])
    out += ["", f"## Longest classes (rstar_jax/, top {top})", ""]
    out += _table(("lines", "name", "where"),
                  [(d.lines, d.name, d.where) for d in longest(classes)])

    out += ["", f"## Lines over {LONG_LINE} characters, nested conditional expressions, "
            "module sizes", ""]
    groups = collections.defaultdict(list)
    for f in report.files:
        groups[f.area].append(f)
    rows = []
    for area, fs in groups.items():
        fn = max((d for f in fs for d in f.functions), key=lambda d: d.lines, default=None)
        rows.append((f"{area}/", *_counts(fs), fn.lines if fn else 0))
    rows.append(("total", *(sum(r[i] for r in rows) for i in range(1, 6)),
                 max((r[6] for r in rows), default=0)))
    header = ("area", "files", "lines", f"lines > {LONG_LINE}", "nested if-else",
              f"modules > {BIG_MODULE}", "longest function")
    out += _table(header, rows)
    out += ["", "rstar_jax/ per package:", ""]
    packages = collections.defaultdict(list)
    for f in package_files:
        parts = f.path.split("/")
        packages["/".join(parts[:2]) + ("/" if len(parts) > 2 else "")].append(f)
    out += _table(("package or module", *header[1:-1]),
                  [(name, *_counts(fs)) for name, fs in sorted(packages.items())])

    nested = [f"{f.path}:{line}" for f in report.files for line in f.nested_ifexps]
    out += ["", f"## Nested conditional expressions: {len(nested)}", ""]
    out += [f"- {n}" for n in nested] or ["(none)"]

    big = sorted((f for f in report.files if f.lines > BIG_MODULE),
                 key=lambda f: (-f.lines, f.path))
    out += ["", f"## Modules over {BIG_MODULE} lines: {len(big)}", ""]
    out += _table(("lines", "module"), [(f.lines, f.path) for f in big])
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parents[1],
                        help="The checkout to measure (default: this one).")
    parser.add_argument("--top", type=int, default=15,
                        help="How many of the longest functions and classes.")
    args = parser.parse_args(argv)
    if not (args.repo / PACKAGE).is_dir():
        parser.error(f"no {PACKAGE}/ in {args.repo}")
    sys.stdout.write(render(measure(args.repo), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
