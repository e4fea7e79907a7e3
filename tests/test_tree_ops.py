"""The jitted tree operations on hand-built trees, without a policy or an executor: what one
`expand` writes and backs up, and where `select` goes next (the driver's docstring states the
search; these pin its device half down one call at a time)."""

import numpy as np
import pytest

from rstar_jax.search import tree as ops
from rstar_jax.search.config import Mode

B, N, K = 2, 8, 3
NO = ops.NO_NODE


def _expand(tree, leaf, *, keep, failed=None, answer=None, value=None, ppm=None, mode=Mode.TERMINAL,
            errors_threshold=2, max_depth=4):
    """Expands problem 0's `leaf` (problem 1's search has ended: NO_NODE) with K candidate slots."""
    def per_slot(x, dtype, fill):
        row = np.full((K,), fill, dtype) if x is None else np.asarray(x, dtype)
        return np.stack([row, np.full((K,), fill, dtype)])

    children = ops.Children(keep=per_slot(keep, bool, False), failed=per_slot(failed, bool, False),
                            is_answer=per_slot(answer, bool, False),
                            answer_value=per_slot(value, np.float32, 0),
                            ppm_value=per_slot(ppm, np.float32, 0))
    return ops.expand(tree, np.array([leaf, NO], np.int32), children, mode=mode,
                      errors_threshold=errors_threshold, max_depth=max_depth)


def _host(tree):
    names = ("parent", "depth", "children", "visits", "value_sum", "init_value", "reward",
             "terminal", "valid", "is_answer", "errors", "num_nodes", "rollouts", "cursor")
    return {name: np.asarray(getattr(tree, name)) for name in names}


def test_expand_adds_the_kept_candidates_as_children_and_backs_up_answers():
    before = _host(ops.init_tree(B, N, K))
    # Slot 0 an open step, slot 1 a right answer (+1), slot 2 dropped (a duplicate, say).
    t = _host(_expand(ops.init_tree(B, N, K), ops.ROOT, keep=[1, 1, 0], answer=[0, 1, 0],
                      value=[0, 1, 0]))
    assert t["num_nodes"].tolist() == [3, 1]
    assert t["children"][0, ops.ROOT].tolist() == [1, 2, NO]
    assert t["parent"][0, :3].tolist() == [NO, 0, 0] and t["depth"][0, :3].tolist() == [0, 1, 1]
    # The answer is terminal with its reward, counted once, and backed up to the root; the open
    # step waits unvisited (TERMINAL mode: no PPM value).
    assert t["is_answer"][0, :3].tolist() == [False, False, True] and t["terminal"][0, :3].tolist() == [0, 0, 1]
    assert t["reward"][0, 2] == 1 and t["visits"][0, :3].tolist() == [1, 0, 1]
    assert t["value_sum"][0, :3].tolist() == [1, 0, 1] and t["init_value"][0, :3].tolist() == [0, 0, 0]
    for name, array in t.items():  # the ended problem is untouched
        np.testing.assert_array_equal(array[1], before[name][1], err_msg=name)


def test_failing_steps_count_up_and_die_at_the_threshold():
    tree = _expand(ops.init_tree(B, N, K), ops.ROOT, keep=[1, 0, 0], failed=[1, 0, 0])
    t = _host(tree)
    assert t["errors"][0, 1] == 1 and not t["valid"][0, 1] and not t["terminal"][0, 1]
    # A second failing step in a row reaches errors_threshold=2: a dead end, valued -1, which is
    # not backed up (only answers are); a step that runs resets the count.
    t = _host(_expand(tree, 1, keep=[1, 1, 0], failed=[1, 0, 0]))
    assert t["errors"][0, 2:4].tolist() == [2, 0] and t["terminal"][0, 2:4].tolist() == [True, False]
    assert t["reward"][0, 2] == -1 and t["value_sum"][0, 2] == -1 and t["visits"][0, 2] == 1
    assert t["visits"][0, :2].tolist() == [0, 0]


def test_steps_past_the_depth_limit_are_dead_ends_and_answers_are_not():
    tree = ops.init_tree(B, N, K)
    for depth in range(1, 3):  # a chain root -> 1 -> 2
        tree = _expand(tree, depth - 1, keep=[1, 0, 0], max_depth=2)
    t = _host(_expand(tree, 2, keep=[1, 1, 0], answer=[0, 1, 0], value=[0, -1, 0], max_depth=2))
    assert t["depth"][0, 3:5].tolist() == [3, 3]
    assert t["terminal"][0, 3:5].tolist() == [True, True] and t["reward"][0, 3:5].tolist() == [-1, -1]
    # The wrong answer (-1) is backed up the chain; the dead step is not.
    assert t["visits"][0, :5].tolist() == [1, 1, 1, 1, 1] and t["value_sum"][0, :3].tolist() == [-1, -1, -1]


@pytest.mark.parametrize("mode", [Mode.PPM, Mode.TEST])
def test_ppm_modes_start_open_nodes_at_their_score(mode):
    t = _host(_expand(ops.init_tree(B, N, K), ops.ROOT, keep=[1, 1, 0], answer=[0, 1, 0],
                      value=[0, 0.5, 0], ppm=[0.25, 0, 0], mode=mode))
    assert t["init_value"][0, 1] == 0.25 and t["visits"][0, 1] == 1 and t["value_sum"][0, 1] == 0.25
    # An answer's value is its grade (PPM mode) or the PPM's score of it (TEST mode); only TEST
    # records it as the node's PPM score.
    assert t["reward"][0, 2] == 0.5 and t["init_value"][0, 2] == (0.5 if mode is Mode.TEST else 0)


def test_select_walks_down_to_an_unexpanded_node_and_ends_rollouts_at_dead_ends():
    tree = ops.init_tree(B, N, K)
    tree, leaf = ops.select(tree, rollouts=4, c_uct=2.0)
    assert np.asarray(leaf).tolist() == [ops.ROOT, ops.ROOT]  # empty trees: the root
    tree = _expand(tree, ops.ROOT, keep=[1, 1, 0])  # two open children, unvisited
    tree, leaf = ops.select(tree, rollouts=4, c_uct=2.0)
    # Unvisited children tie at score 0: the first is taken, and the rollout stands there.
    assert np.asarray(leaf)[0] == 1 and np.asarray(tree.cursor)[0] == 1
    # node 3: a right answer
    tree = _expand(tree, 1, keep=[1, 0, 0], answer=[1, 0, 0], value=[1, 0, 0])
    tree, leaf = ops.select(tree, rollouts=4, c_uct=2.0)
    t = _host(tree)
    # Node 1 has only a terminal child: a dead end, so it becomes terminal, the rollout ends and
    # the next starts at the root, whose only open child left is node 2.
    assert np.asarray(leaf)[0] == 2 and t["terminal"][0, 1] and t["rollouts"][0] == 1 and t["cursor"][0] == 2
    assert np.asarray(leaf)[1] == ops.ROOT and t["rollouts"][1] == 0  # problem 1 was never expanded


def test_select_ends_a_search_at_its_rollouts_or_when_the_tree_is_full():
    tree = _expand(ops.init_tree(B, N, K), ops.ROOT, keep=[1, 1, 1], answer=[1, 1, 1],
                   value=[1, 1, 1])
    # every child terminal: the root is a dead end
    tree, leaf = ops.select(tree, rollouts=1, c_uct=2.0)
    assert np.asarray(leaf)[0] == NO and np.asarray(tree.terminal)[0, ops.ROOT]
    # A tree with no room for another K children stops instead of expanding, and says so.
    small = ops.init_tree(B, 1 + K, K)
    small = _expand(small, ops.ROOT, keep=[1, 1, 1])
    small, leaf = ops.select(small, rollouts=8, c_uct=2.0)
    assert np.asarray(leaf)[0] == NO and np.asarray(small.overflow)[0]


def test_select_of_some_rows_leaves_the_others_untouched():
    """Continuous batching selects for the problems whose expansion ended, while the others'
    leaves are still being expanded: their trees must not move."""
    tree = _expand(ops.init_tree(B, N, K), ops.ROOT, keep=[1, 1, 0])
    want, want_leaf = ops.select(_expand(ops.init_tree(B, N, K), ops.ROOT, keep=[1, 1, 0]),
                                 rollouts=4, c_uct=2.0)
    before = _host(tree)
    tree, leaf = ops.select(tree, np.array([True, False]), rollouts=4, c_uct=2.0)
    assert np.asarray(leaf).tolist() == [np.asarray(want_leaf)[0], NO]
    got, want = _host(tree), _host(want)
    for name in got:
        np.testing.assert_array_equal(got[name][0], want[name][0], err_msg=name)
        np.testing.assert_array_equal(got[name][1], before[name][1], err_msg=name)
    tree, leaf = ops.select(tree, np.array([False, True]), rollouts=4, c_uct=2.0)
    assert np.asarray(leaf).tolist() == [NO, ops.ROOT]


def test_paths_give_each_leafs_nodes_their_validity_and_the_leafs_depth_and_errors():
    tree = _expand(ops.init_tree(B, N, K), ops.ROOT, keep=[1, 1, 0], failed=[0, 1, 0])  # nodes 1, 2
    tree = _expand(tree, 2, keep=[1, 0, 0], failed=[1, 0, 0])  # node 3 under the failed node 2
    path = ops.paths(tree, np.array([3, NO], np.int32), max_depth=3)
    assert np.asarray(path.nodes).tolist() == [[2, 3, NO], [NO, NO, NO]]
    assert np.asarray(path.valid).tolist() == [[False, False, False], [False, False, False]]
    assert np.asarray(path.depth).tolist() == [2, 0] and np.asarray(path.errors).tolist() == [2, 0]
    path = ops.paths(tree, np.array([1, ops.ROOT], np.int32), max_depth=3)
    assert np.asarray(path.nodes).tolist() == [[1, NO, NO], [NO, NO, NO]]
    assert np.asarray(path.valid)[0].tolist() == [True, False, False]


@pytest.mark.parametrize("mode", list(Mode))
def test_child_status_is_one_rule_on_the_host_and_on_the_device(mode):
    """The driver asks the rule on numpy arrays which children the PPM scores; expand applies it
    traced. Every combination of parent depth and errors, failure and kind agrees."""
    import jax.numpy as jnp

    grid = np.array(np.meshgrid([0, 1, 2, 3], [0, 1, 2], [False, True], [False, True],
                                indexing="ij"))
    depth, errors, failed, answer = (g.reshape(-1) for g in grid)
    failed, answer = failed.astype(bool), answer.astype(bool) & ~failed.astype(bool)
    settings = dict(mode=mode, errors_threshold=2, max_depth=3)
    host = ops.child_status(depth, errors, failed, answer, **settings)
    device = ops.child_status(jnp.asarray(depth), jnp.asarray(errors), jnp.asarray(failed),
                              jnp.asarray(answer), **settings)
    for name, h, d in zip(host._fields, host, device):
        assert isinstance(h, np.ndarray), name
        np.testing.assert_array_equal(h, np.asarray(d), err_msg=name)
    # The rule as the driver's docstring states it.
    assert (host.errors == np.where(failed, errors + 1, 0)).all()
    assert (host.dead == (~answer & ((failed & (errors + 1 >= 2)) | (depth + 1 > 3)))).all()
    assert (host.scored == ((~host.terminal & mode.uses_ppm) | (answer & (mode is Mode.TEST)))).all()


def test_the_node_fields_are_declared_alike_on_the_device_and_the_host():
    """`NODE_FIELDS` names the per-node arrays once: the device tree holds each with a batch axis,
    and a searched tree (`SearchTree`) holds the same arrays in the same order."""
    import dataclasses

    from rstar_jax.data.tree import NODE_FIELDS, SearchTree

    device = [f.name for f in dataclasses.fields(ops.Tree)]
    host = [f.name for f in dataclasses.fields(SearchTree)]
    assert device[:len(NODE_FIELDS)] == list(NODE_FIELDS)
    assert host[host.index("parent"):host.index("parent") + len(NODE_FIELDS)] == list(NODE_FIELDS)
