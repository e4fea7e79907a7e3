"""Continuous batching: decoding in which no row waits for the slowest one.

`Engine.generate` decodes one batch in lockstep: a call ends when its longest sample does, and
a row that stopped early computes padding until then. In a search most samples are short and a
few run to the step budget, so most decode steps of a call are spent on stopped rows.

A `ContinuousDecoder` instead keeps `places` x `samples` sample slots on device. A search
`admit`s a place's prompt when its problem has a leaf to expand; every `step` then decodes a
chunk of a few tokens for the slots still running, and returns the places whose samples have
all stopped. Their problems go on to execution and scoring while the other places keep
decoding, and come back with their next leaf. A chunk runs only the slots still running,
packed into as few rows as the next lane bucket holds; attention reads each place's prefix once
for a group of C cells, and a place with more than C slots running takes several groups
(`cell_grid` picks C). A chunk ends after `chunk` steps, or once at most half its lanes are
running (when it has more than the smallest bucket's 8): the rest then fit a bucket half the
size.

Reuse of what was computed before:
- a prompt goes through the engine's prefix store (`Engine(prefix_rows >= places)`, see
  `PrefixStore`) and runs only what no prompt the store holds shares; a running place's row is
  pinned until its samples are returned, as its chunks read the prompt from there;
- each slot keeps its sample's keys and values after the place's samples are returned; when
  the place's next prompt continues the row's prompt with one of those samples (the search
  expands a child it just made), they are copied into the row instead of computed again.

Samples equal `Engine.generate`'s for the same prompt, seed and settings (row b * samples + s
there is slot s here), up to float rounding: the same PRNG key per slot and token, the same
stopping rule.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rstar_jax.engine.generation import (
    _STOP_SLOTS,
    _choose,
    _slot_keys,
    Engine,
    _common_prefix,
    _count,
    _pow2,
    _stop_ids,
    decode_bucket,
    extend_prefix,
    prompt_bucket,
)
from rstar_jax.models.cache import ForkCache, KVCache, LaneCache

_MIN_LANES = 8
_GROUP_COST = 8  # cells; measured on a CPU with the tiny model, prompts of 384 positions


def lane_bucket(n: int) -> int:
    """Rows a chunk runs for n running slots: a power of two, at least 8. (Finer buckets waste
    fewer rows but compile more shapes, and each compiled shape holds memory maps of its own.)"""
    return _pow2(n, _MIN_LANES)


def cell_grid(running: np.ndarray, samples: int) -> tuple[int, np.ndarray]:
    """How a chunk's attention grid holds its places' running slots: C cells a group (a power
    of two below `samples`, or `samples`), and for each place the ceil(n / C) groups its n
    slots take; the groups are padded to a power of two. A group costs about as much as
    `_GROUP_COST` cells (each step reads its place's prompt for it), so C is the one of least
    G x (C + _GROUP_COST), among those needing no more groups than C = `samples` (a group a
    place, the grid the dry run compiles for all places) would. One C for all places pads
    every place to the busiest one's slots; C = 1 reads a place's prompt once for each of its
    slots."""
    best, most = None, _pow2(running.size)
    for c in sorted({1 << i for i in range(samples.bit_length())} | {samples}):
        taken = -(-running // c)
        groups = _pow2(int(taken.sum()))
        cost = (groups * (c + _GROUP_COST), groups)
        if groups <= most and (best is None or cost < best[0]):
            best = (cost, c, taken)
    return best[1], best[2]


@functools.partial(jax.jit, static_argnames=("graphdef", "samples", "width", "vocab_limit",
                                             "pad_id"),
                   donate_argnames=("store", "state"))
def _admit(graphdef, weights, store, held, state, places, rows, ids, starts, lengths,
           rope_lengths, seeds, temperature, top_k, top_p, stop_ids, max_new, *, samples, width,
           vocab_limit, pad_id):
    """Prefills each admitted place's prompt into its store row rows[a] (`extend_prefix`) and
    chooses token 0 of its samples. places: int32[A] (-1: padding); state: (tokens [S, T],
    lengths [S], done [S], last [S]), donated like the store. Returns (store, state)."""
    model = nnx.merge(graphdef, weights)
    store, _, _, hidden = extend_prefix(model, store, held, rows, ids, starts, lengths,
                                        rope_lengths, width)
    logits = model.logits(jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1))[:, 0]
    tokens, out_lengths, done, last = state
    size, length = tokens.shape
    slots = (jnp.maximum(places, 0)[:, None] * samples + jnp.arange(samples)).reshape(-1)
    keys = _slot_keys(jnp.repeat(seeds, samples), slots, samples)
    first = _choose(jnp.repeat(logits, samples, axis=0), keys, jnp.zeros_like(slots),
                    temperature, top_k, top_p, vocab_limit)
    at = jnp.where(jnp.repeat(places, samples) >= 0, slots, size)  # padding places write nothing
    row = jnp.full((slots.shape[0], length), pad_id, jnp.int32).at[:, 0].set(first)
    stopped = jnp.any(first[:, None] == stop_ids[None, :], axis=-1) | (max_new <= 1)
    state = (tokens.at[at].set(row, mode="drop"), out_lengths.at[at].set(1, mode="drop"),
             done.at[at].set(stopped, mode="drop"), last.at[at].set(first, mode="drop"))
    return store, state


@functools.partial(jax.jit, static_argnames=("graphdef", "samples", "per", "width",
                                             "vocab_limit", "pad_id"),
                   donate_argnames=("buffers", "state"))
def _chunk(graphdef, weights, store, buffers, state, group_rows, starts, lanes, cells,
           rope_lengths, seeds, temperature, top_k, top_p, stop_ids, max_new, steps, *, samples,
           per, width, vocab_limit, pad_id):
    """Up to `steps` decode steps of the running slots `lanes` (int32[R], -1: padding lane).

    Attention reads G groups: their places' store rows group_rows' first `width` positions
    (starts[g] of them real) once for all the group's lanes, in `per` cells a group (lane r is
    cell cells[r] of the G x per grid, see `LaneCache`; a place may take several groups, see
    `cell_grid`), and each lane's own keys and values, taken from `buffers` (per layer
    [S, K, T, D], donated) for the chunk and put back after it.
    Everything but attention to the places runs for the lanes only. Returns (buffers, state,
    steps run)."""
    model = nnx.merge(graphdef, weights)
    tokens, lengths, done, last = state
    size, length = tokens.shape
    live = lanes >= 0
    safe = jnp.maximum(lanes, 0)
    keys = _slot_keys(seeds, safe, samples)
    own = tuple((bk[safe], bv[safe]) for bk, bv in buffers)
    own, buffers = jax.lax.optimization_barrier((own, buffers))  # see extend_prefix
    at_rows = jnp.maximum(group_rows, 0)
    lane_starts = jnp.take(starts, cells // per, mode="clip")
    cache = KVCache(tuple(LaneCache(ForkCache(k[at_rows, :, :, :width], v[at_rows, :, :width],
                                              starts, bk, bv), cells, lane_starts, per)
                          for (k, v), (bk, bv) in zip(store, own)))
    at_lane = jnp.arange(lanes.shape[0])

    def body(carry):
        i, t, token, cache, row_tokens, finished = carry
        # a finished lane writes past its buffer's end, which is dropped
        at = lane_starts + jnp.where(finished, length, t - 1)
        hidden, cache = model.hidden_states(token[:, None], at[:, None], cache=cache,
                                            rope_lengths=rope_lengths)
        new = _choose(model.logits(hidden)[:, 0], keys, t, temperature, top_k, top_p,
                      vocab_limit)
        new = jnp.where(finished, pad_id, new)
        row_tokens = row_tokens.at[at_lane, jnp.where(finished, length, t)].set(new, mode="drop")
        stopped = jnp.any(new[:, None] == stop_ids[None, :], axis=-1) | (t + 1 >= max_new)
        return (i + 1, jnp.where(finished, t, t + 1), jnp.where(finished, token, new), cache,
                row_tokens, finished | stopped)

    # Once half the lanes have stopped, the running ones fit the next smaller lane bucket: the
    # chunk returns, and the next one runs them at half the cost a step.
    keep_going = lanes.shape[0] // 2 if lanes.shape[0] > _MIN_LANES else 0

    def cond(carry):
        return (carry[0] < steps) & (jnp.sum(~carry[-1]) > keep_going)

    start = (jnp.int32(0), lengths[safe], last[safe], cache, tokens[safe], done[safe] | ~live)
    start, state = jax.lax.optimization_barrier((start, state))
    tokens, lengths, done, last = state
    ran, t, token, cache, row_tokens, finished = jax.lax.while_loop(cond, body, start)
    at = jnp.where(live, lanes, size)
    buffers = tuple((bk.at[at].set(layer.fork.keys, mode="drop"),
                     bv.at[at].set(layer.fork.values, mode="drop"))
                    for (bk, bv), layer in zip(buffers, cache.layers))
    state = (tokens.at[at].set(row_tokens, mode="drop"), lengths.at[at].set(t, mode="drop"),
             done.at[at].set(finished, mode="drop"), last.at[at].set(token, mode="drop"))
    return buffers, state, ran


@functools.partial(jax.jit, donate_argnames=("store",))
def _carry(store, buffers, rows, slots, starts, counts):
    """Copies the keys and values of slots[a]'s first counts[a] tokens into store row rows[a]
    from position starts[a] on (rows past the store's end: padding, dropped)."""
    capacity, length = store[0][0].shape[-1], buffers[0][0].shape[2]
    span = jnp.arange(length)
    at = jnp.where(span < counts[:, None], starts[:, None] + span, capacity)  # [A, T]
    safe = jnp.minimum(slots, buffers[0][0].shape[0] - 1)
    return tuple((k.at[rows[:, None], :, :, at].set(bk[safe].transpose(0, 2, 1, 3), mode="drop"),
                  v.at[rows[:, None], :, at].set(bv[safe].transpose(0, 2, 1, 3), mode="drop"))
                 for (k, v), (bk, bv) in zip(store, buffers))


class ContinuousDecoder:
    """`samples` continuations of each of up to `places` prompts at a time, decoded in chunks
    (see the module docstring). One per search; the engine's prefix store holds the places'
    prompts, so it needs `Engine(prefix_rows >= places)`.

    `admit(places, prompts, seeds)` starts places; `step()` decodes one chunk and returns
    `{place: (tokens int32[samples, max_new_tokens], lengths int32[samples])}` for every place
    whose samples have all stopped (a sample keeps its stop token, pad_id after it). A place is
    admitted again only after it was returned.
    """

    def __init__(self, engine: Engine, places: int, samples: int, *, max_new_tokens: int,
                 stop_token_ids: Sequence[int] = (), temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, chunk: int = 8):
        self.places, self.samples = _count("places", places), _count("samples", samples)
        self.max_new, self.chunk = _count("max_new_tokens", max_new_tokens), _count("chunk", chunk)
        if engine.store.rows < places:
            raise ValueError(f"a continuous decoder of {places} places needs an engine with a "
                             f"prefix store of as many rows; got prefix_rows="
                             f"{engine.store.rows}: build Engine(prefix_rows={places})")
        if not (math.isfinite(temperature) and temperature >= 0 and 0 < top_p <= 1
                and top_k >= 0):
            raise ValueError(f"invalid sampling settings: temperature={temperature!r} (finite, "
                             f">= 0), top_p={top_p!r} (in (0, 1]), top_k={top_k!r} (>= 0)")
        self.engine, self.store = engine, engine.store
        self.settings = (np.float32(temperature), np.int32(min(top_k, engine.config.vocab_size)),
                         np.float32(top_p))
        stops = _stop_ids(stop_token_ids, engine.config.vocab_size)
        self.stop_ids = np.full((_STOP_SLOTS * max(1, -(-len(stops) // _STOP_SLOTS)),), -1,
                                np.int32)
        self.stop_ids[:len(stops)] = stops
        size, length = places * samples, decode_bucket(max_new_tokens)
        with self._mesh():
            # the engine's decode buffers when they have this shape (a generate call of as
            # many rows): one set of buffers, not two
            self._buffers = engine._take_buffers(size, length)
            self._state = (jnp.full((size, length), engine.pad_id, jnp.int32),
                           jnp.zeros((size,), jnp.int32), jnp.ones((size,), bool),
                           jnp.zeros((size,), jnp.int32))
        self.prefix_lengths = np.zeros((places,), np.int32)
        self.rows = np.full((places,), -1, np.int32)  # each place's store row, its last prompt
        self._prompts: dict[int, np.ndarray] = {}
        self.seeds = np.zeros((places,), np.uint32)
        self.running: set[int] = set()
        self._done = np.ones((size,), bool)
        self._lengths = np.zeros((size,), np.int64)  # each slot's sampled tokens, on the host
        # the tokens of each returned place's samples whose keys and values its slots still hold
        self._kept: dict[int, list[np.ndarray]] = {}

    def _mesh(self):
        mesh = self.engine.mesh
        return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()

    @property
    def busy(self) -> bool:
        """Whether any admitted place has not been returned."""
        return bool(self.running)

    def admit(self, places: Sequence[int], prompts: Sequence[Sequence[int]],
              seeds: Sequence[int]) -> None:
        """Starts sampling each place's prompt with its seed (in [0, 2**32))."""
        places = [int(p) for p in places]
        prompts = [np.asarray(p, np.int64) for p in prompts]
        if not places:
            return
        if len(prompts) != len(places) or len(seeds) != len(places):
            raise ValueError(f"admit needs one prompt and one seed a place; got {len(places)} "
                             f"places, {len(prompts)} prompts, {len(seeds)} seeds")
        bad = [p for p in places if not 0 <= p < self.places or p in self.running]
        if bad or len(set(places)) != len(places):
            raise ValueError(f"places must be distinct, in [0, {self.places}) and not running; "
                             f"got {places} with {sorted(self.running)} running")
        vocab = self.engine.config.vocab_size
        for p in prompts:
            if p.ndim != 1 or p.size == 0 or p.min() < 0 or p.max() >= vocab:
                raise ValueError(f"a prompt must be a non-empty list of token ids in [0, {vocab})"
                                 f"; got {p[:8].tolist()}... of shape {p.shape}")
        longest = max(len(p) for p in prompts)
        if longest + self.max_new > self.store.length:
            raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens={self.max_new} "
                             f"does not fit the prefix store's {self.store.length} positions")
        with self._mesh():
            self._carry_samples(places, prompts)
            self._prefill(places, prompts, np.asarray(seeds, np.uint32))
            # a sample whose first token stops it is done: no chunk runs its lane
            done = np.array(jax.device_get(self._state[2]))
        for p, prompt, seed in zip(places, prompts, seeds):
            self.running.add(p)
            self._prompts[p] = prompt
            self.prefix_lengths[p], self.seeds[p] = len(prompt), seed
            self._kept.pop(p, None)
            slots = slice(p * self.samples, (p + 1) * self.samples)
            self._done[slots] = done[slots]
            self._lengths[slots] = 1

    def _pinned(self) -> list[int]:
        """The store rows of running places: their chunks read them."""
        return [int(self.rows[p]) for p in self.running]

    def _carry_samples(self, places, prompts) -> None:
        """Copies into a place's store row the keys and values of the sample its new prompt
        continues the place's last prompt with (the longest such, when several do), while the
        row still holds that prompt."""
        rows, slots, starts, counts, held = [], [], [], [], []
        pinned = set(self._pinned())
        for p, prompt in zip(places, prompts):
            # a row two places hold (the same prompt twice) takes one place's sample
            row, last = int(self.rows[p]), self._prompts.get(p)
            if p not in self._kept or row < 0 or row in pinned or row in rows or \
                    not np.array_equal(self.store.held[row], last) or \
                    _common_prefix(last, prompt) < len(last):
                continue
            rest = prompt[len(last):-1]  # the prompt's last token always runs
            match = [_common_prefix(kept, rest) for kept in self._kept[p]]
            j = int(np.argmax(match))
            rope = len(prompt) + self.max_new
            if match[j] and self.store.regimes[row] == self.store.regime(rope):
                rows.append(row), slots.append(p * self.samples + j)
                starts.append(len(last)), counts.append(match[j])
                held.append((prompt[:len(last) + match[j]], rope))
        if not rows:
            return
        pad = _pow2(len(rows)) - len(rows)
        arrays = _carry(self.store.take(), self._buffers,
                        *(np.array(x + [fill] * pad, np.int32)
                          for x, fill in ((rows, self.store.rows), (slots, 0), (starts, 0),
                                          (counts, 0))))
        self.store.keep(arrays, rows, [h for h, _ in held], rope_lengths=[n for _, n in held])

    def _prefill(self, places, prompts, seeds) -> None:
        engine, store = self.engine, self.store
        rope = [len(p) + self.max_new for p in prompts]
        batch = _pow2(len(places))
        pad = batch - len(places)
        slots = np.array(places + [-1] * pad, np.int32)
        rope_lengths = np.array(rope + [1] * pad, np.int32)

        def call(arrays, held, plan):
            return _admit(
                engine.graphdef, engine.state, arrays, held, self._state, slots, plan.rows,
                plan.ids, plan.starts, plan.lengths, rope_lengths,
                np.concatenate([seeds, np.zeros((pad,), np.uint32)]), *self.settings,
                self.stop_ids, np.int32(self.max_new), samples=self.samples, width=plan.width,
                vocab_limit=engine.vocab_size, pad_id=engine.pad_id)

        plan, self._state = store.run(prompts, batch, engine.pad_id, call, rope_lengths=rope,
                                      pinned=self._pinned(), keep_all=True)
        self.rows[places] = plan.rows[:len(places)]
        engine.counts.prompt_tokens += sum(len(p) for p in prompts)
        engine.counts.prefill_tokens += plan.computed

    def step(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Decodes one chunk; returns the places whose samples have all stopped (see the class
        docstring)."""
        lanes = np.flatnonzero(~self._done)
        if lanes.size:
            self._decode(lanes)
        return self._collect()

    def _decode(self, lanes: np.ndarray) -> None:
        engine, k = self.engine, self.samples
        places, first, running = np.unique(lanes // k, return_index=True, return_counts=True)
        per, taken = cell_grid(running, k)
        # a place of n running slots takes ceil(n / per) groups of `per` cells; its slots fill
        # them in order. Padding groups read place 0's row and hold no lane.
        used = int(taken.sum())
        groups = np.zeros((_pow2(used),), np.int64)
        groups[:used] = np.repeat(places, taken)
        base = np.repeat(np.cumsum(taken) - taken, running)  # each lane's place's first group
        rank = np.arange(lanes.size) - np.repeat(first, running)
        padded = np.full((lane_bucket(lanes.size),), -1, np.int32)
        padded[:lanes.size] = lanes
        cells = np.full(padded.shape, groups.size * per, np.int32)  # padding: past the grid
        cells[:lanes.size] = (base + rank // per) * per + rank % per
        owner = np.maximum(padded, 0) // k
        width = min(self.store.length, prompt_bucket(int(self.prefix_lengths[places].max())))
        with self._mesh():
            self._buffers, self._state, ran = _chunk(
                engine.graphdef, engine.state, self.store.arrays(), self._buffers, self._state,
                self.rows[groups], self.prefix_lengths[groups], padded, cells,
                self.prefix_lengths[owner] + np.int32(self.max_new), self.seeds[owner],
                *self.settings, self.stop_ids, np.int32(self.max_new), np.int32(self.chunk),
                samples=k, per=per, width=width, vocab_limit=engine.vocab_size,
                pad_id=engine.pad_id)
            done, lengths = jax.device_get((self._state[2], self._state[1]))
            self._done, lengths = np.array(done), lengths.astype(np.int64)
        engine.counts.calls += 1
        engine.counts.decode_steps += int(ran) * lanes.size
        # each step reads `per` cells of every group over `width` positions; a lane needs its
        # place's prompt for each token it sampled
        engine.counts.prefix_reads += int(ran) * groups.size * per * width
        engine.counts.prefix_needed += int((lengths[lanes] - self._lengths[lanes])
                                           @ self.prefix_lengths[lanes // k].astype(np.int64))
        self._lengths = lengths

    def _collect(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        k = self.samples
        ended = [p for p in sorted(self.running) if self._done[p * k:(p + 1) * k].all()]
        if not ended:
            return {}
        tokens, lengths = jax.device_get(self._state[:2])
        out = {}
        for p in ended:
            rows = slice(p * k, (p + 1) * k)
            out[p] = (np.asarray(tokens[rows, :self.max_new]), np.asarray(lengths[rows]))
            # keys and values were computed for every token but the last one chosen
            self._kept[p] = [out[p][0][j, :max(0, n - 1)] for j, n in enumerate(out[p][1])]
            self.running.discard(p)
            self.engine.counts.decoded_tokens += int(out[p][1].sum())
        return out
