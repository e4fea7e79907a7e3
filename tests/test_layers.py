"""The package's layers (rstar_jax/_layers.py): a module imports only from its own package or a
lower layer, never from a sibling of its layer or above, and no import, at module level or
inside a function, closes a cycle."""

import pathlib

import pytest

import rstar_jax
from rstar_jax import _layers

ROOT = pathlib.Path(rstar_jax.__file__).parent


def test_every_package_has_a_layer():
    missing = _layers.unlayered(ROOT)
    assert not missing, f"give these a layer in LAYERS: {missing}"


def test_imports_go_down_the_layers():
    wrong = [f"{module} imports {site.target}" for module, site in _layers.back_edges(ROOT)]
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_closes_a_cycle():
    cycles = _layers.cycles(ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_catch_a_back_edge_and_a_cycle(tmp_path, monkeypatch):
    # The same functions on a planted package: data importing search and the package root,
    # and a <-> b.
    root = tmp_path / "rstar_jax"
    for name, text in {"__init__.py": "", "data/__init__.py": "", "search/__init__.py": "",
                       "data/a.py": "def f():\n    from rstar_jax.data import b\n",
                       "data/b.py": "from rstar_jax.data import a\nfrom rstar_jax.search import c\n",
                       "search/c.py": "", "data/d.py": "from rstar_jax import Engine\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setitem(globals(), "ROOT", root)
    with pytest.raises(AssertionError, match=r"data.b imports rstar_jax.search.c\n\s*"
                                             r"rstar_jax.data.d imports rstar_jax\n"):
        test_imports_go_down_the_layers()
    with pytest.raises(AssertionError,
                       match="rstar_jax.data.a -> rstar_jax.data.b -> rstar_jax.data.a"):
        test_no_import_closes_a_cycle()
