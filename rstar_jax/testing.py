"""Tiny random models and tokenizers for tests, benchmarks and smoke runs; nothing is downloaded.

A random model almost never writes a step token, so a search with it ends at the first
expansion: every step hits the token budget. `steered_tiny_policy` makes the step tokens likely
(each step then ends after about ten tokens), so searches with it build deep trees of real
generated steps, some valid, most failing, exercising the whole pipeline at realistic cost.
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rstar_jax.models import presets
from rstar_jax.models.transformer import CausalLM
from rstar_jax.steps import format as fmt
from rstar_jax.tokenizer import Tokenizer

# Logit advantage of each step token in steered_tiny_policy, in units of the steering weight.
_STEER = {fmt.END_OF_STEP: 1.0, fmt.END_OF_CODE: 0.7, fmt.ANSWER: 0.9, fmt.END_OF_ANSWER: 0.9}


def tiny_tokenizer(directory: str | pathlib.Path) -> Tokenizer:
    """A SentencePiece tokenizer (at most 400 ids, step tokens included) trained on the
    round-1 prompt and its worked examples, written to `directory`."""
    corpus = [fmt.bootstrap_prompt("What is 2 + 3?"), *fmt.few_shot_examples()] * 2
    return Tokenizer.train_sentencepiece(corpus, directory, vocab_size=400)


def steered_tiny_policy(tokenizer: Tokenizer, seed: int = 0, steer: float = 1.2, *,
                        value_head: bool = False) -> CausalLM:
    """The `tiny` preset with random weights, steered towards writing step tokens.

    Every token's embedding gets a shared positive first coordinate, and the step tokens of
    `_STEER` a larger one; with tied embeddings the final hidden state's first coordinate then
    favours those tokens by about `steer` times their weight in logits.
    """
    config = presets.get("tiny")
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids, the tiny model "
                         f"{config.vocab_size}")
    model = CausalLM(config, value_head=value_head, rngs=nnx.Rngs(seed))
    embed = np.array(model.embed[...])
    embed[:, 0] = 0.05
    ids = tokenizer.step_token_ids
    for token, weight in _STEER.items():
        embed[ids[token], 0] += steer * weight
    model.embed[...] = jnp.asarray(embed)
    return model


def random_search_tree(seed: int, *, nodes: int = 200, candidates: int = 4, max_depth: int = 8,
                       step_chars: int = 160, step_tokens: int = 40, p_answer: float = 0.2,
                       p_correct: float = 0.5, p_failed: float = 0.15):
    """A `SearchTree` shaped like a graded PPM-mode search, without running one: for benchmarks
    and tests of what consumes trees (records, extraction).

    Expansions of random open nodes add 1..candidates children until `nodes` exist (the search
    then overflows) or no node is open (the root is then terminal): answers (+1 or -1, terminal,
    backed up to the root), failing code steps, and open code steps with a random PPM value
    (N = 1, W = value); a step at max_depth that is not an answer is terminal with -1. Texts are
    ~step_chars characters of step-format code; a code step printed its id, a failing one gives
    an error line (`outputs`).
    """
    from rstar_jax.data.problem import Problem
    from rstar_jax.data.tree import SearchTree

    rng = np.random.default_rng(seed)
    parent, depth, kids = [-1], [0], [[]]
    visits, value, init, reward = [0], [0.0], [0.0], [0.0]
    terminal, valid, answer = [False], [True], [False]
    texts, tokens = [""], [[]]
    open_nodes = [0]
    words = ["compute", "the", "total", "value", "of", "x", "then", "add", "each", "term", "so",
             "we", "get"]
    while len(parent) < nodes and open_nodes:
        n = open_nodes.pop(int(rng.integers(len(open_nodes))))
        for _ in range(int(rng.integers(1, candidates + 1))):
            c, d = len(parent), depth[n] + 1
            parent.append(n)
            depth.append(d)
            kids.append([])
            kids[n].append(c)
            kind = rng.random()
            if kind < p_answer:
                r = 1.0 if rng.random() < p_correct else -1.0
                texts.append(f"{fmt.ANSWER}The answer is "
                             f"\\boxed{{{int(rng.integers(100))}}}{fmt.END_OF_ANSWER}")
                visits.append(1), value.append(r), init.append(0.0), reward.append(r)
                terminal.append(True), valid.append(True), answer.append(True)
                m = n
                while m >= 0:
                    visits[m] += 1
                    value[m] += r
                    m = parent[m]
            else:
                comment = " ".join(rng.choice(words, size=max(1, step_chars // 6)))
                head = fmt.CODE if n == 0 else ""
                texts.append(f"{head}\n# {comment}\nx{c} = "
                             f"{int(rng.integers(1000))}\n{fmt.END_OF_STEP}")
                failed = rng.random() < p_failed
                dead = d > max_depth
                v = -1.0 if dead else float(rng.uniform(-1, 1))
                visits.append(1), value.append(v)
                init.append(0.0 if dead else v), reward.append(-1.0 if dead else 0.0)
                terminal.append(dead), valid.append(not failed), answer.append(False)
                if not dead:
                    open_nodes.append(c)
            tokens.append(rng.integers(16, 32000, size=step_tokens).tolist())
            if len(parent) >= nodes:
                break
    count = len(parent)
    for n in range(count - 1, -1, -1):
        # as a search finds out: a node whose children all ended ends
        if kids[n] and all(terminal[c] for c in kids[n]):
            terminal[n] = True
    children = np.full((count, candidates), -1, np.int32)
    for n, ks in enumerate(kids):
        children[n, :len(ks)] = ks
    valid_arr = np.array(valid)
    errors = np.zeros(count, np.int32)
    for c in range(1, count):
        errors[c] = 0 if valid_arr[c] else errors[parent[c]] + 1
    q = int(rng.integers(1000))
    problem = Problem(f"What is {q} plus {q + 1}?", str(2 * q + 1), source="random")
    answers = [i for i in range(count) if answer[i]]
    tree = SearchTree(problem=problem, prompt_ids=rng.integers(16, 32000, size=60).tolist(),
                      parent=np.array(parent, np.int32), depth=np.array(depth, np.int32),
                      children=children, visits=np.array(visits, np.int32),
                      value_sum=np.array(value, np.float32),
                      init_value=np.array(init, np.float32), reward=np.array(reward, np.float32),
                      terminal=np.array(terminal), valid=valid_arr, is_answer=np.array(answer),
                      errors=errors, tokens=tokens, texts=texts, rollouts=len(answers),
                      overflow=not terminal[0], answer=None, answer_node=-1,
                      outputs=["" if answer[i] or i == 0 else f"{i}\n" if valid[i]
                               else "ZeroDivisionError: division by zero" for i in range(count)])
    if answers:
        tree.answer_node = answers[int(np.argmax(tree.q[answers]))]
        tree.answer = fmt.extract_answer(texts[tree.answer_node])
    return tree
