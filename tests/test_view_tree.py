"""The search-tree viewer: what a page draws (`tree_view.view_data`), the pages in a real
headless browser (Debian's chromium, driven by Playwright), and launch/view_tree.py on the
smoke run's search and evaluation trees."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from rstar_jax import tree_view
from rstar_jax.data.extract import ExtractConfig, extract_ppm, extract_sft
from rstar_jax.data.problem import Problem
from rstar_jax.data.records import read_records
from rstar_jax.data.tree import SearchTree
from rstar_jax.steps import format as fmt
from rstar_jax.testing import random_search_tree

ROOT = pathlib.Path(__file__).parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Screenshots and the large tree's timings, kept after the run (CI can upload the directory).
ARTIFACTS = pathlib.Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))


# --- a hand-built tree --------------------------------------------------------------------------

def step(comment: str, code: str, end: str = fmt.END_OF_STEP, first: bool = False) -> str:
    return f"{fmt.CODE if first else ''}\n# {comment}\n{code}\n{end}"


def hand_tree() -> SearchTree:
    """root -> 1 (x = 6, ran) -> 3 (y = x * 7; print(y), ran, printed 42) -> 5 answer 42 (right)
                                                                           -> 6 answer 41 (wrong)
                              -> 4 (open: never expanded)
            -> 2 (failed: NameError; a search tolerating one error goes on) -> 7 (v = 2, open)
    """
    texts = ["",
             step("Step 1: six", "x = 6", first=True),
             step("Step 1: use z", "y = z + 1", first=True),
             step("Step 2: multiply", "y = x * 7\nprint(y)", fmt.END_OF_CODE)
             + fmt.output_block("42"),
             step("Step 2: add", "w = x + 1"),
             "<answer>The product is \\boxed{42}<end_of_answer>",
             "<answer>It is \\boxed{41}, a long different answer text<end_of_answer>",
             step("Step 2: carry on", "v = 2")]
    parent = np.array([-1, 0, 0, 1, 1, 3, 3, 2], np.int32)
    children = np.full((8, 2), -1, np.int32)
    children[0], children[1], children[2], children[3] = [1, 2], [3, 4], [7, -1], [5, 6]
    answer = np.array([0, 0, 0, 0, 0, 1, 1, 0], bool)
    reward = np.array([0, 0, 0, 0, 0, 1, -1, 0], np.float32)
    visits = np.array([3, 3, 1, 2, 1, 1, 1, 1], np.int32)
    value = np.array([-0.4, 0.2, -0.1, 0, 0.3, 1, -1, -0.1], np.float32)
    return SearchTree(
        problem=Problem("What is 6 * 7?", "42", id="hand/1"), prompt_ids=[],
        parent=parent, depth=np.array([0, 1, 1, 2, 2, 3, 3, 2], np.int32), children=children,
        visits=visits, value_sum=value,
        init_value=np.array([0, .1, 0, .2, .3, 0, 0, -.1], np.float32), reward=reward,
        terminal=answer.copy(), valid=np.array([1, 1, 0, 1, 1, 1, 1, 1], bool), is_answer=answer,
        errors=np.array([0, 0, 1, 0, 0, 0, 0, 0], np.int32), tokens=[[]] * 8, texts=texts,
        rollouts=2, overflow=False, answer="42", answer_node=5,
        outputs=["", "", "NameError: name 'z' is not defined", "42\n", "", "", "", ""])


def test_view_data_gives_each_node_its_kind_code_and_output():
    tree = hand_tree()
    d = tree_view.view_data(tree, extract_config=ExtractConfig(min_distance=0))
    nodes = d["nodes"]
    assert nodes["kind"] == ["root", "ran", "failed", "ran", "open", "correct", "wrong", "open"]
    assert nodes["output"][2].startswith("NameError") and nodes["output"][3] == "42\n"
    # the page joins codes along the path as the executor's program is assembled: the code of
    # the ancestors that ran, and the node's own
    for v in (1, 3, 4, 7):
        path = [u for u in tree.path(v) if tree.valid[u] or u == v]
        assert "".join(nodes["code"][u] for u in path) == fmt.assemble_program(
            [tree.texts[u] for u in path])
    assert nodes["code"][5] == "" and d["answer_path"] == [1, 3, 5] and d["solved"]
    # SFT trajectories and PPM pairs name the nodes extraction took them from
    sft = extract_sft(tree, ExtractConfig(min_distance=0))
    assert [s["path"] for s in d["sft"]] == [[1, 3, 5]] and len(sft) == 1
    pairs = extract_ppm(tree, ExtractConfig(min_distance=0))
    assert len(d["pairs"]) == len(pairs) > 0
    step_pairs = [p for p in d["pairs"] if p["kind"] == "step"]
    assert {(p["node"], p["pos"], p["neg"]) for p in step_pairs} == {(3, 5, 6)}
    assert json.loads(json.dumps(d)) == d  # JSON as it is


def test_a_test_time_tree_is_graded_against_the_reference_and_an_old_record_draws():
    tree = hand_tree()
    tree.reward = np.array([0, 0, 0, 0, 0, 0.7, 0.4, 0], np.float32)  # the PPM's scores
    tree.outputs = None  # a record written before trees kept outputs
    assert not tree_view.is_graded(tree)
    d = tree_view.view_data(tree)
    assert d["nodes"]["kind"][5:7] == ["correct", "wrong"] and not d["graded"]
    assert d["sft"] == [] and d["pairs"] == [] and d["nodes"]["output"] == [""] * 8
    assert d["solved"]  # a test-time search solves a problem when its selected answer is right
    tree.answer_node = 6
    assert not tree_view.view_data(tree)["solved"]
    no_reference = SearchTree(**{**tree.__dict__, "problem": Problem("What is 6 * 7?")})
    assert tree_view.view_data(no_reference)["nodes"]["kind"][5:7] == ["answer", "answer"]


HOSTILE = "<!--<script> </script><script>window.hacked = 1</script><img src=x onerror=hacked=1> &amp;"


def hostile_tree() -> SearchTree:
    """The hand tree with markup in the question, the id, a step and an output."""
    tree = hand_tree()
    tree.problem = Problem("What is 6 * 7? " + HOSTILE, "42", id="x/" + HOSTILE)
    tree.texts[4] = step(HOSTILE, "w = 1")
    tree.outputs[3] = HOSTILE
    return tree


def test_a_page_is_self_contained_and_its_data_cannot_close_the_script():
    page = tree_view.tree_html(hostile_tree())
    assert page.count("</script>") == 2  # the data's own and the viewer's
    assert page.count("<!--") == 0
    # nothing fetched at view time: no external script, style, image or font
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(""", page)


def test_page_names_are_safe_and_distinct():
    assert tree_view.page_name("p-1.x_y") == "tree-p-1.x_y.html"
    assert tree_view.page_name("p", 2) == "tree-p-s2.html"
    name = tree_view.page_name("synthetic/level 2/a?b")
    assert re.fullmatch(r"tree-synthetic_level_2_a_b-[0-9a-f]{8}\.html", name)
    names = {tree_view.page_name(i) for i in ("a/b", "a_b", "a b", "A_b", "a_B")}
    assert len({n.lower() for n in names}) == 5  # distinct, whatever the file system's case rules


def test_values_that_are_not_finite_are_drawn_as_nan():
    tree = hand_tree()
    tree.init_value[4] = np.nan
    tree.value_sum[1] = np.inf
    d = tree_view.view_data(tree)
    assert d["nodes"]["ppm"][4] is None and d["nodes"]["q"][1] is None
    page = tree_view.tree_html(tree)
    data = page.split('id="tree-data">')[1].split("</script>")[0]
    json.loads(data, parse_constant=lambda c: pytest.fail(f"{c} in the page's JSON"))


# --- the browser ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        message = ("needs Debian's chromium (`apt-get install chromium`), which .ci/run installs "
                   "when absent")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # The flags keep a headless chromium off the network (this machine's is closed) and work as
    # root (no sandbox).
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    problems = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
          if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.problems = problems
    yield pg
    context.close()


def open_page(pg, path: pathlib.Path) -> float:
    """Loads a page; returns the seconds until the tree is drawn."""
    start = time.perf_counter()
    pg.goto(path.as_uri())
    pg.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return time.perf_counter() - start


def drawn(pg) -> set[int]:
    """The nodes in the page (a band around the view, for a large tree)."""
    return set(pg.eval_on_selector_all(".node", "gs => gs.map(g => +g.dataset.id)"))


def shown(pg) -> set[int]:
    """The nodes laid out: all but those folded away."""
    return set(pg.evaluate("treeViewer.shown()"))


def click(pg, what: str, v: int) -> None:
    """Clicks node v's circle (what="node") or its fold toggle ("toggle"), scrolled to first."""
    pg.evaluate("v => treeViewer.reveal(v)", v)
    pg.click(f".{what}[data-id='{v}']" + (" circle" if what == "node" else ""))


def subtree(tree: SearchTree, v: int) -> set[int]:
    out, todo = set(), [v]
    while todo:
        u = todo.pop()
        out.add(u)
        todo += [int(c) for c in tree.children[u] if c >= 0]
    return out


def test_the_hand_built_page_in_a_browser(page, tmp_path):
    tree = hand_tree()
    [pg_info] = tree_view.write_pages([tree], tmp_path, extract_config=ExtractConfig(min_distance=0))
    open_page(page, tmp_path / pg_info.file)
    assert shown(page) == drawn(page) == set(range(8))
    assert page.text_content("#node-title") == "Node #5: correct answer"  # the selected answer
    click(page, "node", 2)
    assert "NameError" in page.text_content("#node-output")
    click(page, "node", 3)
    program = "\n# Step 1: six\nx = 6\n\n# Step 2: multiply\ny = x * 7\nprint(y)\n"
    assert page.text_content("#node-program") == program
    assert page.text_content("#node-output") == "42\n"
    assert "preferred over" in page.text_content("#node-pairs")
    click(page, "node", 7)  # under a failed step: its program leaves the failed code out
    assert page.text_content("#node-program") == "\n# Step 2: carry on\nv = 2\n"
    click(page, "toggle", 1)
    assert shown(page) == {0, 1, 2, 7}
    click(page, "toggle", 1)
    assert shown(page) == set(range(8))
    page.click("#node-path [data-goto='2']")  # the path's links select nodes (node 7's path)
    assert page.text_content("#node-title") == "Node #2: code failed"
    index = (tmp_path / "index.html").read_text()
    assert pg_info.file in index and "solved" in index
    # a tree read from a record written before trees kept outputs says so
    tree.outputs = None
    (tmp_path / "old.html").write_text(tree_view.tree_html(tree))
    open_page(page, tmp_path / "old.html")
    click(page, "node", 2)
    assert "not kept" in page.text_content("#node-output")
    assert page.problems == []


def test_markup_in_the_data_is_shown_as_text_and_nan_as_nan(page, tmp_path):
    tree = hostile_tree()
    tree.init_value[4] = np.nan
    (tmp_path / "page.html").write_text(tree_view.tree_html(tree))
    open_page(page, tmp_path / "page.html")
    assert page.evaluate("window.hacked") is None and page.locator("#canvas img").count() == 0
    assert HOSTILE in page.text_content("header .question")
    click(page, "node", 4)
    assert HOSTILE in page.text_content("#node-text")
    assert "PPMvalueNaN" in page.text_content("#node-facts").replace(" ", "")
    click(page, "node", 3)
    assert page.text_content("#node-output") == HOSTILE
    assert page.problems == []


@pytest.fixture(scope="module")
def smoke_pages(smoke_run, tmp_path_factory):
    """launch/view_tree.py on the smoke run's round-1 search trees: (output dir, stdout)."""
    out = tmp_path_factory.mktemp("view")
    done = run_view(f"--workdir={smoke_run[0]}", "--round=1", f"--out={out}")
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def run_view(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(ROOT / "launch" / "view_tree.py"), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_a_rounds_search_trees_in_a_browser(smoke_run, smoke_pages, page):
    workdir, out = smoke_run[0], smoke_pages[0]
    trees = list(read_records(workdir / "round_1" / "search", "tree"))
    assert all(t.outputs is not None and len(t.outputs) == t.num_nodes for t in trees)
    assert f"index: {out / 'index.html'} ({len(trees)} trees)" in smoke_pages[1]
    page.goto((out / "index.html").as_uri())
    links = page.eval_on_selector_all("#index a", "as => as.map(a => a.getAttribute('href'))")
    assert sorted(links) == sorted(tree_view.page_name(t.problem.id) for t in trees)
    # the biggest tree: a code step's program and output, and a collapsed subtree
    tree = max(trees, key=lambda t: t.num_nodes)
    open_page(page, out / tree_view.page_name(tree.problem.id))
    assert shown(page) == set(range(tree.num_nodes))
    ran = [v for v in range(1, tree.num_nodes) if tree.valid[v] and not tree.is_answer[v]
           and fmt.classify_step(tree.texts[v]).complete and tree.depth[v] >= 2]
    assert ran, "the smoke search should run code two steps deep"
    v = max(ran, key=lambda u: tree.depth[u])
    click(page, "node", v)
    steps = [tree.texts[u] for u in tree.path(v) if tree.valid[u]]
    assert page.text_content("#node-program") == fmt.assemble_program(steps)
    assert page.text_content("#node-text") == tree.texts[v]
    assert page.text_content("#node-output") == (tree.outputs[v] or "(printed nothing)")
    # fold the root's child on v's path: its subtree, v among it, goes
    fold = tree.path(v)[0]
    hidden = subtree(tree, fold) - {fold}
    assert v in hidden
    click(page, "toggle", fold)
    assert shown(page) == set(range(tree.num_nodes)) - hidden
    click(page, "toggle", fold)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "view_tree.png"))
    assert (ARTIFACTS / "view_tree.png").stat().st_size > 10_000
    assert page.problems == []


@pytest.fixture(scope="module")
def test_time_trees(tmp_path_factory):
    """The directory of two test-time searches' trees of three problems, as an evaluation keeps
    them (`evaluate.tree_writer`): a scripted policy writing code that runs, fails and answers
    right and wrong, a scripted PPM, the real executor."""
    from scripted import CharTokenizer, ScriptedPolicy, ScriptedScorer, random_rule

    from rstar_jax import evaluate
    from rstar_jax.search.config import SearchConfig
    from rstar_jax.steps.executor import CodeExecutor

    tokenizer = CharTokenizer()
    problems = [Problem(f"What is {a} + {a}?", str(2 * a), id=f"add/{a}") for a in (3, 4, 5)]
    rules = {p.question: random_rule(1, p.answer, "-1") for p in problems}
    policy = ScriptedPolicy(lambda q, r, s: rules[q](q, r, s), tokenizer, 48, seeded=True)
    search = SearchConfig(rollouts=6, candidates=3, max_depth=4, max_step_tokens=48,
                          max_output_tokens=16)
    out = tmp_path_factory.mktemp("eval") / "trees"
    with CodeExecutor(num_workers=1) as executor:
        evaluate.mcts(problems, policy, ScriptedScorer(tokenizer=tokenizer), executor, tokenizer,
                      search, searches=2, progress=False,
                      keep_trees=evaluate.tree_writer(out))
    return out


def test_an_evaluations_test_time_trees(test_time_trees, tmp_path, page):
    trees = list(read_records(test_time_trees, "tree"))
    assert [t.problem.id for t in trees] == ["add/3", "add/4", "add/5"] * 2  # search by search
    done = run_view(f"--trees={test_time_trees}", f"--out={tmp_path}")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in tmp_path.glob("tree-*.html"))
    assert names == sorted(tree_view.page_name(f"add/{a}", s) for a in (3, 4, 5) for s in (1, 2))
    # a second search's tree with a step whose code failed
    tree = max(trees[3:], key=lambda t: (not t.valid.all(), t.num_nodes))
    open_page(page, tmp_path / tree_view.page_name(tree.problem.id, 2))
    assert "test-time search" in page.text_content("header")
    assert shown(page) == set(range(tree.num_nodes))
    for v in np.flatnonzero(tree.is_answer).tolist():
        right = fmt.extract_answer(tree.texts[v]) == tree.problem.answer
        page.evaluate("v => treeViewer.reveal(v)", v)
        assert f"k-{'correct' if right else 'wrong'}" in page.get_attribute(
            f".node[data-id='{v}']", "class")
    failed = [v for v in range(1, tree.num_nodes) if not tree.valid[v] and tree.outputs[v]]
    assert failed, "the scripted policy writes code that fails"
    click(page, "node", failed[0])
    assert page.text_content("#node-output") == tree.outputs[failed[0]]
    assert page.get_attribute("#node-output", "class") == "error"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "view_tree_test_time.png"))
    assert page.problems == []


def test_view_tree_picks_a_problem_and_names_what_is_wrong(smoke_run, tmp_path):
    workdir = smoke_run[0]
    tree = next(read_records(workdir / "round_1" / "search", "tree"))
    done = run_view(f"--workdir={workdir}", f"--problem={tree.problem.id}", f"--out={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [tree_view.page_name(tree.problem.id)]
    # a directory of a search's records: graded trees, drawn with their SFT trajectories
    done = run_view(f"--trees={workdir / 'round_1' / 'search'}", "--index=0",
                    f"--out={tmp_path / 'dir'}")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "dir" / tree_view.page_name(tree.problem.id)).read_text()
    data = json.loads(page.split('id="tree-data">')[1].split("</script>")[0])
    assert data["graded"] and "test-time" not in page
    assert data["sft"] == tree_view.view_data(tree)["sft"] != []
    for args, message in [
            ((f"--workdir={tmp_path / 'nothing'}",), "no such directory"),
            ((f"--workdir={tmp_path}",), "no round with search tree records"),
            ((f"--workdir={workdir}", "--round=7"), "no round 7 with search tree records"),
            ((f"--workdir={workdir}", "--trees=eval"), "no round with evaluation (MCTS) tree"),
            ((f"--trees={workdir}", "--round=1"), "drop --workdir and --round"),
            (("--trees=/no/such/dir",), "no such directory"),
            ((f"--workdir={workdir}", "--index=0", "--problem=x"), "not both"),
            ((f"--workdir={workdir}", "--round=1", "--index=10000"), "no tree for --index=10000"),
            (("--trees=search",), "pass --workdir")]:
        done = run_view(*args, f"--out={tmp_path / 'out'}")
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)


def test_a_tree_of_thousands_of_nodes_stays_responsive(page, tmp_path):
    """Draws a random tree of about 2,400 nodes and times it in the browser. The figure goes to
    the artifacts (benchmarks/tree_view.py compares it with a page of the same drawing without
    the script); here that the page holds only the nodes around the view, draws others as the
    view scrolls to them, and a collapse lays the tree out again."""
    tree = random_search_tree(0, nodes=3000)
    assert tree.num_nodes > 2000
    [info] = tree_view.write_pages([tree], tmp_path)
    seconds = open_page(page, tmp_path / info.file)
    assert shown(page) == set(range(tree.num_nodes))
    assert tree.answer_node in drawn(page) and 0 < len(drawn(page)) < tree.num_nodes / 4
    last = page.evaluate("treeViewer.shown().at(-1)")  # the bottom row's node
    assert last not in drawn(page)
    page.eval_on_selector("#canvas", "c => { c.scrollTop = c.scrollHeight; }")
    page.wait_for_selector(f".node[data-id='{last}']")
    start = time.perf_counter()
    click(page, "toggle", 1)
    assert shown(page) == set(range(tree.num_nodes)) - (subtree(tree, 1) - {1})
    toggle = time.perf_counter() - start
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    timings = {"nodes": tree.num_nodes, "load_s": round(seconds, 3),
               "first_draw_ms": page.evaluate("window.treeViewer.renderMs"),
               "collapse_s": round(toggle, 3), "page_bytes": (tmp_path / info.file).stat().st_size}
    (ARTIFACTS / "view_tree_large.json").write_text(json.dumps(timings, indent=1))
    print("large tree:", timings)
    assert page.problems == []
