"""A plain-Python reference of one problem's search, written from the module docstring of
rstar_jax/search/driver.py: node objects, float32 arithmetic, no code shared with the jitted tree
ops (rstar_jax/search/tree.py). The batched search must build the same trees (`compare_trees`)."""

from __future__ import annotations

import numpy as np

from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.search.driver import (
    Problem,
    expansion_seed,
    output_block_ids,
)
from rstar_jax.steps import format as fmt
from rstar_jax.steps.grading import is_equivalent

F32 = np.float32
ZERO, ONE = F32(0), F32(1)


class Node:
    """One tree node. N and W are the visit count and value sum; Q = W / N (0 when N = 0)."""

    def __init__(self, index: int, parent: Node | None, tokens: list[int], text: str):
        self.index, self.parent, self.tokens, self.text = index, parent, tokens, text
        self.children: list[Node] = []
        self.depth = 0 if parent is None else parent.depth + 1
        self.N, self.W = 0, ZERO
        self.init_value, self.reward = ZERO, ZERO
        self.terminal, self.valid, self.is_answer, self.errors = False, True, False, 0

    @property
    def Q(self) -> np.float32:
        return self.W / F32(self.N) if self.N > 0 else ZERO

    def path(self) -> list[Node]:
        """The nodes from the root's child down to this one."""
        out, node = [], self
        while node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def path_tokens(self) -> list[int]:
        return [t for m in self.path() for t in m.tokens]


class _Search:
    def __init__(self, problem, problem_index, policy, executor, tokenizer, config, scorer, grade):
        self.problem, self.problem_index, self.policy = problem, problem_index, policy
        self.executor, self.tokenizer, self.config = executor, tokenizer, config
        self.scorer, self.grade = scorer, grade
        self.prompt = list(tokenizer.prompt_ids(problem.question, config.bootstrap))
        self.nodes = [Node(0, None, [], "")]
        self.rollouts, self.overflow = 0, False
        ids = tokenizer.step_token_ids
        self.end_of_code, self.end_of_output = ids[fmt.END_OF_CODE], ids[fmt.END_OF_OUTPUT]

    # --- selection ------------------------------------------------------------------------------

    def uct(self, parent: Node, child: Node) -> np.float32:
        score = child.Q
        if parent.N > 0 and child.N > 0:
            score = score + F32(self.config.c_uct) * np.sqrt(np.log(F32(parent.N)) / F32(child.N))
        return F32(score)

    def best_child(self, node: Node) -> Node | None:
        best, best_score = None, None
        for child in node.children:  # creation order: a later child must beat strictly
            if child.terminal:
                continue
            score = self.uct(node, child)
            if best is None or score > best_score:
                best, best_score = child, score
        return best

    def rollout(self) -> None:
        node, k = self.nodes[0], self.config.candidates
        while True:
            if not node.children:
                if len(self.nodes) + k > self.config.nodes:
                    self.overflow = True
                    return
                self.expand(node)
            child = self.best_child(node)
            if child is None:
                node.terminal = True
                self.rollouts += 1
                return
            node = child

    def run(self) -> None:
        root = self.nodes[0]
        while self.rollouts < self.config.rollouts and not root.terminal and not self.overflow:
            self.rollout()

    # --- expansion ------------------------------------------------------------------------------

    def sample(self, node: Node, prefix: list[int]) -> list[list[int]]:
        """Step 1: the candidates' tokens, a written output block cut off in bootstrap mode."""
        k = self.config.candidates
        seed = expansion_seed(self.config.seed, self.problem_index, node.index)
        tokens, lengths = self.policy.sample([prefix], k, [seed])
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        assert tokens.shape[0] == lengths.shape[0] == k, (tokens.shape, lengths.shape, k)
        steps = []
        for s in range(k):
            ids = [int(t) for t in tokens[s, :int(lengths[s])]]
            if self.config.bootstrap and ids and ids[-1] == self.end_of_output and self.end_of_code in ids:
                last = len(ids) - 1 - ids[::-1].index(self.end_of_code)
                ids = ids[:last + 1]
            steps.append(ids)
        return steps

    def expand(self, node: Node) -> None:
        c = self.config
        assert not node.terminal and not node.is_answer, node.index
        prefix = self.prompt + node.path_tokens()
        steps = self.sample(node, prefix)

        # Step 2: drop repeats and answers after the first; the rest become children in order.
        kept, answered = [], False
        for s, ids in enumerate(steps):
            if ids in steps[:s]:
                continue
            text = self.tokenizer.continuation_text(ids)
            kind = fmt.classify_step(text)
            if kind is fmt.StepKind.ANSWER:
                if answered:
                    continue
                answered = True
            child = Node(len(self.nodes), node, ids, text)
            self.nodes.append(child)
            node.children.append(child)
            kept.append((child, kind))

        # Step 3: run the complete code steps, all in one executor call.
        ancestors = [m.text for m in node.path() if m.valid]
        runs = [(child, kind)
                for child, kind in kept if kind in (fmt.StepKind.CODE, fmt.StepKind.LAST_CODE)]
        programs = [fmt.assemble_program([*ancestors, ch.text]) for ch, _ in runs]
        results = self.executor.run(programs) if programs else []
        assert len(results) == len(runs)
        ran = {ch.index: res for (ch, _), res in zip(runs, results)}

        to_score: list[Node] = []  # PPM scores, asked in one call at the end
        answer: Node | None = None
        for child, kind in kept:
            if kind is fmt.StepKind.ANSWER:
                child.is_answer = child.terminal = True
                answer = child
                if c.mode is Mode.TEST:
                    to_score.append(child)
                continue
            result = ran.get(child.index)
            failed = result is None or not result.ok
            if not failed and kind is fmt.StepKind.LAST_CODE:
                block = output_block_ids(self.tokenizer, result.stdout, c.max_output_tokens)
                child.tokens = child.tokens + block
                child.text = self.tokenizer.continuation_text(child.tokens)
            child.valid = not failed
            child.errors = node.errors + 1 if failed else 0
            if (failed and child.errors >= c.errors_threshold) or child.depth > c.max_depth:
                child.terminal = True
                child.reward, child.N, child.W = -ONE, 1, -ONE
            elif c.mode.uses_ppm:
                to_score.append(child)

        if to_score:
            values = np.asarray(self.scorer.score([prefix + ch.tokens for ch in to_score]),
                                np.float32)
            assert values.shape == (len(to_score),), values.shape
            for child, value in zip(to_score, values):
                child.init_value = F32(value)
                if not child.is_answer:
                    child.N, child.W = 1, F32(value)

        if answer is not None:
            if c.mode.graded:
                pred = fmt.extract_answer(answer.text)
                value = ONE if pred is not None and self.grade(pred, self.problem.answer) else -ONE
            else:
                value = answer.init_value
            answer.reward, answer.N, answer.W = value, 1, value
            up = node
            while up is not None:
                up.N, up.W = up.N + 1, F32(up.W + value)
                up = up.parent

    # --- result ---------------------------------------------------------------------------------

    def result(self) -> dict:
        best = None
        for m in self.nodes:
            if m.is_answer and (best is None or m.Q > best.Q):
                best = m
        nodes = self.nodes
        return {
            "parent": [-1 if m.parent is None else m.parent.index for m in nodes],
            "depth": [m.depth for m in nodes],
            "children": [[ch.index for ch in m.children] for m in nodes],
            "visits": [m.N for m in nodes],
            "value_sum": [float(m.W) for m in nodes],
            "init_value": [float(m.init_value) for m in nodes],
            "reward": [float(m.reward) for m in nodes],
            "terminal": [m.terminal for m in nodes],
            "valid": [m.valid for m in nodes],
            "is_answer": [m.is_answer for m in nodes],
            "errors": [m.errors for m in nodes],
            "tokens": [list(m.tokens) for m in nodes],
            "texts": [m.text for m in nodes],
            "rollouts": self.rollouts,
            "overflow": self.overflow,
            "answer": None if best is None else fmt.extract_answer(best.text),
            "answer_node": -1 if best is None else best.index,
        }


def reference_search(problem: Problem, problem_index: int, policy, executor, tokenizer,
                     config: SearchConfig, scorer=None, grade=is_equivalent) -> dict:
    """Searches one problem as the driver's docstring says; the tree as lists in creation order
    (keys: parent, depth, children, visits, value_sum, init_value, reward, terminal, valid,
    is_answer, errors, tokens, texts, rollouts, overflow, answer, answer_node)."""
    if config.mode.graded and problem.answer is None:
        raise ValueError(f"mode {config.mode.value!r} needs the problem's reference answer")
    if config.mode.uses_ppm and scorer is None:
        raise ValueError(f"mode {config.mode.value!r} needs a scorer")
    search = _Search(problem, problem_index, policy, executor, tokenizer, config, scorer, grade)
    search.run()
    return search.result()


def _describe(want: dict, node: int) -> str:
    if node >= len(want["parent"]):
        return f"node {node}"
    text = want["texts"][node][:50]
    return f"node {node} (parent {want['parent'][node]}, depth {want['depth'][node]}, {text!r})"


def _check_nodes(name: str, got: list, want: list, ref: dict, close: bool = False) -> None:
    if close:
        bad = [i for i, (g, w) in enumerate(zip(got, want)) if not abs(float(g) - float(w)) <= 1e-5]
    else:
        bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    if bad:
        lines = [f"  {_describe(ref, i)}: got {got[i]!r}, want {want[i]!r}" for i in bad[:6]]
        more = f"\n  ... and {len(bad) - 6} more" if len(bad) > 6 else ""
        raise AssertionError(f"{name} differs at {len(bad)} node(s):\n" + "\n".join(lines) + more)


def compare_trees(got, want: dict) -> None:
    """Asserts that `got` (a driver SearchTree) is the reference tree `want`: structure, counts,
    flags, tokens, texts and the outcome exactly; value_sum, init_value and reward to 1e-5."""
    n, m = got.num_nodes, len(want["parent"])
    parent = [int(p) for p in got.parent]
    if n != m:
        first = next((i for i in range(min(n, m)) if parent[i] != want["parent"][i]
                      or list(got.tokens[i]) != want["tokens"][i]), min(n, m))
        raise AssertionError(f"node count: got {n}, want {m} (rollouts got {got.rollouts}, want "
                             f"{want['rollouts']}; overflow got {got.overflow}, want "
                             f"{want['overflow']}); first differing node: {_describe(want, first)}")
    rows = np.asarray(got.children).tolist()
    children = []
    for i, row in enumerate(rows):
        kids = [c for c in row if c >= 0]
        assert row[len(kids):] == [-1] * (len(row) - len(kids)), f"children of node {i} are not packed: {row}"
        children.append(kids)
    _check_nodes("parent", parent, want["parent"], want)
    _check_nodes("depth", [int(d) for d in got.depth], want["depth"], want)
    _check_nodes("children", children, want["children"], want)
    _check_nodes("visits", [int(v) for v in got.visits], want["visits"], want)
    for name in ("terminal", "valid", "is_answer"):
        _check_nodes(name, [bool(v) for v in getattr(got, name)], want[name], want)
    _check_nodes("errors", [int(e) for e in got.errors], want["errors"], want)
    _check_nodes("tokens", [[int(t) for t in ts] for ts in got.tokens], want["tokens"], want)
    _check_nodes("texts", list(got.texts), want["texts"], want)
    for name in ("value_sum", "init_value", "reward"):
        _check_nodes(name, [float(v) for v in getattr(got, name)], want[name], want, close=True)
    for name in ("rollouts", "overflow", "answer", "answer_node"):
        g, w = getattr(got, name), want[name]
        assert g == w, f"{name}: got {g!r}, want {w!r}"


__all__ = ["Mode", "Node", "compare_trees", "reference_search"]
