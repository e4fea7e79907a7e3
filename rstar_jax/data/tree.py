"""A searched tree as the host keeps it: one problem's node arrays, and the record the data
layer writes, reads and extracts training examples from (`records.py`, `extract.py`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from rstar_jax.data.problem import Problem


# The per-node arrays of a search, as `SearchTree` declares them below and the device tree
# (`rstar_jax.search.tree.Tree`) holds them with a leading batch axis during the search.
NODE_FIELDS = ("parent", "depth", "children", "visits", "value_sum", "init_value", "reward",
               "terminal", "valid", "is_answer", "errors")


def path_to(parent, node: int) -> list[int]:
    """The nodes from the root's child down to `node`, given each node's parent."""
    out = []
    while node > 0:
        out.append(node)
        node = int(parent[node])
    return out[::-1]


@dataclasses.dataclass
class SearchTree:
    """One problem's searched tree, on the host; node arrays have one entry per node created."""

    problem: Problem
    prompt_ids: list[int]
    parent: np.ndarray  # int32[n], -1 for the root
    depth: np.ndarray  # int32[n]
    children: np.ndarray  # int32[n, K], -1 where there is none, in creation order
    visits: np.ndarray  # int32[n], N
    value_sum: np.ndarray  # float32[n], W
    init_value: np.ndarray  # float32[n], the PPM score (0 if not scored)
    reward: np.ndarray  # float32[n], the value a terminal node was created with (0 for open nodes)
    terminal: np.ndarray  # bool[n]
    valid: np.ndarray  # bool[n], the step ran (answers and the root are valid)
    is_answer: np.ndarray  # bool[n]
    errors: np.ndarray  # int32[n], consecutive failing steps ending at the node
    tokens: list[list[int]]  # step tokens of each node (root: [])
    texts: list[str]  # step text of each node (root: "")
    rollouts: int  # rollouts counted
    overflow: bool  # the search ran out of nodes
    answer: str | None  # the selected answer
    answer_node: int  # its node, -1 if none
    searches: int = 1  # 2: no rollout of the first search solved it, and this is the second's tree
    # What each node's program printed (its executor stdout, truncated), or for a step whose
    # code failed the one-line error; "" for the root, answers and steps that never ran. None
    # in records written before trees kept it.
    outputs: list[str] | None = None

    @property
    def q(self) -> np.ndarray:
        n = np.maximum(self.visits, 1).astype(np.float32)
        return np.where(self.visits > 0, self.value_sum / n, np.float32(0)).astype(np.float32)

    @property
    def num_nodes(self) -> int:
        return len(self.parent)

    @property
    def solved(self) -> bool:
        """Whether a graded answer node of the tree is correct."""
        return bool((self.is_answer & (self.reward > 0)).any())

    def right_answers(self) -> dict[int, bool | None]:
        """Whether each answer node's answer matches the problem's references
        (`steps.grading.is_equivalent`), by node: what a test-time tree's rewards, PPM scores,
        do not say. None for every node when the problem has no reference."""
        from rstar_jax.steps import format as fmt
        from rstar_jax.steps.grading import is_equivalent

        refs = list(self.problem.references)
        out = {}
        for node in np.flatnonzero(self.is_answer).tolist():
            pred = fmt.extract_answer(self.texts[node])
            out[node] = (pred is not None and is_equivalent(pred, refs)) if refs else None
        return out

    def path(self, node: int) -> list[int]:
        """The nodes from the root's child down to `node`."""
        return path_to(self.parent, node)

    def render(self, max_depth: int | None = None, width: int = 100) -> str:
        """The tree as indented text, one node per line: id, N, Q, flags and the step's first
        line, children in creation order; the selected answer is marked with `<=`.

            0 N=3 Q=+0.33 root
            ├─ 1 N=1 Q=-1.00 fail x  1/0
            └─ 2 N=2 Q=+1.00 x = 3 ...
        """
        q = self.q
        lines = []

        def label(node: int) -> str:
            flags = [name for name, on in (("answer", self.is_answer[node]),
                                           ("terminal", self.terminal[node]),
                                           ("fail", not self.valid[node])) if on]
            text = " ".join(self.texts[node].split()) or "root"
            mark = "  <=" if node == self.answer_node else ""
            line = f"{node} N={self.visits[node]} Q={q[node]:+.2f} {' '.join(flags)} {text}"
            return line.replace("  ", " ")[:width] + mark

        def walk(node: int, prefix: str, last: bool, top: bool) -> None:
            branch = "└─ " if last else "├─ "
            lines.append(label(node) if top else f"{prefix}{branch}{label(node)}")
            kids = [int(c) for c in self.children[node] if c >= 0]
            if max_depth is not None and self.depth[node] >= max_depth:
                if kids:
                    rail = "   " if last or top else "│  "
                    lines.append(f"{prefix}{rail}… {len(kids)} children")
                return
            inner = ""
            if not top:
                inner = prefix + ("   " if last else "│  ")
            for i, c in enumerate(kids):
                walk(c, inner, i == len(kids) - 1, False)

        walk(0, "", True, True)
        return "\n".join(lines)
