"""Generation: a jitted prefill and a jitted decode loop, with per-row stopping and fan-out.

One call samples `num_samples` continuations of each of B prompts (the expansion of B MCTS
nodes):

1. prefill (jit): the prompts, right-padded to a bucketed length P, run causally once; the
   result is each layer's keys and values `[B, P]` and each prompt's next-token logits. With a
   prefix store (`Engine(prefix_rows=S)`, see `PrefixStore`), each prompt reads the keys and
   values of the longest start it shares with a recent prompt and runs only the rest
   (`_extend`): a search's successive prompts for one problem extend each other (the path grows
   by a step), so most of each prompt's keys and values are computed once instead of at every
   expansion;
2. decode (jit): a `lax.while_loop` over new tokens for B x num_samples rows. The rows of one
   prompt read its keys and values from one shared copy (`ForkCache`) and write their own into
   buffers (per layer, keys and values `[rows, K, T, D]`) that the engine keeps between calls
   and donates to the loop, which updates them in place. A row is done at its first stop
   token or after `max_new_tokens`; the loop exits as soon as every row is done.

Batch, prompt and generation lengths are bucketed (powers of two, and 1.5x between them for
prompts), so a long search compiles a handful of shapes. Every row has its own PRNG key, made
from its prompt's seed and its sample index: a row's samples do not depend on which other
prompts share the batch or on the bucket sizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from rstar_jax.engine import sampling
from rstar_jax.models.cache import ForkCache, KVCache
from rstar_jax.models.rope import RotaryEmbedding
from rstar_jax.models.sharding import canonical_spec
from rstar_jax.models.transformer import CausalLM

_MIN_PROMPT_BUCKET = 16
_MIN_NEW_BUCKET = 8
_STOP_SLOTS = 8  # stop-id array sizes are multiples of this, so adding one does not recompile


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """Row r = b * num_samples + s is sample s of prompt b."""

    tokens: np.ndarray  # int32[R, max_new_tokens], pad_id after a row's stop token
    lengths: np.ndarray  # int32[R], tokens generated, the stop token included
    logprobs: np.ndarray | None = None  # float32[R, max_new_tokens], 0 after the stop; see generate
    steps: int = 0  # tokens chosen per row before the loop exited (it exits once every row is done)


@dataclasses.dataclass
class TokenCounts:
    """The tokens a model was given and the tokens it computed, summed over calls; padding rows
    and positions are not counted, except in `scored_slots` and `prefix_reads`, which measure
    them. `Engine.counts` and `ValueScorer.counts`."""

    calls: int = 0
    prompt_tokens: int = 0  # prompts' (the PPM: prefixes') tokens given
    prefill_tokens: int = 0  # of them, run through the model (the rest came from a prefix store)
    decode_steps: int = 0  # decode loop steps x rows: a row computes until every row is done
    decoded_tokens: int = 0  # tokens the rows kept, their stop tokens included
    scored_tokens: int = 0  # the PPM: children's tokens run after their prefixes
    scored_slots: int = 0  # the PPM: token slots of the rows it ran (children or sequences)
    # Decode attention to prompts, in (query row, prompt position) pairs summed over steps: what
    # the steps read, padding rows, cells and positions included; and what the running rows
    # needed, each its own prompt's real positions.
    prefix_reads: int = 0
    prefix_needed: int = 0

    @property
    def computed(self) -> int:
        """Tokens the model ran: prefill, decode steps (a stopped row's included) and children."""
        return self.prefill_tokens + self.decode_steps + self.scored_tokens

    @property
    def stopped_share(self) -> float:
        """The share of decode steps spent on rows that had already stopped."""
        return 1.0 - self.decoded_tokens / self.decode_steps if self.decode_steps else 0.0

    @property
    def prefix_waste(self) -> float:
        """Prompt positions decode attention read per position a running row needed."""
        return self.prefix_reads / self.prefix_needed if self.prefix_needed else 0.0


def prompt_bucket(length: int) -> int:
    """Smallest of 16, 24, 32, 48, 64, 96, ... (powers of two and 1.5x between) >= length."""
    size = _MIN_PROMPT_BUCKET
    while size < length:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def decode_bucket(max_new_tokens: int) -> int:
    """The length of the decode buffers for `max_new_tokens`: a power of two, at least 8."""
    return _pow2(max_new_tokens, _MIN_NEW_BUCKET)


def _pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(0, n - 1).bit_length())


def model_mesh(model: CausalLM):
    """The mesh a model's weights were loaded onto, or None on one device."""
    sharding = getattr(model.embed[...], "sharding", None)
    mesh = sharding.mesh if isinstance(sharding, NamedSharding) else None
    return mesh if mesh is not None and mesh.size > 1 else None


def pack_rows(rows: Sequence, batch: int, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id rows, right-padded into (int32[batch, width], lengths int32[batch]); rows past
    the last are all padding with length 1, so every row has a token to read."""
    ids = np.full((batch, width), pad_id, np.int32)
    lengths = np.ones((batch,), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)], lengths[i] = row, len(row)
    return ids, lengths


# --------------------------------------------------------------------------- jitted steps


def _last_logits(model, hidden, lengths):
    """float32 logits [B, V] after each row's last real token (hidden [B, T, E], lengths [B])."""
    return model.logits(jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1))[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prefill(graphdef, state, ids, lengths, rope_lengths):
    """ids: int32[B, P] right-padded; lengths: int32[B] >= 1; rope_lengths: int32[B], the
    longest each row may grow -> (per layer prefix keys [B, K, D, P] and values [B, K, P, D],
    float32 logits [B, V] after each prompt's last token)."""
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    hidden, cache = model.hidden_states(ids, positions,
                                        cache=KVCache.collect(model.config, model.dtype),
                                        rope_lengths=rope_lengths)
    keys, values = zip(*(ForkCache.prefix_layout(layer) for layer in cache.layers))
    return keys, values, _last_logits(model, hidden, lengths)


@functools.partial(jax.jit, static_argnames=("width",))
def held_prefix(store, rows, width: int):
    """Store rows `rows`' (int32[B], -1: row 0) first `width` positions: per layer keys
    [B, K, D, width] and values [B, K, width, D]. A call of its own: XLA copies the whole
    store, at every call, when a jitted call reads the store it writes in place."""
    safe = jnp.maximum(rows, 0)
    return tuple((keys[safe, :, :, :width], values[safe, :, :width]) for keys, values in store)


@functools.partial(jax.jit, donate_argnames=("store",))
def _write_prefix(store, held, rows, counts):
    """Writes held (per layer keys [B, K, D, W], values [B, K, W, D]) positions [0, counts[b])
    into store row rows[b] (-1: padding, dropped)."""
    capacity, width = store[0][0].shape[-1], held[0][0].shape[-1]
    span = jnp.arange(width)
    at = jnp.where((span < counts[:, None]) & (rows[:, None] >= 0), span, capacity)  # [B, W]
    safe = jnp.maximum(rows, 0)[:, None]
    return tuple((k.at[safe, :, :, at].set(hk.transpose(0, 3, 1, 2), mode="drop"),
                  v.at[safe, :, at].set(hv.transpose(0, 2, 1, 3), mode="drop"))
                 for (k, v), (hk, hv) in zip(store, held))


def extend_prefix(model, store, held, rows, ids, starts, lengths, rope_lengths, width: int):
    """Prefill through a prefix store (traced inside a jitted call): prompt b is a held start,
    its first starts[b] positions (`held`, from `held_prefix` of the rows it reads), followed
    by ids[b, :lengths[b]].

    store: per layer (keys [S, K, D, L], values [S, K, L, D]); rows: int32[B], the row each
    prompt's keys and values are written to from position starts[b] on (-1: none, for a padding
    prompt or one the store has no row for); ids: int32[B, N] right-padded; starts, lengths,
    rope_lengths: int32[B]. The new tokens attend to the held positions and causally to each
    other. Returns (store, prefix keys [B, K, D, width] and values [B, K, width, D] per layer:
    each prompt's, positions past its length unspecified; the new tokens' final hidden states
    [B, N, E]).
    """
    b, n = ids.shape
    capacity = store[0][0].shape[-1]
    safe = jnp.maximum(rows, 0)
    own = (b, model.config.num_key_value_heads, n, model.config.head_dim)
    cache = KVCache(tuple(ForkCache(keys, values, starts, jnp.zeros(own, keys.dtype),
                                    jnp.zeros(own, keys.dtype)) for keys, values in held))
    positions = starts[:, None] + jnp.arange(n, dtype=jnp.int32)
    hidden, cache = model.hidden_states(ids, positions, cache=cache, rope_lengths=rope_lengths)
    # Position capacity is out of range: padding tokens and padding prompts are dropped.
    at = jnp.where((jnp.arange(n) < lengths[:, None]) & (rows[:, None] >= 0), positions, capacity)
    store = tuple((keys.at[safe[:, None], :, :, at].set(layer.keys.transpose(0, 2, 1, 3),
                                                        mode="drop"),
                   values.at[safe[:, None], :, at].set(layer.values.transpose(0, 2, 1, 3),
                                                       mode="drop"))
                  for (keys, values), layer in zip(store, cache.layers))
    # The prompt's own prefix: the held start with the new tokens' keys and values after it.
    inside = jnp.where(jnp.arange(n) < lengths[:, None], positions, width)
    batch = jnp.arange(b)[:, None]
    keys = tuple(hk.at[batch, :, :, inside].set(layer.keys.transpose(0, 2, 1, 3), mode="drop")
                 for (hk, _), layer in zip(held, cache.layers))
    values = tuple(hv.at[batch, :, inside].set(layer.values.transpose(0, 2, 1, 3), mode="drop")
                   for (_, hv), layer in zip(held, cache.layers))
    return store, keys, values, hidden


@functools.partial(jax.jit, static_argnames=("graphdef", "width"), donate_argnames=("store",))
def _extend(graphdef, state, store, held, rows, ids, starts, lengths, rope_lengths, *, width):
    """`extend_prefix` for generation: (store, prefix keys, prefix values, float32 logits [B, V]
    after each prompt's last token). The store is donated."""
    model = nnx.merge(graphdef, state)
    store, keys, values, hidden = extend_prefix(model, store, held, rows, ids, starts, lengths,
                                                rope_lengths, width)
    return store, keys, values, _last_logits(model, hidden, lengths)


def _slot_keys(seeds, slots, samples: int):
    """PRNG key of each slot: fold_in(key(seed of its place), its sample index), as
    row b * samples + s of a generate call."""
    index = (slots % samples).astype(jnp.uint32)
    return jax.vmap(lambda seed, s: jax.random.fold_in(jax.random.key(seed), s))(seeds, index)


def _choose(logits, keys, t, temperature, top_k, top_p, vocab_limit: int):
    """Token t of each row from its float32 logits [R, V]; t: int32[R]."""
    if vocab_limit < logits.shape[-1]:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    uniform = jax.vmap(lambda key, i: jax.random.uniform(jax.random.fold_in(key, i)))(keys, t)
    rows = logits.shape[0]

    def full(x, dtype):
        return jnp.broadcast_to(jnp.asarray(x, dtype), (rows,))

    return sampling.sample(logits, uniform, full(temperature, jnp.float32),
                           full(top_k, jnp.int32), full(top_p, jnp.float32))


def _row_keys(seeds, samples):
    """uint32[B] -> PRNG keys [B * samples]: fold_in(key(seed of b), s) for row b*samples + s."""
    return _slot_keys(jnp.repeat(seeds, samples),
                      jnp.arange(seeds.shape[0] * samples, dtype=jnp.uint32), samples)


@functools.partial(jax.jit, static_argnames=("graphdef", "samples", "vocab_limit", "pad_id",
                                             "with_logprobs"),
                   donate_argnames=("buffers",))
def _decode(graphdef, state, prefix_keys, prefix_values, prefix_lengths, rope_lengths, first_logits,
            buffers, active, seeds, temperature, top_k, top_p, stop_ids, max_new, *, samples,
            vocab_limit, pad_id, with_logprobs):
    """Samples up to max_new tokens for R = B * samples rows.

    prefix_keys, prefix_values: per layer [B, K, D, P] and [B, K, P, D], as _prefill returns
    them; prefix_lengths, rope_lengths: int32[B] as in _prefill; first_logits: float32[B, V];
    buffers: per layer (keys, values) [R, K, T, D],
    donated; active: bool[R] (padding rows are inactive); seeds: uint32[B]; temperature,
    top_p: float32[R]; top_k: int32[R]; stop_ids: int32[S] (-1 pads); max_new: int32 scalar
    <= T. Returns (tokens int32[R, T], lengths int32[R], logprobs float32[R, T], tokens chosen
    per row before the loop exited (int32), buffers).
    """
    model = nnx.merge(graphdef, state)
    rows, length = buffers[0][0].shape[0], buffers[0][0].shape[2]
    keys = _row_keys(seeds, samples)
    starts = jnp.repeat(prefix_lengths, samples)  # position of each row's first new token
    rope_lengths = jnp.repeat(rope_lengths, samples)
    vocab = first_logits.shape[-1]

    def emit(t, logits, tokens, logprobs, lengths, done):
        """Chooses token t of every row from its logits [R, V]."""
        if vocab_limit < vocab:  # before _choose: the log-probabilities are over these ids too
            logits = jnp.where(jnp.arange(vocab) < vocab_limit, logits, -jnp.inf)
        chosen = _choose(logits, keys, jnp.full((rows,), t, jnp.int32), temperature, top_k, top_p,
                         vocab)
        token = jnp.where(done, pad_id, chosen)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, t))
        if with_logprobs:
            lp = jnp.where(done, 0.0, sampling.log_probs(logits, token))
            logprobs = jax.lax.dynamic_update_slice(logprobs, lp[:, None], (0, t))
        lengths = jnp.where(done, lengths, t + 1)
        done = done | jnp.any(token[:, None] == stop_ids[None, :], axis=-1) | (t + 1 >= max_new)
        return token, tokens, logprobs, lengths, done

    tokens = jnp.full((rows, length), pad_id, jnp.int32)
    logprobs = jnp.zeros((rows, length) if with_logprobs else (rows, 0), jnp.float32)
    lengths = jnp.zeros((rows,), jnp.int32)
    token, tokens, logprobs, lengths, done = emit(
        0, jnp.repeat(first_logits, samples, axis=0), tokens, logprobs, lengths, ~active)
    cache = KVCache(tuple(ForkCache(pk, pv, prefix_lengths, k, v)
                          for pk, pv, (k, v) in zip(prefix_keys, prefix_values, buffers)))

    def body(carry):
        t, token, cache, tokens, logprobs, lengths, done = carry
        hidden, cache = model.hidden_states(token[:, None], (starts + t - 1)[:, None], cache=cache,
                                            rope_lengths=rope_lengths)
        token, tokens, logprobs, lengths, done = emit(t, model.logits(hidden)[:, 0], tokens,
                                                      logprobs, lengths, done)
        return t + 1, token, cache, tokens, logprobs, lengths, done

    def cond(carry):
        t, done = carry[0], carry[-1]
        return (t < max_new) & ~jnp.all(done)

    carry = jax.lax.while_loop(cond, body, (jnp.int32(1), token, cache, tokens, logprobs, lengths,
                                            done))
    steps, _, cache, tokens, logprobs, lengths, _ = carry
    return tokens, lengths, logprobs, steps, tuple((layer.keys, layer.values)
                                                   for layer in cache.layers)


# --------------------------------------------------------------------------- host side


def _per_prompt(name: str, value, count: int, dtype, check) -> np.ndarray:
    """A scalar or one value per prompt -> array[count], each value checked."""
    array = np.asarray(value)
    if array.ndim == 0:
        array = np.full((count,), array)
    if array.shape != (count,):
        raise ValueError(f"{name} must be a scalar or one value per prompt ({count}); got shape "
                         f"{array.shape}")
    for item in array.tolist():
        problem = check(item)
        if problem:
            raise ValueError(f"{name}={item!r} is invalid: {problem}")
    return array.astype(dtype)


def _integer(value) -> int | None:
    """value as an int if it is an integer (Python, numpy or a jax scalar), else None; a bool
    is not one."""
    if isinstance(value, bool | np.bool_):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _count(name: str, value) -> int:
    """A positive integer argument."""
    n = _integer(value)
    if n is None or n < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return n


def _stop_ids(value, vocab: int) -> list[int]:
    """Stop token ids from any sequence or array of integers, each checked."""
    if isinstance(value, str | bytes) or _integer(value) is not None:
        raise ValueError(f"stop_token_ids must be a sequence of token ids; got {value!r}")
    if isinstance(value, np.ndarray | jax.Array):
        items = np.asarray(value).ravel().tolist()
    else:
        items = list(value)
    stops = [_integer(s) for s in items]
    if None in stops:
        raise ValueError(f"stop_token_ids must be a sequence of token ids; got {value!r}")
    bad = [s for s in stops if not 0 <= s < vocab]
    if bad:
        raise ValueError(f"stop token id {bad[0]} is outside the model's vocabulary [0, {vocab})")
    return stops


def _prompt_rows(prompt_ids, prompt_lengths, vocab: int) -> list[np.ndarray]:
    if isinstance(prompt_ids, np.ndarray | jax.Array):
        array = np.asarray(prompt_ids)
        if array.ndim != 2:
            raise ValueError(f"prompt_ids as an array must be int[B, P]; got shape {array.shape} "
                             "(wrap a single prompt in a list)")
        width = array.shape[1]
        given = [width] * array.shape[0] if prompt_lengths is None else list(prompt_lengths)
        if len(given) != array.shape[0]:
            raise ValueError(f"prompt_lengths has {len(given)} entries for {array.shape[0]} "
                             "prompts")
        lengths = [_integer(n) for n in given]
        for i, n in enumerate(lengths):
            if n is None or not 1 <= n <= width:
                raise ValueError(f"prompt_lengths[{i}]={given[i]!r} must be an integer in [1, "
                                 f"{width}] (the padded width)")
        rows = [array[i, :n] for i, n in enumerate(lengths)]
    else:
        if prompt_lengths is not None:
            raise ValueError("prompt_lengths applies to a padded int array [B, P]; ragged lists "
                             "carry their lengths")
        rows = [np.asarray(row) for row in prompt_ids]
    if not rows:
        raise ValueError("no prompts: prompt_ids is empty")
    for i, row in enumerate(rows):
        if row.ndim != 1 or row.size == 0:
            raise ValueError(f"prompt {i} must be a non-empty list of token ids; got shape "
                             f"{row.shape}")
        if not np.issubdtype(row.dtype, np.integer):
            raise ValueError(f"prompt {i} holds {row.dtype} values; token ids are integers")
        bad = row[(row < 0) | (row >= vocab)]
        if bad.size:
            raise ValueError(f"prompt {i} has token id {int(bad[0])} outside the model's "
                             f"vocabulary [0, {vocab})")
    return rows


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """The number of leading tokens a and b share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n], np.int64) != np.asarray(b[:n], np.int64))
    return int(differ[0]) if differ.size else n


def activation_sharding(mesh, rules, shape, axes) -> NamedSharding | None:
    """The sharding of an activation-like array with logical `axes` on `mesh` (None: one device).
    Canonical, so a buffer a jitted call donates back matches it: one compile per shape."""
    if mesh is None:
        return None
    return NamedSharding(mesh, canonical_spec(rules.spec(axes, shape, mesh), mesh))


@dataclasses.dataclass(frozen=True)
class StorePlan:
    """How one call runs its prompts through a prefix store (`PrefixStore.run`). Prompt b reads
    store row reads[b]'s first starts[b] positions, keys and values computed before, and runs
    ids[b, :lengths[b]] from there; its keys and values go to row rows[b] (-1: kept nowhere).
    Rows past the last prompt are padding: rows -1, start 0, length 1. width: the prefix
    positions the call reads (the longest prompt's bucket)."""

    reads: np.ndarray  # int32[batch]
    rows: np.ndarray  # int32[batch]
    starts: np.ndarray  # int32[batch]
    ids: np.ndarray  # int32[batch, N], right-padded
    lengths: np.ndarray  # int32[batch]
    width: int
    prompts: int  # real prompts (the first rows)

    @property
    def computed(self) -> int:
        """Prompt tokens the call runs (the rest are read from the store)."""
        return int(self.lengths[:self.prompts].sum())


class PrefixStore:
    """Keys and values of recent prompts, reused by later prompts that start the same way: per
    layer keys [S, K, D, L] and values [S, K, L, D] (the layout `ForkCache` reads) for S = `rows`
    sequences of up to L = `length` positions, made on first use (rows over the mesh's batch
    axes); on the host the tokens each row holds.

    A call (`run`) gives each prompt the row that shares its longest start (a search's next
    prompt for a problem extends its last one, or branches off it) and runs only the rest. The
    prompt's keys and values then go to a row: the one it read, when the prompt extends what the
    row holds or no free row is older; else the least recently used row, after a copy of the
    shared start into it, so a branch does not overwrite the path it left. Memory is fixed at
    rows x length positions; a prompt that finds no row to keep its keys (more prompts than
    rows) runs as usual and is not kept: a miss costs compute, never fails. (The copy is a call
    of its own, not part of the prefill: writing every prompt's whole prefix in the prefill
    would cost the store's width in writes at every call, for the rare fork.)"""

    def __init__(self, model: CausalLM, rows: int, length: int | None = None):
        if _integer(rows) is None or rows < 0:
            raise ValueError(f"prefix_rows must be an integer >= 0, got {rows!r}")
        self.config, self.dtype, self.rows = model.config, model.dtype, rows
        self.length = length or model.config.max_position_embeddings
        self.mesh, self.rules = model_mesh(model), model.rules
        self.switch_at = RotaryEmbedding(model.config).switch_at
        self._arrays = None
        self._clock = 0
        self.used = np.zeros((rows,), np.int64)  # the call that last read or wrote each row
        self.forget()
        self._before = self.held, self.regimes

    def forget(self) -> None:
        """Every row holds nothing (what they held is stale, or with a call that failed)."""
        self.held = [np.zeros((0,), np.int64)] * self.rows
        self.regimes = [False] * self.rows

    def regime(self, rope_length: int) -> bool:
        """Whether a call whose rows may grow to rope_length uses longrope's long factors: keys
        computed under the other factors are not reused."""
        return self.switch_at is not None and int(rope_length) > self.switch_at

    def release(self) -> None:
        self._arrays = None
        self.forget()

    def _matches(self, prompts: Sequence[np.ndarray], regimes: Sequence[bool]) -> np.ndarray:
        """int[prompts, rows]: the leading tokens each row holds in common with each prompt (0
        for a row of the other rope factors)."""
        longest = max(len(p) for p in prompts)
        held = np.full((self.rows, longest + 1), -1, np.int64)  # -1 never matches a token
        for r, have in enumerate(self.held):
            held[r, :min(len(have), longest)] = have[:longest]
        out = np.zeros((len(prompts), self.rows), np.int64)
        row_regimes = np.array(self.regimes)
        for i, (p, regime) in enumerate(zip(prompts, regimes)):
            differ = held[:, :len(p) + 1] != np.append(np.asarray(p, np.int64), -2)
            same = np.argmax(differ, axis=1)  # the first position that differs
            out[i] = np.where(row_regimes == regime, same, 0)
        return out

    def holds(self, longest: int) -> bool:
        """Whether a call whose longest prompt has `longest` tokens can go through the store (a
        longer one runs without it)."""
        return self.rows > 0 and longest <= self.length

    def plan(self, prompts: Sequence[np.ndarray], batch: int, pad_id: int, *, rope_lengths=None,
             pinned: Sequence[int] = (), keep_all: bool = False, what: str = "prompt"):
        """(StorePlan, copies (source rows, target rows, counts)) of a call; see the class
        docstring. pinned: rows that must not change (a running decode reads them); keep_all:
        every prompt gets a row (running its whole prompt when that is the only way), which
        needs as many free rows as prompts."""
        if self.rows == 0:
            raise ValueError("this call needs a prefix store: build it with prefix_rows > 0")
        longest = max(len(p) for p in prompts)
        if longest > self.length:
            raise ValueError(f"a {what} of {longest} tokens does not fit the prefix store's "
                             f"{self.length} positions; build it with a larger prefix_length")
        free = set(range(self.rows)) - {int(r) for r in pinned}
        if keep_all and len(free) < len(prompts):
            raise ValueError(f"{len(prompts)} {what}s need a store row each, but only "
                             f"{len(free)} of the {self.rows} rows are free")
        regimes = [self.regime(n) for n in (rope_lengths if rope_lengths is not None
                                             else [0] * len(prompts))]
        shared = self._matches(prompts, regimes)
        # a row whose tokens all start the prompt loses nothing when the prompt goes there
        extends = shared >= np.array([len(h) for h in self.held], np.int64)
        # a prompt's last token always runs: its logits are the call's output
        matches = np.minimum(shared, np.array([len(p) - 1 for p in prompts])[:, None])
        longest_match = matches.max(axis=1)
        # the rows each prompt would read: those sharing its longest start. No fork copies into
        # them, as a copy lands before the call reads.
        best = [set(np.flatnonzero(m == top).tolist()) if top else set()
                for m, top in zip(matches, longest_match)]
        sources = set().union(*best)
        reads, rows, starts = [0] * len(prompts), [-1] * len(prompts), [0] * len(prompts)
        forks, read = [], set()  # (source row, target row, tokens copied)

        def oldest(candidates):
            return min(candidates, key=lambda r: (self.used[r], r)) if candidates else None

        for i in sorted(range(len(prompts)), key=lambda i: -longest_match[i]):
            m, open_rows = int(longest_match[i]), free - set(rows)
            spare = oldest(open_rows - sources)
            if not m:  # nothing to reuse: the oldest row no prompt reads, else the oldest
                row = spare if spare is not None else oldest(open_rows)
                rows[i] = reads[i] = -1 if row is None else row
                continue
            here = best[i] & open_rows
            extended = [r for r in here if extends[i, r]]
            if extended:
                src = min(extended)
            elif here:
                src = oldest(here)
            else:  # every row it could read is pinned or taken: read one, write elsewhere
                src = min(best[i])
            read.add(src)
            if here and (extended or spare is None or self.used[spare] >= self.used[src]):
                reads[i], rows[i], starts[i] = src, src, m
            elif spare is not None:  # a fork: the shared start is copied, the source row stays
                reads[i], rows[i], starts[i] = spare, spare, m
                forks.append((src, spare, m))
            elif not keep_all:
                reads[i], starts[i] = src, m  # reuse what is there; keep nothing
            elif open_rows:  # every prompt must get a row: this one runs whole
                rows[i] = reads[i] = oldest(open_rows)
            else:
                raise AssertionError("keep_all counted a free row for every prompt")
        self._clock += 1
        for r in set(rows) | read:  # rows written or read
            if r >= 0:
                self.used[r] = self._clock
        suffixes = [p[s:] for p, s in zip(prompts, starts)]
        ids, lengths = pack_rows(suffixes, batch, prompt_bucket(max(len(s) for s in suffixes)),
                                 pad_id)
        pad = batch - len(prompts)
        plan = StorePlan(reads=np.array(reads + [-1] * pad, np.int32),
                         rows=np.array(rows + [-1] * pad, np.int32),
                         starts=np.array(starts + [0] * pad, np.int32), ids=ids, lengths=lengths,
                         width=min(self.length, prompt_bucket(longest)), prompts=len(prompts))
        return plan, tuple(np.array(forks, np.int32).reshape(-1, 3).T)

    def arrays(self):
        """The store's arrays, to read in a call that does not write them."""
        if self._arrays is None:
            self._arrays = self.take()
            self.held, self.regimes = self._before
        return self._arrays

    def take(self):
        if self._arrays is None:
            c = self.config
            keys = (self.rows, c.num_key_value_heads, c.head_dim, self.length)
            values = (self.rows, c.num_key_value_heads, self.length, c.head_dim)
            at = [activation_sharding(self.mesh, self.rules, shape,
                                      ("act_batch", "act_kv_heads", None, None))
                  for shape in (keys, values)]
            self._arrays = tuple((jnp.zeros(keys, self.dtype, device=at[0]),
                                  jnp.zeros(values, self.dtype, device=at[1]))
                                 for _ in range(c.num_hidden_layers))
        arrays, self._arrays = self._arrays, None
        self._before = self.held, self.regimes
        self.forget()  # a call that fails loses the arrays: nothing is held then
        return arrays

    def keep(self, arrays, rows: Sequence[int], prompts: Sequence[np.ndarray],
             rope_lengths=None) -> None:
        """The arrays back from a call that wrote `prompts` into `rows` (rope_lengths: as in
        `plan`)."""
        self._arrays = arrays
        held, regimes = self._before
        self.held, self.regimes = list(held), list(regimes)
        rope_lengths = [0] * len(rows) if rope_lengths is None else rope_lengths
        for r, prompt, n in zip(rows, prompts, rope_lengths):
            self.held[r], self.regimes[r] = np.asarray(prompt, np.int64), self.regime(n)

    def run(self, prompts: Sequence[np.ndarray], batch: int, pad_id: int, call, *,
            rope_lengths=None, pinned: Sequence[int] = (), keep_all: bool = False,
            what: str = "prompt"):
        """Runs `call(arrays, held, plan) -> (arrays, out)`: a jitted call that takes the store's
        arrays (donated), the prefixes the prompts read (`held_prefix`) and the `StorePlan`
        (padded to `batch` prompts), writes the prompts' keys and values into plan.rows (see
        `extend_prefix`) and gives the arrays back. rope_lengths: the length each prompt's row
        may grow to (longrope picks its factors by it). Returns (plan, out)."""
        plan, (sources, targets, counts) = self.plan(prompts, batch, pad_id,
                                                     rope_lengths=rope_lengths, pinned=pinned,
                                                     keep_all=keep_all, what=what)
        arrays = self.take()
        if sources.size:  # forks: the shared start goes to the new row first
            # in the call's own shapes: nothing more to compile than one write per shape
            def pad(x, fill):
                return np.concatenate([x, np.full((batch - x.size,), fill, np.int32)])

            arrays = _write_prefix(arrays, held_prefix(arrays, pad(sources, -1), plan.width),
                                   pad(targets, -1), pad(counts, 0))
        arrays, out = call(arrays, held_prefix(arrays, plan.reads, plan.width), plan)
        kept = [i for i, r in enumerate(plan.rows[:len(prompts)]) if r >= 0]
        self.keep(arrays, [int(plan.rows[i]) for i in kept], [prompts[i] for i in kept],
                  rope_lengths=None if rope_lengths is None else [rope_lengths[i] for i in kept])
        return plan, out


class Engine:
    """Generation with one model's weights. Keep one per model and reuse it: it holds the KV
    buffer of the last shape it decoded, and `generate` donates that buffer to the next call.

    vocab_size: the tokenizer's size when the embedding has more rows (Phi-3 pads 32011 tokens
    to 32064); ids at or above it are never generated. pad_id fills `tokens` after a stop.
    prefix_rows: rows of the prefix store (0: none; see `PrefixStore`), which keeps the keys and
    values of up to that many recent prompts of up to prefix_length tokens (default the model's
    context), so a later prompt that starts the same way runs only what follows: per layer
    prefix_rows x prefix_length x 2 x KV heads x head dim values of the model's dtype. A call
    with a longer prompt runs without the store.
    """

    def __init__(self, model: CausalLM, *, vocab_size: int | None = None, pad_id: int = 0,
                 prefix_rows: int = 0, prefix_length: int | None = None):
        if not model.has_lm_head:
            raise ValueError("this model has no LM head (lm_head=False): it scores values and "
                             "cannot generate")
        rows = model.config.vocab_size
        if vocab_size is not None and not 0 < vocab_size <= rows:
            raise ValueError(f"vocab_size={vocab_size} must be in [1, {rows}] (the model's "
                             "embedding rows)")
        if not 0 <= pad_id < rows:
            raise ValueError(f"pad_id={pad_id} must be a token id in [0, {rows}): it pads prompts "
                             "fed to the model")
        self.config = model.config
        self.dtype = model.dtype
        self.vocab_size = vocab_size or rows
        self.pad_id = pad_id
        self.rules = model.rules
        self.graphdef, self.state = nnx.split(model)
        self.mesh = model_mesh(model)
        self._buffers = None
        self.store = PrefixStore(model, prefix_rows, prefix_length)
        self.counts = TokenCounts()

    @property
    def prefix_rows(self) -> int:
        return self.store.rows

    def update(self, model: CausalLM) -> None:
        """Use new weights of the same architecture (after a training round)."""
        graphdef, self.state = nnx.split(model)
        if graphdef != self.graphdef:
            raise ValueError("update() needs a model of the same architecture and options; build a "
                             "new Engine")
        self.store.forget()  # it holds the old weights' keys

    def release(self) -> None:
        """Free the KV buffer kept between calls and the prefix store (for example before training
        on the same devices)."""
        self._buffers = None
        self.store.release()

    def _sharding(self, shape, axes):
        return activation_sharding(self.mesh, self.rules, shape, axes)

    def _prefix(self, rows: list[np.ndarray], batch: int, lengths: np.ndarray,
                rope_lengths: np.ndarray):
        """(prefix keys, values, next-token logits) of the prompts, through the prefix store when
        the engine has one (see the class docstring), else by a plain prefill."""
        self.counts.prompt_tokens += sum(len(row) for row in rows)
        if not self.store.holds(int(lengths.max())):
            self.counts.prefill_tokens += sum(len(row) for row in rows)
            ids, _ = pack_rows(rows, batch, prompt_bucket(int(lengths.max())), self.pad_id)
            return _prefill(self.graphdef, self.state, ids, lengths, rope_lengths)

        def call(arrays, held, plan):
            arrays, *out = _extend(self.graphdef, self.state, arrays, held, plan.rows, plan.ids,
                                   plan.starts, plan.lengths, rope_lengths, width=plan.width)
            return arrays, out

        plan, out = self.store.run(rows, batch, self.pad_id, call,
                                   rope_lengths=rope_lengths[:len(rows)])
        self.counts.prefill_tokens += plan.computed
        return out

    def _take_buffers(self, rows: int, length: int):
        c = self.config
        shape = (rows, c.num_key_value_heads, length, c.head_dim)
        buffers, self._buffers = self._buffers, None
        if buffers is not None and buffers[0][0].shape == shape:
            return buffers
        buffers = None  # free the old one before allocating
        device = self._sharding(shape, ("act_batch", "act_kv_heads", None, None))
        return tuple((jnp.zeros(shape, self.dtype, device=device),
                      jnp.zeros(shape, self.dtype, device=device))
                     for _ in range(c.num_hidden_layers))

    def generate(self, prompt_ids, max_new_tokens: int = 64, temperature=0.0, top_p=1.0,
                 stop_token_ids: Sequence[int] = (), seed=0, *, top_k=0, num_samples: int = 1,
                 prompt_lengths=None, return_logprobs: bool = False) -> GenerationResult:
        """Samples `num_samples` continuations of each prompt.

        prompt_ids: int[B, P] (every row full unless prompt_lengths says otherwise) or B lists of
        ids of any lengths. temperature (0 = greedy), top_p (1 = off), top_k (0 = off) and seed
        (in [0, 2**32)) are scalars or one value per prompt; equal prompts with equal seeds draw
        equal samples, so a search passes a seed per problem and call. A row stops after its
        first token in stop_token_ids. Rows are prompt-major: row b * num_samples + s.
        return_logprobs: also return each token's log-probability under the model (temperature
        1, before top-k/top-p, over the ids below vocab_size). With a prefix store, only what a
        prompt does not share with a prompt the store holds is run; the tokens are the same
        either way, up to float rounding in the reused keys.

        Under longrope scaling (Phi-3 128k) a row whose prompt plus max_new_tokens passes the
        pretraining length uses the long factors from its first token; transformers instead
        switches when the sequence actually passes it, re-encoding the whole sequence.
        """
        vocab = self.config.vocab_size
        rows = _prompt_rows(prompt_ids, prompt_lengths, vocab)
        max_new_tokens = _count("max_new_tokens", max_new_tokens)
        num_samples = _count("num_samples", num_samples)
        b = len(rows)
        temperature = _per_prompt("temperature", temperature, b, np.float32,
                                  lambda x: None if math.isfinite(x) and x >= 0
                                  else "use a finite value >= 0")
        top_p = _per_prompt("top_p", top_p, b, np.float32,
                            lambda x: None if 0 < x <= 1 else "use 0 < top_p <= 1")
        top_k = _per_prompt("top_k", top_k, b, object,
                            lambda x: None if _integer(x) is not None and x >= 0
                            else "use an integer >= 0 (0 = off)")
        # k >= vocab keeps everything
        top_k = np.array([min(_integer(k), vocab) for k in top_k], np.int32)
        seeds = _per_prompt("seed", seed, b, np.uint32,
                            lambda x: None if float(x).is_integer() and 0 <= x < 2**32
                            else "use an integer in [0, 2**32)")
        stops = _stop_ids(stop_token_ids, vocab)

        batch = _pow2(b)
        length = decode_bucket(max_new_tokens)
        lengths = np.array([len(r) for r in rows] + [1] * (batch - b), np.int32)
        active = np.repeat(np.arange(batch) < b, num_samples)

        def pad(values, fill):
            return np.repeat(np.concatenate([values, np.full((batch - b,), fill, values.dtype)]),
                             num_samples)

        stop_ids = np.full((_STOP_SLOTS * max(1, -(-len(stops) // _STOP_SLOTS)),), -1, np.int32)
        stop_ids[:len(stops)] = stops
        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            rope_lengths = lengths + np.int32(max_new_tokens)
            prefix_keys, prefix_values, first = self._prefix(rows, batch, lengths, rope_lengths)
            buffers = self._take_buffers(batch * num_samples, length)
            tokens, out_lengths, logprobs, steps, buffers = _decode(
                self.graphdef, self.state, prefix_keys, prefix_values, lengths, rope_lengths, first,
                buffers, active, np.concatenate([seeds, np.zeros((batch - b,), np.uint32)]),
                pad(temperature, 0.0), pad(top_k, 0), pad(top_p, 1.0), stop_ids,
                np.int32(max_new_tokens), samples=num_samples, vocab_limit=self.vocab_size,
                pad_id=self.pad_id, with_logprobs=return_logprobs)
            self._buffers = buffers
        n = b * num_samples
        out_lengths = np.asarray(out_lengths)[:n]
        self.counts.calls += 1
        self.counts.decode_steps += int(steps) * n
        self.counts.decoded_tokens += int(out_lengths.sum())
        # every loop step (a token after the first) reads every row's prompt bucket; a row
        # needs its prompt for each token after its first until it stops
        self.counts.prefix_reads += (max(int(steps) - 1, 0) * batch * num_samples
                                     * prefix_values[0].shape[2])
        self.counts.prefix_needed += int(np.maximum(out_lengths.astype(np.int64) - 1, 0)
                                         @ np.repeat(lengths[:b], num_samples))
        return GenerationResult(
            tokens=np.asarray(tokens)[:n, :max_new_tokens],
            lengths=out_lengths,
            logprobs=np.asarray(logprobs)[:n, :max_new_tokens] if return_logprobs else None,
            steps=int(steps))


def generate(model: CausalLM, prompt_ids, max_new_tokens: int = 64, temperature=0.0, top_p=1.0,
             stop_token_ids: Sequence[int] = (), seed=0, *, top_k=0, num_samples: int = 1,
             prompt_lengths=None, return_logprobs: bool = False, vocab_size: int | None = None,
             pad_id: int = 0) -> GenerationResult:
    """One-off generation; see `Engine.generate`. A search calls an `Engine` instead, which keeps
    its KV buffer between calls. Compiled steps are shared either way."""
    engine = Engine(model, vocab_size=vocab_size, pad_id=pad_id)
    return engine.generate(prompt_ids, max_new_tokens, temperature, top_p, stop_token_ids, seed,
                           top_k=top_k, num_samples=num_samples, prompt_lengths=prompt_lengths,
                           return_logprobs=return_logprobs)
