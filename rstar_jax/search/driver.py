r"""The host driver: B problems searched at once, each by the rollouts of RSTAR.md section 3.

Exactly what one problem's search does (the jitted tree ops in tree.py and the plain-Python
reference in tests/mcts_reference.py both implement this):

Nodes are numbered in creation order; node 0 is the root (depth 0, no step, N = W = 0). Q = W/N,
0 when N = 0. Values are float32.

A rollout:

    node = root
    loop:
        if node has no children:
            if the tree holds fewer than `candidates` free nodes: the search overflows and ends
                (this rollout is not counted);
            expand(node)
        child = best_child(node)
        if child is None: node becomes terminal; the rollout ends (and is counted)
        node = child

The search of a problem ends after `rollouts` counted rollouts, when its root is terminal, or
when it overflows. Every rollout ends by marking one node terminal, so `rollouts` bounds the
trajectories a problem explores.

best_child(n): among the children of n that are not terminal, the highest
`Q(c) + c_uct * sqrt(ln N(n) / N(c))`, the bonus being 0 when N(n) = 0 or N(c) = 0; ties go to the
child created first; None when every child is terminal.

expand(n), node n at depth d of problem p:
1. The policy samples `candidates` steps for prompt(p) + the tokens of n's path (the step
   tokens of its ancestors and its own, root first), with seed `expansion_seed(seed, p, n)`.
   A step's tokens are those generated, the stop token included. In bootstrap mode a step that
   ends at a written `<end_of_output>` is cut back to its `<end_of_code>`.
2. In sample order, a candidate whose tokens equal an earlier one's is dropped, and so is an
   answer-kind candidate after the first. The rest become n's children in that order, at depth
   d + 1, numbered from the tree's node count on.
3. Each child's text is its tokens decoded as they follow the path
   (`Tokenizer.continuation_text`); its kind is `classify_step(text)`.
   - ANSWER: terminal and valid. Its value v is, when the mode is graded, +1 if
     `extract_answer(text)` is equivalent to the problem's reference answer and -1 otherwise
     (also when no answer can be extracted); at test time, the PPM's score of prompt + path +
     step. reward = v; N = 1, W = v, and N += 1, W += v on n and every ancestor up to the root.
   - Otherwise the child fails if its kind is INCOMPLETE or MALFORMED, or if its program
     (`assemble_program` of the texts of its valid ancestors, root excluded, and its own) does
     not run in the executor. errors = errors(n) + 1 when it fails (errors of a valid node and of
     the root: 0). valid = not failed.
   - A valid LAST_CODE child gets the executor's stdout as an output block appended to its
     tokens (`output_block_ids`: `fmt.output_block`, special-token spellings in stdout escaped,
     cut to max_output_tokens) and so to its text.
   - A failing child with errors >= errors_threshold, and a non-answer child deeper than
     max_depth (RSTAR.md: depth > max_depth), is terminal: reward = -1, N = 1, W = -1 on itself
     only. So a node at depth max_depth is still expanded, and its answers count.
   - Any other child is an open node: in PPM and TEST modes N = 1 and W = init_value = the
     PPM's score of prompt + path + its tokens; in TERMINAL mode N = W = 0.
   init_value is the PPM score of every node the PPM scored (0 for the rest); reward is 0 for
   open nodes.

The answer of a search is the text of the answer node with the highest Q (ties: created first),
through `extract_answer`; None if no answer node exists.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import numpy as np
import tqdm

from rstar_jax._checks import positive_int
from rstar_jax.data.problem import Problem
from rstar_jax.data.tree import NODE_FIELDS, SearchTree
from rstar_jax.engine.continuous import ContinuousDecoder
from rstar_jax.search import tree as tree_ops
from rstar_jax.search.config import SearchConfig
from rstar_jax.steps import format as fmt


class Policy(Protocol):
    """A policy may also offer `decoder(places, samples)`: a `ContinuousDecoder` (or None) for
    continuous batching (see `run_search`)."""

    def sample(self, prompts: Sequence[Sequence[int]], num_samples: int,
               seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """`num_samples` continuations of each prompt, each ending at (and keeping) its first stop
        token or after the step budget: (tokens int32[len(prompts) * num_samples, T], lengths
        int32[rows]); row b * num_samples + s is sample s of prompt b, and seeds[b] its seed.
        A problem's successive prompts mostly extend each other, so a policy may keep their keys
        and values (`Engine(prefix_rows=)`)."""


class Scorer(Protocol):
    def score(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """PPM score (float32) of each token sequence: prompt + steps."""


class Executor(Protocol):
    def run(self, programs: Sequence[str]) -> list:  # list of ExecResult(ok, stdout, error)
        ...


def expansion_seed(seed: int, problem: int, node: int) -> int:
    """The policy's seed for expanding `node` of problem number `problem`: a search is
    reproducible, and a problem's samples do not depend on which problems share its batch."""
    return zlib.crc32(f"{seed}/{problem}/{node}".encode())


def output_block_ids(tokenizer, stdout: str, limit: int) -> list[int]:
    """Token ids of `fmt.output_block(stdout)` as it follows a step, at most `limit` of them: a
    long stdout is cut, never the delimiters (ValueError if they alone exceed `limit`)."""
    ids = tokenizer.continuation_ids(fmt.output_block(stdout))
    if len(ids) <= limit:
        return ids
    head, tail = fmt.output_block("").split(fmt.OUTPUT)
    head, tail = tokenizer.continuation_ids(head + fmt.OUTPUT), tokenizer.continuation_ids(tail)
    if len(head) + len(tail) > limit:
        raise ValueError(f"the output block's delimiters take {len(head) + len(tail)} tokens, more "
                         f"than max_output_tokens={limit}; raise max_output_tokens")
    body = tokenizer.continuation_ids(fmt.truncate_output(fmt.escape_tokens(stdout.rstrip())))
    return head + body[:limit - len(head) - len(tail)] + tail


class EnginePolicy:
    """The policy model as a `Policy`: one `Engine.generate` call per batch of expansions, with
    the search's sampling settings and the step stop tokens (and EOS). An engine with a prefix
    store keeps the problems' paths there, so a path runs only its new tokens."""

    def __init__(self, engine, tokenizer, config: SearchConfig):
        ids = tokenizer.step_token_ids
        names = fmt.BOOTSTRAP_STOP_TOKENS if config.bootstrap else fmt.STOP_TOKENS
        self.stop_ids = [ids[t] for t in names]
        if tokenizer.eos_id is not None:
            self.stop_ids.append(tokenizer.eos_id)
        self.engine, self.config = engine, config
        self.warned = False

    def sample(self, prompts, num_samples, seeds):
        c = self.config
        limit = getattr(getattr(self.engine, "config", None), "max_position_embeddings", None)
        longest = max((len(p) for p in prompts), default=0) + c.max_step_tokens
        if limit is not None and longest > limit and not self.warned:
            self.warned = True
            warnings.warn(f"a prompt and path of {longest - c.max_step_tokens} tokens plus "
                          f"max_step_tokens={c.max_step_tokens} exceeds the policy's context of "
                          f"{limit} tokens (max_position_embeddings); steps past it are sampled "
                          "from positions the model was not trained on. Lower max_depth or the "
                          "step budgets.", stacklevel=2)
        res = self.engine.generate(list(prompts), max_new_tokens=c.max_step_tokens,
                                   temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                                   stop_token_ids=self.stop_ids, seed=np.asarray(seeds, np.uint32),
                                   num_samples=num_samples)
        return res.tokens, res.lengths

    def decoder(self, places: int, samples: int):
        """A `ContinuousDecoder` over `places` batch places (None when the engine's prefix store
        has fewer rows, or the config turns continuous batching off)."""
        store = getattr(self.engine, "store", None)
        if not self.config.continuous or store is None or store.rows < places:
            return None
        c = self.config
        return ContinuousDecoder(self.engine, places, samples, max_new_tokens=c.max_step_tokens,
                                 stop_token_ids=self.stop_ids, temperature=c.temperature,
                                 top_p=c.top_p, top_k=c.top_k)


@dataclasses.dataclass
class SearchStats:
    """Where a search's wall time went, in seconds, and what it did."""

    tree_ops: float = 0.0  # select, paths, expand, reset, fetching finished trees (device)
    generation: float = 0.0
    execution: float = 0.0
    grading: float = 0.0
    ppm: float = 0.0  # continuous batching: only the wait for scores computed beside decoding
    host: float = 0.0  # everything else: decoding, step parsing, bookkeeping
    wall: float = 0.0
    rollouts: int = 0
    expansions: int = 0  # node expansions (policy calls per problem)
    nodes: int = 0

    def table(self) -> str:
        parts = ("tree_ops", "generation", "execution", "grading", "ppm", "host")
        wall = max(self.wall, 1e-9)
        lines = [f"{name:<11} {getattr(self, name):8.3f} s {100 * getattr(self, name) / wall:5.1f}%"
                 for name in parts]
        total = (f"{'wall':<11} {self.wall:8.3f} s  {self.rollouts} rollouts, "
                 f"{self.expansions} expansions, {self.nodes} nodes")
        return "\n".join([*lines, total])


@dataclasses.dataclass
class _Slot:
    """A problem being searched, and the step tokens and text of each of its nodes (the device
    tree holds everything else)."""

    index: int
    problem: Problem
    prompt: list[int]
    tokens: list[list[int]] = dataclasses.field(default_factory=lambda: [[]])
    texts: list[str] = dataclasses.field(default_factory=lambda: [""])
    outputs: list[str] = dataclasses.field(default_factory=lambda: [""])
    rollouts: int = 0

    def add(self, x: _Expansion, b: int, j: int) -> None:
        """Takes candidate (b, j) of an expansion as the problem's next node."""
        self.tokens.append(x.ids[b, j])
        self.texts.append(x.texts[b, j])
        self.outputs.append(x.outputs[b, j] or "")

    def prefix(self, path: np.ndarray) -> list[int]:
        """The prompt and the step tokens of the path's nodes (int[D], NO_NODE past the path)."""
        return self.prompt + [t for n in path if n > tree_ops.ROOT for t in self.tokens[n]]


@dataclasses.dataclass
class _Expansion:
    """The K candidate steps of each of the B leaves one search step expands, by batch place and
    candidate slot: sampling fills it in, then execution, grading and the PPM. Every field is
    [B, K]; the ragged ones are object arrays, None where no candidate was kept."""

    ids: np.ndarray  # object: list[int], the step's tokens (with its output block once it ran)
    texts: np.ndarray  # object: str, the tokens' text as they follow the path
    kinds: np.ndarray  # object: fmt.StepKind
    outputs: np.ndarray  # object: str, what the program printed, or its error when it failed
    keep: np.ndarray  # bool, the candidate becomes a child
    failed: np.ndarray  # bool
    is_answer: np.ndarray  # bool
    answer_value: np.ndarray  # float32, an answer's reward or PPM score
    ppm_value: np.ndarray  # float32, an open node's PPM score

    @classmethod
    def empty(cls, width: int, k: int) -> _Expansion:
        def objects():
            return np.full((width, k), None, object)

        return cls(objects(), objects(), objects(), objects(),
                   *(np.zeros((width, k), bool) for _ in range(3)),
                   *(np.zeros((width, k), np.float32) for _ in range(2)))

    def kept(self, rows) -> list[tuple[int, int]]:
        """(b, j) of every kept candidate of batch places `rows`, in order."""
        return [(b, j) for b in rows for j in np.flatnonzero(self.keep[b])]

    def children(self) -> tree_ops.Children:
        return tree_ops.Children(keep=self.keep, failed=self.failed, is_answer=self.is_answer,
                                 answer_value=self.answer_value, ppm_value=self.ppm_value)


@dataclasses.dataclass
class _Pending:
    """Places whose samples stopped, waiting to be scored and expanded together: one expansion
    record, and their programs' executor calls (`result` gives every outcome in `runs` order,
    as `finish` reads a future)."""

    x: _Expansion
    group: list[int] = dataclasses.field(default_factory=list)
    runs: list = dataclasses.field(default_factory=list)
    futures: list = dataclasses.field(default_factory=list)

    def result(self) -> list:
        return [out for future in self.futures for out in future.result()]


class _Clock:
    def __init__(self, stats: SearchStats):
        self.stats, self.last = stats, time.perf_counter()

    def charge(self, field: str) -> None:
        now = time.perf_counter()
        setattr(self.stats, field, getattr(self.stats, field) + now - self.last)
        self.last = now


def _is_text(x) -> bool:
    return isinstance(x, str) or x is None


def _check(problems, config: SearchConfig, tokenizer, scorer, batch_size) -> list[Problem]:
    if isinstance(problems, (str, Problem)):
        raise TypeError("problems must be a sequence of Problem (or (question, answer) pairs); got "
                        f"one {type(problems).__name__}: {str(problems)[:60]!r}; wrap it in a list")
    out = []
    for i, p in enumerate(problems):
        if isinstance(p, Problem):
            out.append(p)
        elif isinstance(p, (tuple, list)) and 1 <= len(p) <= 2 and all(_is_text(x) for x in p):
            out.append(Problem(*p))
        else:
            raise TypeError(f"problem {i} must be a Problem or a (question, answer) pair of "
                            f"strings; got {type(p).__name__}: {str(p)[:60]!r}")
    problems = out
    if batch_size is not None:
        positive_int(batch_size, "batch_size")
    delimiters = len(tokenizer.continuation_ids(fmt.output_block("")))
    if delimiters > config.max_output_tokens:
        raise ValueError(f"the output block's delimiters take {delimiters} tokens with this "
                         f"tokenizer, more than max_output_tokens={config.max_output_tokens}; "
                         "raise max_output_tokens")
    if config.mode.graded:
        missing = [i for i, p in enumerate(problems) if p.answer is None]
        if missing:
            raise ValueError(f"mode {config.mode.value!r} grades answers against the reference, "
                             f"but problems {missing[:10]} have answer=None; give each Problem its "
                             "answer or use Mode.TEST")
    if config.mode.uses_ppm and scorer is None:
        raise ValueError(f"mode {config.mode.value!r} scores nodes with the PPM: pass scorer=")
    return problems


def run_search(problems: Sequence[Problem], policy: Policy, executor: Executor, tokenizer,
               config: SearchConfig, *, scorer: Scorer | None = None,
               grade: Callable[[str, str], bool] | None = None, batch_size: int | None = None,
               progress: bool | None = None, stats: SearchStats | None = None,
               seed_ids: Sequence[int] | None = None) -> list[SearchTree]:
    """Searches every problem (see the module docstring); returns their trees in order.

    Up to `batch_size` problems (default: all, at most 32) are searched at once; a finished
    problem's place goes to the next one. With `config.continuous` and a policy that offers a
    `ContinuousDecoder` (`EnginePolicy` over an engine with a prefix store of a row per place),
    each problem goes on to execution, the PPM and `expand` as soon as its own samples stop,
    while the others keep decoding, and its programs and PPM scores run during the next
    chunks (the scorer is then called from a thread of its own: it must not share the
    policy's engine, and it sets its own mesh). Otherwise the problems take one expansion each
    per step, and with `config.overlap` each step treats them in two halves, so the executor
    runs one half's programs while the policy samples the other's and the PPM scores the
    first. The trees are the same either way. grade(pred, ref) defaults to `is_equivalent`
    and runs in the calling thread; ref is the problem's answer, or the list of its
    `references` when it has several. Pass a `SearchStats` to learn where the time went.

    With `config.unsolved_rollouts` (graded modes), the problems no rollout solved are searched
    again, from scratch with that many rollouts and seed + 1, and the new trees replace theirs.

    A problem's samples do not depend on the batch it shares, so TERMINAL-mode trees are the
    same for any `batch_size`; the PPM's values can move in the last float bit with the shapes
    its forward is padded to, so PPM and TEST trees may differ where two Qs nearly tie.

    seed_ids: the number each problem's samples are seeded by (`expansion_seed`; default its
    position in `problems`). A process searching its share of a list passes the problems'
    positions in the whole list, so that its trees are those a search of the whole would grow.
    (The re-search of unsolved problems numbers them afresh.)
    """
    problems = _check(problems, config, tokenizer, scorer, batch_size)
    if not problems:
        return []
    seed_ids = list(range(len(problems))) if seed_ids is None else [int(i) for i in seed_ids]
    if len(seed_ids) != len(problems):
        raise ValueError(f"{len(seed_ids)} seed_ids for {len(problems)} problems; give one a "
                         "problem")
    if grade is None:
        from rstar_jax.steps.grading import is_equivalent as grade
    stats = stats if stats is not None else SearchStats()
    width = min(len(problems), int(batch_size or 32))
    search = _Search(problems, policy, executor, tokenizer, config, scorer, grade, stats, seed_ids)
    trees = search.run(width, progress)
    unsolved = [i for i, t in enumerate(trees) if not t.solved] if config.mode.graded else []
    if config.unsolved_rollouts and unsolved:
        # A new search, not more rollouts of the old tree: its seed differs, so its samples do. Its
        # trees keep the first search's width and at least its node capacity, so the policy's and
        # the tree's functions are not compiled again for new shapes.
        needs = dataclasses.replace(config, rollouts=config.unsolved_rollouts, capacity=None).nodes
        again = dataclasses.replace(config, rollouts=config.unsolved_rollouts, unsolved_rollouts=0,
                                    seed=(config.seed + 1) % 2**32,
                                    capacity=config.capacity or max(config.nodes, needs))
        search = _Search([problems[i] for i in unsolved], policy, executor, tokenizer, again,
                         scorer, grade, stats, range(len(unsolved)))
        redone = search.run(width, progress)
        for i, tree in zip(unsolved, redone):
            trees[i] = dataclasses.replace(tree, searches=2)
    return trees


class _Search:
    """The state of one `run_search` call."""

    def __init__(self, problems, policy, executor, tokenizer, config, scorer, grade, stats,
                 seed_ids):
        self.problems, self.policy, self.executor = problems, policy, executor
        self.tokenizer = tokenizer
        self.seed_ids = list(seed_ids)
        self.config, self.scorer, self.grade, self.stats = config, scorer, grade, stats
        self.clock = _Clock(stats)
        ids = tokenizer.step_token_ids
        self.end_of_code, self.end_of_output = ids[fmt.END_OF_CODE], ids[fmt.END_OF_OUTPUT]
        self.bar = None

    def run(self, width: int, progress: bool | None) -> list[SearchTree]:
        """Searches every problem, `width` at a time (places past the last problem stay empty)."""
        disable = None if progress is None else not progress  # None: shown on a terminal
        with tqdm.tqdm(total=len(self.problems) * self.config.rollouts, desc="search",
                       unit="rollout", leave=False, disable=disable) as self.bar:
            make = getattr(self.policy, "decoder", None)
            decoder = make(width, self.config.candidates) if make is not None else None
            return self._run(width) if decoder is None else self._run_continuous(width, decoder)

    def _fill(self, slots, queue) -> np.ndarray:
        """Gives every empty place the next problem; returns which places got one."""
        fresh = np.zeros((len(slots),), bool)
        for b in range(len(slots)):
            if slots[b] is None and queue:
                i = queue.popleft()
                prompt = self.tokenizer.prompt_ids(self.problems[i].question, self.config.bootstrap)
                slots[b] = _Slot(i, self.problems[i], prompt)
                fresh[b] = True
        return fresh

    def _select(self, tree, slots, rows: np.ndarray | None, results):
        """Selects the next leaf of the problems at places `rows` (bool, None: all), records the
        problems whose search ended and frees their places. Returns (tree, leaf, the places
        with a leaf to expand, whether any place was freed)."""
        tree, leaf = tree_ops.select(tree, rows, rollouts=self.config.rollouts,
                                     c_uct=self.config.c_uct)
        leaf, counts = jax.device_get((leaf, tree.rollouts))
        self.clock.charge("tree_ops")
        asked = [b for b, s in enumerate(slots) if s is not None and (rows is None or rows[b])]
        for b in asked:
            self.bar.update(int(counts[b]) - slots[b].rollouts)
            slots[b].rollouts = int(counts[b])
        done = [b for b in asked if leaf[b] == tree_ops.NO_NODE]
        if done:
            rows = tree_ops.fetch(tree, np.array(done))
            self.clock.charge("tree_ops")
            for b, row in zip(done, rows):
                results[slots[b].index] = result = _result(slots[b], row)
                self.stats.rollouts += result.rollouts
                self.stats.nodes += result.num_nodes
                slots[b] = None
        return tree, leaf, [b for b in asked if leaf[b] != tree_ops.NO_NODE], bool(done)

    def _run_continuous(self, width: int, decoder) -> list[SearchTree]:
        """`_run` with continuous batching: each problem's expansion goes on to execution as
        soon as its own K samples stop, while the decoder goes on with the other problems';
        its programs run while the next chunks decode. Problems are graded, scored by the PPM
        and expanded in groups of at least half the places (all that are left when nothing
        else would decode), so the PPM's calls stay as large as the lockstep search's. A
        group's PPM scores are computed in a thread of their own while the decoder goes on with
        the other places (on CPU the two computations share the cores better than either alone
        does), and the group is expanded when the next group is full or nothing else decodes:
        points fixed by the samples, not by timing, so the trees are the same every run."""
        c, clock, k = self.config, self.clock, self.config.candidates
        start = time.perf_counter()
        results: list[SearchTree | None] = [None] * len(self.problems)
        tree = tree_ops.init_tree(width, c.nodes, k)
        queue = collections.deque(range(len(self.problems)))
        slots: list[_Slot | None] = [None] * width
        ready = np.zeros((width,), bool)  # places to select a leaf for
        leaves = np.full((width,), tree_ops.NO_NODE, np.int32)  # the leaf each place expands
        path = tree_ops.Path(np.full((width, c.max_depth), tree_ops.NO_NODE, np.int32),
                             np.zeros((width, c.max_depth), bool), np.zeros((width,), np.int32),
                             np.zeros((width,), np.int32))
        prefixes: dict[int, list[int]] = {}
        # the places whose samples stopped, their expansion, and their programs running
        pending = _Pending(_Expansion.empty(width, k))
        least = max(1, width // 2)
        # (group, future): a group whose PPM scores run until the next group gathers or
        # nothing else decodes
        scoring = None
        with (concurrent.futures.ThreadPoolExecutor(1, "rstar-search-exec") as pool,
              concurrent.futures.ThreadPoolExecutor(1, "rstar-search-ppm") as ppm):
            while True:
                fresh = self._fill(slots, queue)
                clock.charge("host")
                if fresh.any():
                    tree = tree_ops.reset(tree, fresh)
                    ready |= fresh
                if ready.any():
                    tree, leaf, go, freed = self._select(tree, slots, ready, results)
                    ready[:] = False
                    if go:
                        self._admit(tree, decoder, slots, leaf, go, leaves, path, prefixes)
                    if freed and queue:
                        continue  # start the freed places' next problems
                if not pending.group and scoring is None and not decoder.busy:
                    break
                finished = decoder.step() if decoder.busy else {}
                clock.charge("generation")
                full = len(pending.group) >= least
                if scoring is not None and (full or not decoder.busy):
                    tree = self._complete(tree, slots, leaves, *scoring)
                    ready[scoring[0].group] = True
                    scoring = None
                # a group smaller than `least` is scored only when nothing else would decode
                if scoring is None and pending.group and (full
                                                          or not (decoder.busy or ready.any())):
                    # results and grades now; the PPM runs while the decoder goes on, and the
                    # group is expanded once the next group is full or nothing else decodes
                    # (fixed points of the loop: the same trees every run)
                    which = self.finish(pending.x, slots, path, prefixes, sorted(pending.group),
                                        pending.runs, pending, score=False)
                    if which:
                        heads = {b: prefixes[b] for b, _ in which}
                        scoring = (pending, ppm.submit(_score, self.scorer, pending.x, which,
                                                       heads))
                    else:  # nothing for the PPM (TERMINAL mode): expanded at once
                        tree = self._complete(tree, slots, leaves, pending, None)
                        ready[pending.group] = True
                    pending = _Pending(_Expansion.empty(width, k))
                if finished:
                    group = sorted(finished)
                    self.take(pending.x, group, np.concatenate([finished[b][0] for b in group]),
                              np.concatenate([finished[b][1] for b in group]))
                    runs = self.programs(pending.x, slots, path, group)
                    if runs:
                        pending.futures.append(pool.submit(self.executor.run,
                                                           [p for _, p in runs]))
                    pending.group += group
                    pending.runs += runs
                    clock.charge("host")
        self.stats.wall += time.perf_counter() - start
        return results

    def _admit(self, tree, decoder, slots, leaf, go, leaves, path, prefixes) -> None:
        """Hands the leaves of places `go` to the decoder, with their paths and prefixes."""
        c = self.config
        mask = np.full_like(leaves, tree_ops.NO_NODE)
        mask[go] = leaf[go]
        found = jax.device_get(tree_ops.paths(tree, mask, max_depth=c.max_depth))
        self.clock.charge("tree_ops")
        for b in go:
            leaves[b] = leaf[b]
            for name in ("nodes", "valid", "depth", "errors"):
                getattr(path, name)[b] = getattr(found, name)[b]
            prefixes[b] = slots[b].prefix(path.nodes[b])
        seeds = [expansion_seed(c.seed, self.seed_ids[slots[b].index], int(leaf[b])) for b in go]
        self.clock.charge("host")
        decoder.admit(go, [prefixes[b] for b in go], seeds)
        self.clock.charge("generation")

    def _complete(self, tree, slots, leaves, pending: _Pending, scores):
        """Ends the expansion of the pending places, whose results and grades `finish` read:
        waits for their PPM scores (`scores`, a future; None: nothing scored), then `expand`."""
        x, group = pending.x, sorted(pending.group)
        if scores is not None:
            scores.result()
            self.clock.charge("ppm")
        self.stats.expansions += len(group)
        for b, j in x.kept(group):  # the device numbers the new nodes in the same order
            slots[b].add(x, b, j)
        leaf = np.full_like(leaves, tree_ops.NO_NODE)
        leaf[group] = leaves[group]
        self.clock.charge("host")
        c = self.config
        tree = tree_ops.expand(tree, leaf, x.children(), mode=c.mode,
                               errors_threshold=c.errors_threshold, max_depth=c.max_depth)
        jax.block_until_ready(tree)
        self.clock.charge("tree_ops")
        return tree

    def _run(self, width: int) -> list[SearchTree]:
        c, stats, clock = self.config, self.stats, self.clock
        start = time.perf_counter()
        results: list[SearchTree | None] = [None] * len(self.problems)
        tree = tree_ops.init_tree(width, c.nodes, c.candidates)
        queue = collections.deque(range(len(self.problems)))
        slots: list[_Slot | None] = [None] * width
        with concurrent.futures.ThreadPoolExecutor(1, "rstar-search-exec") as pool:
            while True:
                fresh = self._fill(slots, queue)
                if all(s is None for s in slots):
                    break
                clock.charge("host")
                if fresh.any():
                    tree = tree_ops.reset(tree, fresh)
                tree, leaf, active, freed = self._select(tree, slots, None, results)
                if freed and queue:
                    continue  # refill the freed places before expanding
                if active:
                    tree = self.step(tree, slots, leaf, active, pool)
        stats.wall += time.perf_counter() - start
        return results

    def step(self, tree, slots, leaf, active, pool):
        """Expands the leaves of the `active` problems."""
        c, clock = self.config, self.clock
        path = jax.device_get(tree_ops.paths(tree, leaf, max_depth=c.max_depth))
        clock.charge("tree_ops")
        prefixes = {b: slots[b].prefix(path.nodes[b]) for b in active}
        x = _Expansion.empty(len(slots), c.candidates)
        half = (len(active) + 1) // 2
        groups = [active[:half], active[half:]] if c.overlap and len(active) > 1 else [active]
        pending = None
        for group in groups:
            self.propose(x, slots, leaf, group, prefixes)
            runs = self.programs(x, slots, path, group)
            future = pool.submit(self.executor.run, [p for _, p in runs]) if runs else None
            clock.charge("host")
            if pending is not None:
                self.finish(x, slots, path, prefixes, *pending)
            pending = (group, runs, future)
        self.finish(x, slots, path, prefixes, *pending)
        self.stats.expansions += len(active)
        for b, j in x.kept(active):  # the device numbers the new nodes in the same order
            slots[b].add(x, b, j)
        clock.charge("host")
        tree = tree_ops.expand(tree, leaf, x.children(), mode=c.mode,
                               errors_threshold=c.errors_threshold, max_depth=c.max_depth)
        jax.block_until_ready(tree)
        clock.charge("tree_ops")
        return tree

    def propose(self, x: _Expansion, slots, leaf, group, prefixes) -> None:
        """Samples K steps for each leaf of `group`; keeps the first of equal ones and the first
        answer (module docstring, expand step 2)."""
        c, k = self.config, self.config.candidates
        seeds = [expansion_seed(c.seed, self.seed_ids[slots[b].index], int(leaf[b])) for b in group]
        self.clock.charge("host")
        tokens, lengths = self.policy.sample([prefixes[b] for b in group], k, seeds)
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        self.clock.charge("generation")
        self.take(x, group, tokens, lengths)

    def take(self, x: _Expansion, group, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Fills in the samples of `group` (row i * K + j: sample j of group[i]'s leaf)."""
        c, k = self.config, self.config.candidates
        if lengths.shape != (len(group) * k,) or (lengths > c.max_step_tokens).any():
            raise ValueError(f"the policy must return {len(group)} x {k} samples of at most "
                             f"max_step_tokens={c.max_step_tokens} tokens; got lengths of shape "
                             f"{lengths.shape}, longest {int(lengths.max(initial=0))}")
        for i, b in enumerate(group):
            answered, seen = False, set()
            for j in range(k):
                row = tokens[i * k + j, :lengths[i * k + j]].tolist()
                wrote_output = row and row[-1] == self.end_of_output and self.end_of_code in row
                if c.bootstrap and wrote_output:
                    # drop an output block the policy wrote itself
                    row = row[:len(row) - row[::-1].index(self.end_of_code)]
                if tuple(row) in seen:
                    continue
                seen.add(tuple(row))
                text = self.tokenizer.continuation_text(row)
                kind = fmt.classify_step(text)
                if kind is fmt.StepKind.ANSWER:
                    if answered:
                        continue
                    answered = True
                x.ids[b, j], x.texts[b, j], x.kinds[b, j] = row, text, kind
                x.keep[b, j], x.failed[b, j] = True, not kind.complete
                x.is_answer[b, j] = kind is fmt.StepKind.ANSWER

    def programs(self, x: _Expansion, slots, path, group) -> list[tuple[tuple[int, int], str]]:
        """The program of every complete code candidate of `group`: its valid ancestors' code and
        its own, by (b, j)."""
        runs = []
        for b, j in x.kept(group):
            if x.is_answer[b, j] or x.failed[b, j]:
                continue
            steps = [slots[b].texts[n] for n, ok in zip(path.nodes[b], path.valid[b]) if ok]
            runs.append(((b, j), fmt.assemble_program([*steps, x.texts[b, j]])))
        return runs

    def finish(self, x: _Expansion, slots, path, prefixes, group, runs, future, *,
               score: bool = True) -> list[tuple[int, int]]:
        """Reads the executor's results, grades the answers and scores with the PPM (without
        `score`, leaves that to the caller). Returns the candidates (b, j) the PPM scores."""
        c, clock = self.config, self.clock
        outcomes = list(future.result()) if future is not None else []
        clock.charge("execution")
        if len(outcomes) != len(runs):
            raise RuntimeError(f"the executor returned {len(outcomes)} results for {len(runs)} "
                               "programs")
        for ((b, j), _), out in zip(runs, outcomes):
            x.failed[b, j] = not out.ok
            x.outputs[b, j] = out.stdout if out.ok else out.error
            if out.ok and x.kinds[b, j] is fmt.StepKind.LAST_CODE:
                block = output_block_ids(self.tokenizer, out.stdout, c.max_output_tokens)
                x.ids[b, j] = x.ids[b, j] + block
                x.texts[b, j] = self.tokenizer.continuation_text(x.ids[b, j])
        clock.charge("host")
        if c.mode.graded:
            for b, j in x.kept(group):
                if x.is_answer[b, j]:
                    pred = fmt.extract_answer(x.texts[b, j])
                    refs = slots[b].problem.references  # several for a few MATH problems
                    ref = refs[0] if len(refs) == 1 else list(refs)
                    ok = pred is not None and self.grade(pred, ref)
                    x.answer_value[b, j] = 1.0 if ok else -1.0
            clock.charge("grading")
        if c.mode.uses_ppm:
            rows = np.asarray(group)
            status = tree_ops.child_status(
                path.depth[rows, None], path.errors[rows, None], x.failed[rows], x.is_answer[rows],
                mode=c.mode, errors_threshold=c.errors_threshold, max_depth=c.max_depth)
            scored = dict(zip(group, status.scored))
            which = [(b, j) for b, j in x.kept(group) if scored[b][j]]
            clock.charge("host")
            if score:
                _score(self.scorer, x, which, prefixes)
                clock.charge("ppm")
            return which
        return []


def _score(scorer: Scorer, x: _Expansion, which: list[tuple[int, int]],
           prefixes: dict[int, list[int]]) -> None:
    """Sets the PPM value of candidates `which` (b, j); one scorer call for them all. A scorer
    that can (`ValueScorer.score_children`) runs each shared prefix once."""
    if not which:
        return
    if hasattr(scorer, "score_children"):
        groups: dict[int, list[int]] = {}
        for b, j in which:
            groups.setdefault(b, []).append(j)
        children = [[x.ids[b, j] for j in js] for b, js in groups.items()]
        values = scorer.score_children([prefixes[b] for b in groups], children)
        values = [np.asarray(v, np.float32).reshape(-1) for v in values]
        counts = ([len(v) for v in values], [len(js) for js in groups.values()])
        which = [(b, j) for b, js in groups.items() for j in js]
        values = np.concatenate(values) if counts[0] == counts[1] else None
    else:
        values = scorer.score([prefixes[b] + x.ids[b, j] for b, j in which])
        values = np.asarray(values, np.float32).reshape(-1)
        counts = (len(values), len(which))
    if counts[0] != counts[1]:
        raise RuntimeError(f"the scorer returned {counts[0]} values for {counts[1]} sequences")
    for (b, j), v in zip(which, values):
        if x.is_answer[b, j]:
            x.answer_value[b, j] = v
        else:
            x.ppm_value[b, j] = v


def _result(slot: _Slot, row: dict[str, np.ndarray]) -> SearchTree:
    """One problem's tree from its arrays (`tree_ops.fetch`) and the host's steps."""
    n = int(row["num_nodes"])
    if len(slot.tokens) != n:
        raise AssertionError(f"problem {slot.index}: the device tree has {n} nodes, the host "
                             f"{len(slot.tokens)}")
    nodes = {name: row[name][:n] for name in NODE_FIELDS}
    tree = SearchTree(problem=slot.problem, prompt_ids=slot.prompt, **nodes, tokens=slot.tokens,
                      texts=slot.texts, outputs=slot.outputs, rollouts=int(row["rollouts"]),
                      overflow=bool(row["overflow"]), answer=None, answer_node=-1)
    answers = np.flatnonzero(tree.is_answer)
    if answers.size:
        tree.answer_node = int(answers[np.argmax(tree.q[answers])])  # the first of equal Qs
        tree.answer = fmt.extract_answer(tree.texts[tree.answer_node])
    return tree
