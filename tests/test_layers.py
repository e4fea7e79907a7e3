"""The package's layers (docs/architecture.md): a module imports only from its own package or a
lower layer, never from a sibling of its layer or above, and no import, at module level or
inside a function, closes a cycle."""

import ast
import pathlib

import pytest

import rstar_jax

ROOT = pathlib.Path(rstar_jax.__file__).parent

# Lowest first. Packages in one layer are siblings: neither imports the other.
LAYERS = (
    ("_lazy", "_checks", "_files", "processes", "workdir", "config_lib"),  # utilities: no rstar_jax imports but _lazy
    ("steps",),  # format, executor, grading
    ("data", "tokenizer"),
    ("models",),
    ("engine",),
    ("search", "train"),
    ("evaluate",),
    ("report", "dry_run"),
    ("evolve", "testing"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: pathlib.Path, modules) -> set[str]:
    """The rstar_jax modules `path` imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rstar_jax":
            for alias in node.names:  # `from rstar_jax.data import tree` imports the module data.tree
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "rstar_jax")
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rstar_jax"


def test_every_package_has_a_layer():
    packages = {_package(m) for m in _modules()} - {"rstar_jax"}
    assert packages == set(LAYER), f"give these a layer in LAYERS: {sorted(packages - set(LAYER))}"


def test_imports_go_down_the_layers():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        here = _package(module)
        for target in _imports(path, modules):
            there = _package(target)
            if there == here or target == "rstar_jax" and there == "rstar_jax":
                continue
            if there == "rstar_jax" or LAYER[there] >= LAYER.get(here, len(LAYERS)):
                wrong.append(f"{module} imports {target}")
    # (`from rstar_jax import _lazy` reads as the module rstar_jax._lazy, in the lowest layer)
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_closes_a_cycle():
    modules = _modules()
    graph = {m: {t for t in _imports(p, modules) if t in modules and t != m} for m, p in modules.items()}
    # Depth-first search for a back edge; a package's __init__ lists its exports as strings (_lazy).
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join([*stack[stack.index(t):], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_catch_a_back_edge_and_a_cycle(tmp_path, monkeypatch):
    # The same functions on a planted package: data importing search, and a <-> b.
    root = tmp_path / "rstar_jax"
    for name, text in {"__init__.py": "", "data/__init__.py": "", "search/__init__.py": "",
                       "data/a.py": "def f():\n    from rstar_jax.data import b\n",
                       "data/b.py": "from rstar_jax.data import a\nfrom rstar_jax.search import c\n",
                       "search/c.py": ""}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setitem(globals(), "ROOT", root)
    with pytest.raises(AssertionError, match="rstar_jax.data.b imports rstar_jax.search.c"):
        test_imports_go_down_the_layers()
    with pytest.raises(AssertionError, match="rstar_jax.data.a -> rstar_jax.data.b -> rstar_jax.data.a"):
        test_no_import_closes_a_cycle()
