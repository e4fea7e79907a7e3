"""The Colab quickstart runs top to bottom, at smoke size, as a user's kernel would run it."""

import pathlib
import shutil

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).parent.parent


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
        parts.append(out.get("data", {}).get("text/markdown", ""))
    return "".join(parts)


def test_the_quickstart_runs_at_smoke_size(smoke_run, tmp_path):
    """On a copy of the smoke run (conftest): the evolution cell reads it back, and the rest works on it."""
    shutil.copytree(smoke_run[0], tmp_path / "run")
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    [params] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = f'VARIANT = "smoke"\nWORKDIR = {str(tmp_path / "run")!r}'
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "round_1: search" not in _text(code[3])  # the copied run is read back, not redone
    assert "| round | search policy |" in "".join(_text(c) for c in code)  # the round table
    # the plot
    assert any("image/png" in out.get("data", {}) for c in code for out in c.get("outputs", []))
    assert "root" in _text(code[-4])  # a rendered search tree
    # the same tree in the viewer, inline: a page in an iframe
    [html] = ["".join(out["data"]["text/html"]) for out in code[-3]["outputs"]
              if "text/html" in out.get("data", {})]
    assert "<iframe srcdoc=" in html and "tree-data" in html
    # the test-time search on a new question
    assert "search, " in _text(code[-1]) and "answer" in _text(code[-1])
    assert (tmp_path / "run" / "report.md").exists()
