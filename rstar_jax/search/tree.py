"""The search trees of B problems as fixed-size arrays, and the jitted operations on them.

Shapes: B problems, N nodes per tree (the root is node 0), K children per node, D = max_depth.
Node arrays are `[B, N]`; unused nodes hold the sentinels below. The device tree holds a
search's statistics and structure only, as mctx's does; the host owns each node's step tokens
and text. Each operation works on one problem's arrays and is vmapped over B, then jitted with
the search's constants static; the driver (driver.py, whose docstring states the search
exactly) calls, per expansion:

    select  -> the leaf each problem expands next, running whole rollouts' selection
    paths   -> the nodes from the root to each leaf, their validity, the leaf's depth and errors
    expand  -> the leaf's children, their values, and the backup of answers

A problem whose search has ended gets leaf NO_NODE and is left untouched by expand.
`child_status` is the rule that makes a new child terminal, dead or scored; expand applies it
on device and the driver on the host, to know which children the PPM must score.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rstar_jax.data.tree import NODE_FIELDS
from rstar_jax.search.config import Mode

ROOT = 0
NO_NODE = -1  # parent of the root, empty child slot, no leaf


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Tree:
    parent: jax.Array  # int32[B, N], NO_NODE for the root and unused nodes
    depth: jax.Array  # int32[B, N], root 0
    children: jax.Array  # int32[B, N, K], in creation order, then NO_NODE
    visits: jax.Array  # int32[B, N], N
    value_sum: jax.Array  # float32[B, N], W
    init_value: jax.Array  # float32[B, N], PPM score (0 if not scored)
    reward: jax.Array  # float32[B, N], the value a terminal node was created with
    terminal: jax.Array  # bool[B, N]
    valid: jax.Array  # bool[B, N], the step's program ran (answers and the root: True)
    is_answer: jax.Array  # bool[B, N]
    errors: jax.Array  # int32[B, N], consecutive failing steps ending at the node
    num_nodes: jax.Array  # int32[B], nodes created, the root included
    cursor: jax.Array  # int32[B], where the current rollout stands (ROOT when it starts)
    rollouts: jax.Array  # int32[B], rollouts ended
    overflow: jax.Array  # bool[B], the tree ran out of nodes

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, N, K)."""
        return self.children.shape


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Children:
    """What an expansion decided about each leaf's K candidate steps, by candidate slot j: the
    argument of `expand`. All [B, K]."""

    keep: jax.Array  # bool, the candidate becomes a child (not a duplicate, not a second answer)
    failed: jax.Array  # bool, its step is incomplete or malformed, or its program raised
    is_answer: jax.Array  # bool
    answer_value: jax.Array  # float32, an answer's graded reward or PPM score
    ppm_value: jax.Array  # float32, the PPM score of an open node (unused in TERMINAL mode)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Path:
    """Each leaf's path, from `paths`."""

    nodes: jax.Array  # int32[B, D], the root's child first, down to the leaf; then NO_NODE
    valid: jax.Array  # bool[B, D], the path node's program ran (False past the path)
    depth: jax.Array  # int32[B], the leaf's depth
    errors: jax.Array  # int32[B], the leaf's failing steps in a row


class ChildStatus(NamedTuple):
    """What a new child becomes (`child_status`)."""

    depth: Any  # int
    errors: Any  # int, failing steps in a row ending at the child
    dead: Any  # bool, a failing step at errors_threshold, or a non-answer past max_depth
    terminal: Any  # bool, an answer or dead
    # bool, its value is the PPM's score: an open node in PPM and TEST modes, an answer in TEST
    scored: Any


def init_tree(batch: int, nodes: int, candidates: int) -> Tree:
    """B empty trees: each only a root."""
    b, n = batch, nodes
    return Tree(
        parent=jnp.full((b, n), NO_NODE, jnp.int32),
        depth=jnp.zeros((b, n), jnp.int32),
        children=jnp.full((b, n, candidates), NO_NODE, jnp.int32),
        visits=jnp.zeros((b, n), jnp.int32),
        value_sum=jnp.zeros((b, n), jnp.float32),
        init_value=jnp.zeros((b, n), jnp.float32),
        reward=jnp.zeros((b, n), jnp.float32),
        terminal=jnp.zeros((b, n), bool),
        valid=jnp.zeros((b, n), bool).at[:, ROOT].set(True),
        is_answer=jnp.zeros((b, n), bool),
        errors=jnp.zeros((b, n), jnp.int32),
        num_nodes=jnp.ones((b,), jnp.int32),
        cursor=jnp.full((b,), ROOT, jnp.int32),
        rollouts=jnp.zeros((b,), jnp.int32),
        overflow=jnp.zeros((b,), bool),
    )


@functools.partial(jax.jit, donate_argnums=0)
def reset(tree: Tree, rows: jax.Array) -> Tree:
    """`tree` with the problems where rows (bool[B]) is set replaced by empty trees."""
    b, n, k = tree.shape
    fresh = init_tree(b, n, k)

    def pick(new, old):
        return jnp.where(rows.reshape((b,) + (1,) * (old.ndim - 1)), new, old)

    return jax.tree.map(pick, fresh, tree)


# --- one problem -------------------------------------------------------------------------------


def _best_child(t: Tree, node, c_uct: float):
    """The non-terminal child of `node` with the highest UCT score, the first on ties; NO_NODE
    if none."""
    kids = t.children[node]  # [K]
    safe = jnp.maximum(kids, 0)
    n_child = t.visits[safe].astype(jnp.float32)
    n_parent = t.visits[node].astype(jnp.float32)
    q = jnp.where(n_child > 0, t.value_sum[safe] / jnp.maximum(n_child, 1.0), 0.0)
    explore = jnp.log(jnp.maximum(n_parent, 1.0)) / jnp.maximum(n_child, 1.0)
    bonus = jnp.float32(c_uct) * jnp.sqrt(explore)
    score = q + jnp.where((n_child > 0) & (n_parent > 0), bonus, 0.0)
    allowed = (kids != NO_NODE) & ~t.terminal[safe]
    best = jnp.argmax(jnp.where(allowed, score, -jnp.inf))  # first maximum
    return jnp.where(allowed.any(), kids[best], NO_NODE)


def _select_one(t: Tree, rollouts: int, c_uct: float):
    """Runs selection for one problem (see the driver's rollout loop) until it reaches a node to
    expand, marking nodes terminal and counting rollouts on the way. Returns (tree, leaf)."""
    capacity, k = t.children.shape

    def cond(carry):
        return carry[-1]

    def body(carry):
        node, terminal, count, overflow, leaf, _ = carry
        ended = (count >= rollouts) | terminal[ROOT] | overflow
        unexpanded = t.children[node, 0] == NO_NODE
        full = t.num_nodes + k > capacity
        child = _best_child(dataclasses.replace(t, terminal=terminal), node, c_uct)
        dead_end = ~ended & ~unexpanded & (child == NO_NODE)
        terminal = terminal.at[node].set(terminal[node] | dead_end)
        count = count + dead_end
        overflow = overflow | (~ended & unexpanded & full)
        leaf = jnp.where(~ended & unexpanded & ~full, node, NO_NODE)
        running = ~ended & ~unexpanded
        node = jnp.where(dead_end, ROOT, jnp.where(running, child, node))
        return node, terminal, count, overflow, leaf, running

    start = (t.cursor, t.terminal, t.rollouts, t.overflow, jnp.int32(NO_NODE), jnp.bool_(True))
    _, terminal, count, overflow, leaf, _ = jax.lax.while_loop(cond, body, start)
    t = dataclasses.replace(t, terminal=terminal, rollouts=count, overflow=overflow,
                            cursor=jnp.where(leaf == NO_NODE, t.cursor, leaf))
    return t, leaf


def _path_one(t: Tree, leaf, max_depth: int) -> Path:
    """Leaf's path (see `paths`) for one problem."""

    def up(_, carry):
        node, slots = carry
        slot = jnp.where(node > ROOT, t.depth[node] - 1, max_depth)  # out of range: dropped
        return t.parent[jnp.maximum(node, 0)], slots.at[slot].set(node, mode="drop")

    empty = jnp.full((max_depth,), NO_NODE, jnp.int32)
    _, nodes = jax.lax.fori_loop(0, max_depth, up, (leaf, empty))
    at = jnp.maximum(leaf, 0)
    return Path(nodes=nodes, valid=(nodes > ROOT) & t.valid[jnp.maximum(nodes, 0)],
                depth=jnp.where(leaf != NO_NODE, t.depth[at], 0),
                errors=jnp.where(leaf != NO_NODE, t.errors[at], 0))


def child_status(parent_depth, parent_errors, failed, is_answer, *, mode: Mode,
                 errors_threshold: int, max_depth: int) -> ChildStatus:
    """What a new child becomes (the driver's docstring, expand step 3), from its parent's depth
    and error count and its own failure and kind. Array arguments broadcast against each other;
    numpy arrays give numpy arrays and traced ones traced ones, so the host and the device apply
    the same rule."""
    depth = parent_depth + 1
    errors = (parent_errors + 1) * failed  # a step that runs resets the count
    dead = ~is_answer & ((failed & (errors >= errors_threshold)) | (depth > max_depth))
    terminal = is_answer | dead
    scored = (~terminal & mode.uses_ppm) | (is_answer & (mode is Mode.TEST))
    return ChildStatus(depth=depth, errors=errors, dead=dead, terminal=terminal, scored=scored)


def _expand_one(t: Tree, leaf, children: Children, *, mode: Mode, errors_threshold: int,
                max_depth: int):
    """Writes leaf's children: candidate slot j (of K) becomes a node when children.keep[j]."""
    capacity, k = t.children.shape
    go = leaf != NO_NODE
    keep, failed, is_answer = children.keep & go, children.failed, children.is_answer
    answer_value, ppm_value = children.answer_value, children.ppm_value
    rank = jnp.cumsum(keep) - 1
    ids = jnp.where(keep, t.num_nodes + rank, capacity)  # capacity: out of range, dropped
    node = jnp.maximum(leaf, 0)

    status = child_status(t.depth[node], t.errors[node], failed, is_answer, mode=mode,
                          errors_threshold=errors_threshold, max_depth=max_depth)
    init = jnp.where(status.scored, jnp.where(is_answer, answer_value, ppm_value), 0.0)
    visits = jnp.where(status.terminal | status.scored, 1, 0)
    value = jnp.select([is_answer, status.dead, status.scored], [answer_value, -1.0, ppm_value],
                       0.0)
    reward = jnp.where(status.terminal, value, 0.0)

    def put(array, values):
        return array.at[ids].set(values, mode="drop")

    backed = keep & is_answer
    total, count = jnp.where(backed, answer_value, 0.0).sum(), backed.sum()

    def up(_, carry):  # add the answers to the leaf and its ancestors
        at, visits, value_sum = carry
        on = (at != NO_NODE) & (count > 0)
        safe = jnp.maximum(at, 0)
        visits = visits.at[safe].add(jnp.where(on, count, 0))
        value_sum = value_sum.at[safe].add(jnp.where(on, total, 0.0))
        return jnp.where(on, t.parent[safe], NO_NODE), visits, value_sum

    visits_all, value_all = put(t.visits, visits), put(t.value_sum, value)
    # The leaf is at depth <= max_depth: it and its ancestors are at most max_depth + 1 nodes.
    start = jnp.where(go, leaf, NO_NODE)
    carry = (start, visits_all, value_all)
    _, visits_all, value_all = jax.lax.fori_loop(0, max_depth + 1, up, carry)
    row = jnp.full((k,), NO_NODE, jnp.int32).at[jnp.where(keep, rank, k)].set(ids, mode="drop")
    return dataclasses.replace(
        t,
        parent=put(t.parent, jnp.full((k,), leaf, jnp.int32)),
        depth=put(t.depth, jnp.broadcast_to(status.depth, (k,))),
        children=t.children.at[jnp.where(go, node, capacity)].set(row, mode="drop"),
        visits=visits_all,
        value_sum=value_all,
        init_value=put(t.init_value, init),
        reward=put(t.reward, reward),
        terminal=put(t.terminal, status.terminal),
        valid=put(t.valid, ~failed),
        is_answer=put(t.is_answer, is_answer),
        errors=put(t.errors, status.errors),
        num_nodes=t.num_nodes + keep.sum(),
    )


# --- batched, jitted ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("rollouts", "c_uct"), donate_argnums=0)
def select(tree: Tree, rows: jax.Array | None = None, *, rollouts: int,
           c_uct: float) -> tuple[Tree, jax.Array]:
    """(tree, leaf int32[B]): the node each problem expands next, NO_NODE where its search ended.
    rows: bool[B], the problems that select (default all); the others are left unchanged, with
    leaf NO_NODE."""
    new, leaf = jax.vmap(functools.partial(_select_one, rollouts=rollouts, c_uct=c_uct))(tree)
    if rows is None:
        return new, leaf

    def pick(a, b):
        return jnp.where(rows.reshape(rows.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, tree), jnp.where(rows, leaf, NO_NODE)


@functools.partial(jax.jit, static_argnames=("max_depth",))
def paths(tree: Tree, leaf: jax.Array, *, max_depth: int) -> Path:
    """Each leaf's path: the nodes from the root's child down to the leaf (a leaf is at depth
    <= max_depth: deeper nodes are terminal, never expanded). NO_NODE leaves get empty paths."""
    return jax.vmap(functools.partial(_path_one, max_depth=max_depth))(tree, leaf)


@functools.partial(jax.jit, static_argnames=("mode", "errors_threshold", "max_depth"),
                   donate_argnums=0)
def expand(tree: Tree, leaf: jax.Array, children: Children, *, mode: Mode, errors_threshold: int,
           max_depth: int) -> Tree:
    """Adds each leaf's children (leaf int32[B]; NO_NODE: unchanged) and backs up their answers."""
    children = dataclasses.replace(
        children, answer_value=jnp.asarray(children.answer_value, jnp.float32),
        ppm_value=jnp.asarray(children.ppm_value, jnp.float32))
    fn = functools.partial(_expand_one, mode=mode, errors_threshold=errors_threshold,
                           max_depth=max_depth)
    return jax.vmap(fn)(tree, leaf, children)


def fetch(tree: Tree, rows: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The node arrays (NODE_FIELDS) and num_nodes, rollouts, overflow of problems `rows`, in
    one transfer: one dict per row."""
    names = (*NODE_FIELDS, "num_nodes", "rollouts", "overflow")
    arrays = jax.device_get({name: getattr(tree, name)[rows] for name in names})
    return [{name: np.asarray(a[i]) for name, a in arrays.items()} for i in range(len(rows))]
