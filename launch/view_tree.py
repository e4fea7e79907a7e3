"""Draws searched trees as HTML pages (`rstar_jax.tree_view`): one self-contained page per tree
and an index, to open in a browser (offline: each page holds its data and script).

    python launch/view_tree.py --workdir=runs/tiny --round=3                # every tree of round 3
    python launch/view_tree.py --workdir=runs/tiny --round=3 --index=0      # its first tree only
    python launch/view_tree.py --workdir=runs/tiny --round=3 --problem=synthetic/level2/1a2b
    python launch/view_tree.py --workdir=runs/tiny --round=3 --trees=eval   # its test-time trees
    python launch/view_tree.py --trees=runs/tiny/evaluate/test-round3/trees # evaluate.py's

--trees: `search` (default: the round's search records, <workdir>/round_<r>/search), `eval` (the
round's evaluation, <workdir>/round_<r>/eval/trees), or a directory of tree records (then
without --workdir and --round). Pages go to --out (default: the round's directory for
`search`, the records directory's parent otherwise), named tree-<problem id>.html, with
index.html listing every tree drawn (not written when --problem or --index picks one). A
graded search's trees show the SFT trajectories and PPM pairs the run's extraction settings
(config.json) take from them; a test-time search's answers are graded against the reference.
"""

import json
import logging
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory (a path or URL).")
_ROUND = flags.DEFINE_integer("round", -1, "Which round (-1: the last one with such records).")
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


def _rounds(workdir: pathlib.Path, where: str) -> list[int]:
    """The rounds of a run with tree records in round_<r>/<where>."""
    from rstar_jax.data.records import SUFFIX

    found = []
    for d in workdir.glob("round_*"):
        r = d.name.removeprefix("round_")
        if r.isdigit() and any((d / where).glob(f"tree-*{SUFFIX}")):
            found.append(int(r))
    return sorted(found)


def _run_extract(records: pathlib.Path) -> dict:
    """The extraction settings of the run a records directory lies in (its config.json's
    `extract`), {} for the defaults when it lies in none."""
    for d in records.parents:
        if (d / "config.json").exists():
            config = json.loads((d / "config.json").read_text())
            if isinstance(config, dict) and "extract" in config:
                return config["extract"] or {}
    return {}


def _sources() -> tuple[pathlib.Path, pathlib.Path, bool | None, str, dict]:
    """(records directory, output directory, graded (None: tell from the rewards), title, the
    run's extraction settings)."""
    if _TREES.value not in ("search", "eval"):
        if _WORKDIR.value or _ROUND.value >= 0:
            raise UsageError(f"--trees={_TREES.value} names the records itself: drop --workdir "
                             "and --round (or pass --trees=search or eval)")
        records = pathlib.Path(_TREES.value).expanduser().absolute()
        if not records.is_dir():
            raise UsageError(f"--trees={_TREES.value}: no such directory of tree records")
        return records, records.parent, None, f"Search trees: {records}", _run_extract(records)
    if not _WORKDIR.value:
        raise UsageError(f"--trees={_TREES.value} reads a run: pass --workdir (or --trees=<a "
                         "directory of tree records>)")
    from rstar_jax.evolve.config import ConfigError
    from rstar_jax.evolve.rundir import RunDir

    try:
        workdir = RunDir(_WORKDIR.value, _CACHE_DIR.value).dir
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if not workdir.is_dir():
        raise UsageError(f"--workdir={_WORKDIR.value}: no such directory")
    search = _TREES.value == "search"
    where, what = ("search", "search") if search else ("eval/trees", "evaluation (MCTS)")
    rounds = _rounds(workdir, where)
    if not rounds or _ROUND.value >= 0 and _ROUND.value not in rounds:
        which = "no round" if _ROUND.value < 0 else f"no round {_ROUND.value}"
        hint = ("run launch/tpu_evolve.py" if search else
                "a round's evaluation keeps its MCTS trees when it runs MCTS with a PPM")
        raise UsageError(f"{workdir} has {which} with {what} tree records (round_<r>/{where}); "
                         f"rounds that have them: {rounds or 'none'} ({hint})")
    r = rounds[-1] if _ROUND.value < 0 else _ROUND.value
    round_dir = workdir / f"round_{r}"
    extract = _run_extract(round_dir)
    if search:
        return round_dir / "search", round_dir, True, f"Round {r} search trees", extract
    # beside the evaluation's results, so the search's pages (and index) stay as they are
    return round_dir / "eval" / "trees", round_dir / "eval", False, \
        f"Round {r} test-time trees", extract


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
            raise UsageError(f"{records} holds no tree records (tree-*{SUFFIX})")
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
