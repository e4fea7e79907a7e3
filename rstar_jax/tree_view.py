"""Searched trees as pages to look at: one self-contained HTML file per tree, and an index.

Each page draws the tree (collapsible; nodes coloured by kind: code ran, code failed, correct
answer, wrong answer, open; sized by visits N and labelled with N, Q and the PPM's value) and
shows, for the node clicked, its step, the program that ran, what it printed or its error, and
its path from the root. The selected answer's trajectory and the SFT trajectories are
highlighted, and the PPM pairs extracted at a node are listed with it. Everything a page needs
is inside it (the data as JSON, the script and the style inline): it opens from disk, offline.

    pages = write_pages(read_records("runs/tiny/round_3/search", "tree"), "runs/tiny/round_3")
    show(tree)  # in a notebook

`launch/view_tree.py` does this for a round's search records or an evaluation's test-time trees.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.resources
import hashlib
import json
import math
import pathlib
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tqdm

from rstar_jax.data.extract import ExtractConfig, extract_ppm, extract_sft
from rstar_jax.data.tree import SearchTree
from rstar_jax.steps import format as fmt

INDEX = "index.html"


def _asset(name: str) -> str:
    return importlib.resources.files("rstar_jax").joinpath("assets", "viewer", name).read_text()


def is_graded(tree: SearchTree) -> bool:
    """Whether the tree comes from a graded search (every answer's reward +1 or -1), not a
    test-time one (where an answer's reward is the PPM's score). A guess, for callers that do
    not know: a test-time tree whose every answer the PPM scored exactly +-1 passes for graded.
    launch/view_tree.py says which trees it draws."""
    rewards = tree.reward[tree.is_answer]
    return bool(np.isin(rewards, (1.0, -1.0)).all())


def _answer_kinds(tree: SearchTree, graded: bool) -> dict[int, str]:
    """correct / wrong / answer (no reference to grade against) for each answer node."""
    if graded:
        return {a: "correct" if tree.reward[a] > 0 else "wrong"
                for a in np.flatnonzero(tree.is_answer).tolist()}
    return {a: "answer" if right is None else "correct" if right else "wrong"
            for a, right in tree.right_answers().items()}


def view_data(tree: SearchTree, *, graded: bool | None = None,
              extract_config: ExtractConfig | None = ExtractConfig()) -> dict:
    """What a page draws, as JSON-ready data: the nodes' arrays, each node's kind and code, the
    selected answer's path, and for a graded tree the SFT trajectories and PPM pairs that
    `extract_config` extracts from it (None: none)."""
    graded = is_graded(tree) if graded is None else graded
    n = tree.num_nodes
    answers = _answer_kinds(tree, graded)
    outputs = tree.outputs if tree.outputs is not None else [""] * n
    kind, code = [], []
    for v in range(n):
        if v == 0:
            kind.append("root")
        elif v in answers:
            kind.append(answers[v])
        elif not tree.valid[v]:
            kind.append("failed")
        elif tree.children[v, 0] < 0 and not tree.terminal[v]:
            kind.append("open")
        else:
            kind.append("ran")
        c = fmt.step_code(tree.texts[v]) if v else ""
        code.append(c if not c or c.endswith("\n") else c + "\n")  # as `assemble_program` joins
    sft, pairs = [], []
    if graded and extract_config is not None and answers:
        for ex in extract_sft(tree, extract_config):
            a = int(ex.metadata["answer_node"])
            sft.append({"answer": a, "path": tree.path(a), "mean_q": _num(ex.mean_q),
                        "min_q": _num(ex.min_q)})
        for p in extract_ppm(tree, extract_config):
            m = p.metadata
            pairs.append({"kind": p.kind, "node": int(m.get("node", 0)),
                          "pos": int(m["positive_node"]), "neg": int(m["negative_node"]),
                          "q_pos": _num(p.q_positive), "q_neg": _num(p.q_negative)})
    problem = tree.problem
    return {
        "problem": {"id": problem.id, "question": problem.question,
                    "references": list(problem.references)},
        "graded": graded,
        # a training search solves a problem when it finds a right answer (search.json's count);
        # a test-time search when the answer it selects is right
        "solved": (any(k == "correct" for k in answers.values()) if graded
                   else answers.get(int(tree.answer_node)) == "correct"),
        "answer": tree.answer,
        "answer_node": int(tree.answer_node),
        "answer_path": tree.path(tree.answer_node) if tree.answer_node > 0 else [],
        "rollouts": int(tree.rollouts),
        "overflow": bool(tree.overflow),
        "searches": int(tree.searches),
        "outputs_kept": tree.outputs is not None,
        "sft": sft,
        "pairs": pairs,
        "nodes": {
            "parent": tree.parent.tolist(), "depth": tree.depth.tolist(),
            "visits": tree.visits.tolist(), "q": [_num(x) for x in tree.q],
            "ppm": [_num(x) for x in tree.init_value],
            # scored: the PPM gave the node a value (open nodes in a search that uses it)
            "scored": [bool(x) for x in tree.init_value != 0],
            "reward": [_num(x) for x in tree.reward],
            "terminal": tree.terminal.tolist(), "valid": tree.valid.tolist(),
            "answer": tree.is_answer.tolist(), "errors": tree.errors.tolist(),
            "kind": kind, "text": list(tree.texts), "code": code, "output": list(outputs),
        },
    }


def _json_for_script(data) -> str:
    # Inside <script>, "</script" closes the element and "<!--" changes how the parser looks for
    # the end: no "<", ">" or "&" may appear as such. JSON's \u escapes say the same characters.
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for c in "<>&\u2028\u2029":
        text = text.replace(c, f"\\u{ord(c):04x}")
    return text


def _num(x) -> float | None:
    """A value as JSON can hold it: rounded, and None (drawn as NaN) when not finite, as a
    diverged PPM's scores can be."""
    x = float(x)
    return round(x, 4) if math.isfinite(x) else None


def tree_html(tree: SearchTree, *, title: str | None = None, index: str | None = None,
              graded: bool | None = None,
              extract_config: ExtractConfig | None = ExtractConfig()) -> str:
    """One tree's page (module docstring); `index`, a link back to the index page."""
    return _page(tree, view_data(tree, graded=graded, extract_config=extract_config), title, index)


def _page(tree: SearchTree, data: dict, title: str | None, index: str | None) -> str:
    p = tree.problem
    title = title or f"Search tree: {p.id}"
    status = ("<span class='solved'>solved</span>" if data["solved"]
              else "<span class='unsolved'>not solved</span>")
    refs = ", ".join(data["problem"]["references"]) or "none"
    facts = [status, f"reference: {html.escape(refs)}",
             f"selected answer: {html.escape(str(tree.answer))}",
             f"{tree.num_nodes} nodes", f"{tree.rollouts} rollouts",
             f"{len(data['sft'])} SFT trajectories", f"{len(data['pairs'])} PPM pairs"]
    if not data["graded"]:
        facts.append("test-time search: answers graded here against the reference; solved: "
                     "the selected answer is right")
    if tree.overflow:
        facts.append("ran out of nodes")
    back = f"<a href='{html.escape(index)}'>all problems</a> · " if index else ""
    legend = "".join(f"<span><i style='background:var(--{k})'></i>{name}</span>" for k, name in (
        ("ran", "code ran"), ("failed", "code failed"), ("correct", "correct answer"),
        ("wrong", "wrong answer"), ("open", "open"))) + (
        "<span><i style='border-radius:0;height:4px;background:var(--sft);border:0'></i>"
        "SFT trajectory</span><span><i style='border-radius:0;height:2px;background:var(--path);"
        "border:0'></i>selected answer</span><span>\u21c4 PPM pairs</span>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_asset("viewer.css")}</style></head>
<body>
<header>
<h1>{back}{html.escape(title)}</h1>
<div class="question">{html.escape(p.question)}</div>
<div class="facts">{"".join(f"<span>{f}</span>" for f in facts)}</div>
<div class="toolbar"><button id="expand-all">expand all</button>
<button id="collapse-all">collapse all</button><button id="to-answer">selected answer</button>
<span class="legend">{legend}</span></div>
</header>
<main><div id="canvas"></div><div id="panel"></div></main><div id="tip" hidden></div>
<script type="application/json" id="tree-data">{_json_for_script(data)}</script>
<script>{_asset("viewer.js")}</script>
</body></html>
"""


@dataclasses.dataclass(frozen=True)
class Page:
    """A tree's page: its file (name inside the output directory) and the index's facts."""

    file: str
    problem_id: str
    search: int  # which of the problem's trees (several test-time searches): 1, 2, ...
    solved: bool
    nodes: int
    rollouts: int
    answer: str | None


def page_name(problem_id: str, search: int = 1) -> str:
    """The file of a problem's page: `tree-<id>.html`, `tree-<id>-s<search>.html` for a second
    search onwards. An id with characters other than letters, digits, `_`, `.` and `-` has them
    replaced by `_` and 8 hex digits of its hash appended, so two ids never share a file
    ("a/b" and "a_b"), whatever the file system's case rules."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", problem_id)
    if safe != problem_id or problem_id.lower() != problem_id:
        safe += "-" + hashlib.sha256(problem_id.encode()).hexdigest()[:8]
    return f"tree-{safe}.html" if search == 1 else f"tree-{safe}-s{search}.html"


def index_html(pages: Sequence[Page], title: str) -> str:
    """The index: each tree's problem, solved or not, nodes, rollouts, answer, and its link."""
    rows = "".join(
        f"<tr><td><a href='{html.escape(pg.file)}'>{html.escape(pg.problem_id)}</a></td>"
        f"<td>{pg.search}</td><td class='{'solved' if pg.solved else 'unsolved'}'>"
        f"{'solved' if pg.solved else 'not solved'}</td><td>{pg.nodes}</td><td>{pg.rollouts}</td>"
        f"<td>{html.escape(str(pg.answer))}</td></tr>" for pg in pages)
    solved = sum(pg.solved for pg in pages)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_asset("viewer.css")} body {{ display: block; height: auto; }}</style></head>
<body><header><h1>{html.escape(title)}</h1>
<div class="facts"><span>{len(pages)} trees</span><span>{solved} solved</span></div></header>
<table class="index" id="index"><thead><tr><th>problem</th><th>search</th><th>solved</th>
<th>nodes</th><th>rollouts</th><th>selected answer</th></tr></thead>
<tbody>{rows}</tbody></table>
<script>{_SORT}</script></body></html>
"""


# Clicking a column's header sorts the index by it (numbers as numbers), again to reverse.
_SORT = """
document.querySelectorAll("#index th").forEach((th, col) => th.addEventListener("click", () => {
  const body = document.querySelector("#index tbody");
  const rows = Array.from(body.rows);
  const key = (r) => { const t = r.cells[col].textContent; return t !== "" && !isNaN(t) ? +t : t; };
  const up = th.dataset.order !== "up";
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1));
  th.dataset.order = up ? "up" : "down";
  body.append(...rows);
}));
"""


def write_pages(trees: Iterable[SearchTree], out_dir: str | pathlib.Path, *,
                title: str = "Search trees", graded: bool | None = None,
                extract_config: ExtractConfig | None = ExtractConfig(),
                keep: Callable[[int, SearchTree], bool] | None = None,
                progress: bool = False) -> list[Page]:
    """Writes a page per tree into `out_dir`, and the index (`index.html`) of them all. With
    `keep(i, tree)`, only the trees it keeps (i: the tree's position in `trees`), and no index
    (pages link to one already there). A problem's second tree onwards (several test-time
    searches) is its search 2, 3, ..."""
    out = pathlib.Path(out_dir)
    index = keep is None or (out / INDEX).exists()
    seen: dict[str, int] = {}
    pages = []
    for i, tree in enumerate(tqdm.tqdm(trees, desc="pages", unit="tree", disable=not progress)):
        pid = tree.problem.id
        seen[pid] = search = seen.get(pid, 0) + 1
        if keep is not None and not keep(i, tree):
            continue
        name = page_name(pid, search)
        suffix = "" if search == 1 else f" (search {search})"
        data = view_data(tree, graded=graded, extract_config=extract_config)
        doc = _page(tree, data, f"{title}: {pid}{suffix}", INDEX if index else None)
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(doc, encoding="utf-8")
        pages.append(Page(name, pid, search, data["solved"], tree.num_nodes, tree.rollouts,
                          tree.answer))
    if keep is None:
        out.mkdir(parents=True, exist_ok=True)
        (out / INDEX).write_text(index_html(pages, title), encoding="utf-8")
    return pages


def show(tree: SearchTree, *, height: int = 640, **kwargs):
    """The tree's page inline in a notebook (Jupyter, Colab): an IPython HTML object holding
    the page in an iframe, so its script and style stay its own. `kwargs` go to `tree_html`."""
    from IPython.display import HTML

    page = tree_html(tree, **kwargs)
    return HTML(f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;'
                f'height:{int(height)}px;border:1px solid #ddd"></iframe>')
