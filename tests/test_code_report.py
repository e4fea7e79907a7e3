"""scripts/code_report.py: its report of this checkout, and of a planted tree whose every flaw it
must count."""

import importlib.util
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("code_report", ROOT / "scripts" / "code_report.py")
code_report = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = code_report  # dataclasses look their module up
_spec.loader.exec_module(code_report)

SECTIONS = ("## Layers", "## Imports against the layers", "## Import cycles",
            "## Imports of rstar_jax per area", "## Longest functions and methods",
            "## Longest classes", "## Lines over 100 characters",
            "## Nested conditional expressions", "## Modules over 500 lines")


def _run(capsys, *argv) -> str:
    assert code_report.main(list(argv)) == 0
    return capsys.readouterr().out


def _count(label: str, text: str) -> int:
    return int(re.search(rf"^{label}:? (\d+)", text, re.MULTILINE).group(1))


def test_this_checkout_has_no_back_edge_nor_cycle(capsys):
    out = _run(capsys, "--repo", str(ROOT), "--top", "5")
    for section in SECTIONS:
        assert section in out, section
    assert "From rstar_jax/_layers.py" in out
    assert _count("Back edges", out) == 0, out
    assert _count("Cycles", out) == 0, out
    assert "Packages with no layer: none" in out
    longest = out.split("## Longest functions and methods")[1].split("##")[0]
    assert len(re.findall(r"^\| \d+ \| ", longest, re.MULTILINE)) == 5


def test_a_planted_tree_shows_each_flaw(tmp_path, capsys):
    # Layers stated in tests/test_layers.py (as before rstar_jax/_layers.py); data imports search
    # inside a function, a <-> b closes a cycle; one long line, one nested if-else, one big module.
    files = {
        "tests/test_layers.py": 'LAYERS = (("data",), ("search",))\n',
        "rstar_jax/__init__.py": "",
        "rstar_jax/data/__init__.py": "",
        "rstar_jax/search/__init__.py": "",
        "rstar_jax/data/a.py": "from rstar_jax.data import b\n",
        "rstar_jax/data/b.py": "def f():\n    from rstar_jax.data import a\n"
                               "    from rstar_jax.search import c\n"
                               "    return 1 if a else (2 if c else 3)\n",
        "rstar_jax/search/c.py": "class C:\n    def g(self):\n        pass\n",
        "rstar_jax/misc/d.py": "x = 1\n" * 501,
        "scripts/s.py": "import rstar_jax.gone\ny = '" + "y" * 100 + "'\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    out = _run(capsys, "--repo", str(tmp_path))
    assert "From tests/test_layers.py" in out
    assert "Packages with no layer: misc" in out
    assert "Back edges: 1 (1 inside functions)" in out
    assert "| rstar_jax.data.b (0) | rstar_jax.search.c (1) | 3 | function |" in out
    assert "- rstar_jax.data.a -> rstar_jax.data.b -> rstar_jax.data.a" in out
    assert _count("Cycles", out) == 1
    assert "- scripts/s.py:1 rstar_jax.gone" in out
    assert "| 4 | f | rstar_jax/data/b.py:1 |" in out
    assert "| 3 | C | rstar_jax/search/c.py:1 |" in out
    assert "| 2 | C.g | rstar_jax/search/c.py:2 |" in out
    assert "| scripts/ | 1 | 2 | 1 | 0 | 0 | 0 |" in out
    assert _count("## Nested conditional expressions", out) == 1
    assert "- rstar_jax/data/b.py:4" in out
    assert "| 501 | rstar_jax/misc/d.py |" in out
