"""A plain-Python reference of the search in rstar_jax/search/driver.py's docstring: one problem,
node objects, float32 arithmetic. It shares no code with the jitted tree ops; the jitted search
must build the same trees."""

from __future__ import annotations

import numpy as np

from rstar_jax.search.config import Mode, SearchConfig
from rstar_jax.search.driver import (
    Problem,
    expansion_seed,
    output_block_ids,
    prompt_ids,
)
from rstar_jax.steps import format as fmt
from rstar_jax.steps.grading import is_equivalent

F32 = np.float32


class Node:
    def __init__(self, index, parent, tokens, text):
        self.index, self.parent, self.tokens, self.text = index, parent, tokens, text
        self.depth = 0 if parent is None else parent.depth + 1
        self.children: list[Node] = []
        self.n, self.w, self.init, self.reward = 0, F32(0), F32(0), F32(0)
        self.terminal, self.valid, self.is_answer, self.errors = False, True, False, 0

    def q(self):
        return self.w / F32(self.n) if self.n else F32(0)

    def path(self):
        out, node = [], self
        while node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


def reference_search(problem: Problem, index: int, policy, executor, tokenizer, config: SearchConfig,
                     scorer=None, grade=is_equivalent) -> dict:
    k = config.candidates
    prompt = prompt_ids(tokenizer, problem.question, config.bootstrap)
    nodes = [Node(0, None, [], "")]
    rollouts, overflow = 0, False

    def best_child(node):
        best, best_score = None, None
        for c in node.children:
            if c.terminal:
                continue
            score = c.q()
            if node.n > 0 and c.n > 0:
                score = score + F32(config.c_uct) * np.sqrt(np.log(F32(node.n)) / F32(c.n))
            if best is None or score > best_score:
                best, best_score = c, score
        return best

    def expand(node):
        prefix = prompt + [t for m in node.path() for t in m.tokens]
        tokens, lengths = policy.sample([prefix], k, [expansion_seed(config.seed, index, node.index)])
        kept, seen, answered = [], set(), False
        for s in range(k):
            ids = [int(t) for t in tokens[s, :lengths[s]]]
            if tuple(ids) in seen:
                continue
            seen.add(tuple(ids))
            text = tokenizer.decode(ids)
            kind = fmt.classify_step(text)
            if kind is fmt.StepKind.ANSWER:
                if answered:
                    continue
                answered = True
            kept.append((ids, text, kind))
        children = []
        for ids, text, kind in kept:
            child = Node(len(nodes), node, ids, text)
            nodes.append(child)
            node.children.append(child)
            children.append((child, kind))
        for child, kind in children:
            if kind is fmt.StepKind.ANSWER:
                child.is_answer = child.terminal = True
                continue
            failed = not kind.complete
            if not failed:
                steps = [m.text for m in node.path() if m.valid] + [child.text]
                result = executor.run([fmt.assemble_program(steps)])[0]
                failed = not result.ok
                if result.ok and kind is fmt.StepKind.LAST_CODE:
                    child.tokens = child.tokens + output_block_ids(tokenizer, result.stdout, config.max_output_tokens)
                    child.text = tokenizer.decode(child.tokens)
            child.valid = not failed
            child.errors = node.errors + 1 if failed else 0
            if (failed and child.errors >= config.errors_threshold) or child.depth >= config.max_depth:
                child.terminal, child.reward, child.n, child.w = True, F32(-1), 1, F32(-1)
            elif config.mode.uses_ppm:
                value = F32(scorer.score([prefix + child.tokens])[0])
                child.n, child.w, child.init = 1, value, value
        for child, _ in children:
            if not child.is_answer:
                continue
            if config.mode.graded:
                pred = fmt.extract_answer(child.text)
                value = F32(1 if pred is not None and grade(pred, problem.answer) else -1)
            else:
                value = F32(scorer.score([prefix + child.tokens])[0])
                child.init = value
            child.reward, child.n, child.w = value, 1, value
            up = node
            while up is not None:
                up.n, up.w = up.n + 1, F32(up.w + value)
                up = up.parent

    while rollouts < config.rollouts and not nodes[0].terminal and not overflow:
        node = nodes[0]
        while True:
            if not node.children:
                if len(nodes) + k > config.nodes:
                    overflow = True
                    break
                expand(node)
            child = best_child(node)
            if child is None:
                node.terminal = True
                rollouts += 1
                break
            node = child

    answers = [m for m in nodes if m.is_answer]
    best = max(answers, key=lambda m: (m.q(), -m.index)) if answers else None
    return {
        "parent": [-1] + [m.parent.index for m in nodes[1:]],
        "depth": [m.depth for m in nodes],
        "children": [[c.index for c in m.children] for m in nodes],
        "visits": [m.n for m in nodes],
        "value_sum": [m.w for m in nodes],
        "init_value": [m.init for m in nodes],
        "reward": [m.reward for m in nodes],
        "terminal": [m.terminal for m in nodes],
        "valid": [m.valid for m in nodes],
        "is_answer": [m.is_answer for m in nodes],
        "errors": [m.errors for m in nodes],
        "tokens": [m.tokens for m in nodes],
        "texts": [m.text for m in nodes],
        "rollouts": rollouts,
        "overflow": overflow,
        "answer": fmt.extract_answer(best.text) if best else None,
        "answer_node": best.index if best else -1,
    }


def compare_trees(got, want: dict) -> None:
    """Asserts that a SearchTree equals a reference tree: structure, counts and flags exactly,
    values to 1e-5."""
    assert got.num_nodes == len(want["parent"]), (got.num_nodes, len(want["parent"]))
    children = [[c for c in row if c >= 0] for row in got.children.tolist()]
    assert children == want["children"]
    for name in ("parent", "depth", "visits", "terminal", "valid", "is_answer", "errors"):
        assert getattr(got, name).tolist() == list(want[name]), name
    for name in ("value_sum", "init_value", "reward"):
        np.testing.assert_allclose(getattr(got, name), np.array(want[name], np.float32), atol=1e-5, err_msg=name)
    assert got.tokens == want["tokens"] and got.texts == want["texts"]
    assert (got.rollouts, got.overflow, got.answer, got.answer_node) == (
        want["rollouts"], want["overflow"], want["answer"], want["answer_node"])


__all__ = ["Mode", "compare_trees", "reference_search"]
