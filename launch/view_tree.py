"""Draws searched trees as HTML pages (`rstar_jax.tree_view`): one self-contained page per tree
and an index, to open in a browser (offline: each page holds its data and script).

    python launch/view_tree.py --workdir=runs/tiny --round=3                # every tree of round 3
    python launch/view_tree.py --workdir=runs/tiny --round=3 --index=0      # its first tree only
    python launch/view_tree.py --workdir=runs/tiny --round=3 --problem=synthetic/level2/1a2b
    python launch/view_tree.py --workdir=runs/tiny --round=3 --trees=eval   # the round's test-time trees
    python launch/view_tree.py --trees=runs/tiny/evaluate/test-round3/trees # launch/evaluate.py's

--trees: `search` (default: the round's search records, <workdir>/round_<r>/search), `eval` (the
round's evaluation, <workdir>/round_<r>/eval/trees), or a directory of tree records. Pages go
to --out (default: the round's directory, or the records directory's parent), named
tree-<problem id>.html, with index.html listing every tree drawn. A search's trees show the SFT
trajectories and PPM pairs the run's extraction settings (config.json) take from them.
"""

import json
import logging
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory (a path or URL).")
_ROUND = flags.DEFINE_integer("round", -1, "Which round (-1: the last one with search records).")
_TREES = flags.DEFINE_string("trees", "search",
                             "search, eval, or a directory of tree records.")
_PROBLEM = flags.DEFINE_string("problem", None, "Draw only this problem's tree(s) (its id).")
_INDEX = flags.DEFINE_integer("index", None, "Draw only the N-th tree of the records (from 0).")
_OUT = flags.DEFINE_string("out", None, "Where the pages go (default: see the module docstring).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None,
                                 "With a URL --workdir (gs://...): the local copy it is read "
                                 "in (default ~/.cache/rstar_jax/workdirs/<scheme>/<path>).")


class UsageError(Exception):
    pass


def _last_round(workdir: pathlib.Path) -> int:
    rounds = sorted(int(p.name.split("_")[1]) for p in workdir.glob("round_*")
                    if p.name.split("_")[1].isdigit() and any((p / "search").glob("tree-*")))
    if not rounds:
        raise UsageError(f"{workdir} has no round with search records (round_<r>/search/tree-*); "
                         "run launch/tpu_evolve.py first, or pass --trees=<records directory>")
    return rounds[-1]


def _sources() -> tuple[pathlib.Path, pathlib.Path, bool, str, dict]:
    """(records directory, output directory, graded, title, the run's extraction settings)."""
    extract: dict = {}
    if _TREES.value not in ("search", "eval"):
        records = pathlib.Path(_TREES.value).expanduser().absolute()
        if not records.is_dir():
            raise UsageError(f"--trees={_TREES.value}: no such directory of tree records")
        return records, records.parent, False, f"Search trees: {records}", extract
    if not _WORKDIR.value:
        raise UsageError(f"--trees={_TREES.value} reads a run: pass --workdir (or --trees=<a "
                         "directory of tree records>)")
    from rstar_jax.evolve.rundir import RunDir

    workdir = RunDir(_WORKDIR.value, _CACHE_DIR.value).dir
    if not workdir.is_dir():
        raise UsageError(f"--workdir={_WORKDIR.value}: no such directory")
    r = _last_round(workdir) if _ROUND.value < 0 else _ROUND.value
    round_dir = workdir / f"round_{r}"
    config = workdir / "config.json"
    if config.exists():
        extract = json.loads(config.read_text()).get("extract") or {}
    if _TREES.value == "search":
        return (round_dir / "search", round_dir, True, f"Round {r} search trees", extract)
    return (round_dir / "eval" / "trees", round_dir, False, f"Round {r} test-time trees", extract)


def main(argv):
    del argv
    from rstar_jax import tree_view
    from rstar_jax.data.extract import ExtractConfig
    from rstar_jax.data.records import SUFFIX, read_records

    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        if _PROBLEM.value is not None and _INDEX.value is not None:
            raise UsageError("pass --problem or --index, not both")
        records, out, graded, title, extract = _sources()
        if not any(records.glob(f"tree-*{SUFFIX}")):
            raise UsageError(f"{records} holds no tree records (tree-*{SUFFIX}); "
                             + ("evaluations save their MCTS trees there since this version: "
                                "evaluate again" if not graded else "has the search run?"))
        try:
            config = ExtractConfig(**extract)
        except (TypeError, ValueError) as e:
            raise UsageError(f"the run's extraction settings (config.json 'extract') are not "
                             f"ExtractConfig's: {e}") from None
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = pathlib.Path(_OUT.value).expanduser().absolute() if _OUT.value else out
    keep = None
    if _INDEX.value is not None:
        keep = lambda i, tree: i == _INDEX.value  # noqa: E731
    elif _PROBLEM.value is not None:
        keep = lambda i, tree: tree.problem.id == _PROBLEM.value  # noqa: E731
    trees = read_records(records, "tree")
    pages = tree_view.write_pages(trees, out, title=title, graded=graded, extract_config=config,
                                  keep=keep, progress=True)
    if not pages:
        which = (f"--index={_INDEX.value}" if _INDEX.value is not None
                 else f"--problem={_PROBLEM.value}")
        print(f"error: {records} has no tree for {which}", file=sys.stderr)
        return 2
    for page in pages[:5]:
        print(out / page.file)
    if len(pages) > 5:
        print(f"... and {len(pages) - 5} more")
    if keep is None:
        print(f"index: {out / tree_view.INDEX} ({len(pages)} trees)")
    return 0


if __name__ == "__main__":
    app.run(main)
