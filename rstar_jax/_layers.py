"""The package's layers and its import graph, read from the source (ast) without importing it.

A module imports only from its own package or a lower layer, never from a sibling of its layer
or above, and no import, at module level or inside a function, closes a cycle. tests/test_layers.py
holds the package to this; scripts/code_report.py reports it, on any checkout.
"""

from __future__ import annotations

import ast
import pathlib
from typing import NamedTuple

# Lowest first. Packages in one layer are siblings: neither imports the other.
LAYERS = (
    # utilities: no rstar_jax imports but _lazy
    ("_lazy", "_layers", "_checks", "_files", "processes", "workdir", "config_lib"),
    ("steps",),  # format, executor, grading
    ("data", "tokenizer"),
    ("models",),
    ("engine",),
    ("search", "train"),
    ("evaluate", "tree_view"),
    ("report", "dry_run"),
    ("evolve", "testing"),
)


PACKAGE = "rstar_jax"


def ranks(layers) -> dict[str, int]:
    """Each package's layer, lowest 0."""
    return {name: i for i, names in enumerate(layers) for name in names}


LAYER = ranks(LAYERS)


class Import(NamedTuple):
    target: str  # the rstar_jax module imported (or the package it names, when not a module)
    line: int
    in_function: bool  # inside a def (run when called) rather than at module level


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """The modules of the package in directory `root`, by dotted name, to their files."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_sites(path: pathlib.Path, known) -> list[Import]:
    """Every import of an rstar_jax module in the file `path`, at module level or in a
    function."""
    out = []

    def visit(node, in_function):
        if (isinstance(node, ast.ImportFrom) and node.module
                and node.module.split(".")[0] == PACKAGE):
            # `from rstar_jax.data import tree` imports the module data.tree
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append(Import(full if full in known else node.module, node.lineno, in_function))
        elif isinstance(node, ast.Import):
            out.extend(Import(a.name, node.lineno, in_function)
                       for a in node.names if a.name.split(".")[0] == PACKAGE)
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return out


def package(module: str) -> str:
    """The package (or top-level module) of rstar_jax that `module` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rstar_jax"


def unlayered(root: pathlib.Path, layer=None) -> list[str]:
    """The packages under `root` that have no layer."""
    layer = LAYER if layer is None else layer
    return sorted({package(m) for m in modules(root)} - {"rstar_jax"} - set(layer))


def back_edges(root: pathlib.Path, layer=None) -> list[tuple[str, Import]]:
    """The imports against the layers, as (importing module, import): a module importing a
    package of its own layer but another package, of a higher layer, or the package root."""
    layer = LAYER if layer is None else layer
    found = modules(root)
    top = max(layer.values(), default=-1) + 1
    wrong = []
    for module, path in found.items():
        here = package(module)
        for site in import_sites(path, found):
            there = package(site.target)
            if there == here:
                continue
            # (`from rstar_jax import _lazy` reads as the module rstar_jax._lazy, lowest layer)
            if there == "rstar_jax" or layer.get(there, top) >= layer.get(here, top):
                wrong.append((module, site))
    return sorted(wrong, key=lambda w: (w[0], w[1].target, w[1].line))


def graph(root: pathlib.Path) -> dict[str, set[str]]:
    """Each module's imports of the package's other modules, at module level or in a function."""
    found = modules(root)
    return {m: {s.target for s in import_sites(p, found) if s.target in found and s.target != m}
            for m, p in found.items()}


def cycles(root: pathlib.Path) -> list[str]:
    """The import cycles, one per back edge of a depth-first search: "a -> b -> a"."""
    edges = graph(root)
    # A package's __init__ lists its exports as strings (_lazy), so it imports none of them.
    state, out = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                out.append(" -> ".join([*stack[stack.index(t):], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return out
