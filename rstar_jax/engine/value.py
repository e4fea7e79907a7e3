"""PPM scoring: the value head over many token sequences in one jitted, bucketed forward."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from rstar_jax.engine.generation import _pow2, prompt_bucket
from rstar_jax.models.transformer import CausalLM


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _values(graphdef, state, ids, lengths):
    return nnx.merge(graphdef, state).value(ids, lengths)


class ValueScorer:
    """Scores sequences with a model built with a value head (the PPM). Rows are padded to a
    power of two and lengths to `prompt_bucket` sizes, so a search compiles a few shapes;
    at most `max_rows` rows go through the model at once."""

    def __init__(self, model: CausalLM, *, pad_id: int = 0, max_rows: int = 64):
        if not model.has_value_head:
            raise ValueError("ValueScorer needs a model with a value head (CausalLM(..., value_head=True))")
        if not 0 <= pad_id < model.config.vocab_size:
            raise ValueError(f"pad_id={pad_id} must be a token id in [0, {model.config.vocab_size})")
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
        self.graphdef, self.state = nnx.split(model)
        self.vocab = model.config.vocab_size
        self.pad_id, self.max_rows = pad_id, _pow2(max_rows)
        sharding = getattr(model.embed[...], "sharding", None)
        mesh = sharding.mesh if isinstance(sharding, NamedSharding) else None
        self.mesh = mesh if mesh is not None and mesh.size > 1 else None

    def update(self, model: CausalLM) -> None:
        """Use new weights of the same architecture."""
        graphdef, self.state = nnx.split(model)
        if graphdef != self.graphdef:
            raise ValueError("update() needs a model of the same architecture and options; build a new ValueScorer")

    def score(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """float32[len(sequences)]: the value of each (non-empty) token sequence."""
        rows = [np.asarray(s, np.int64).reshape(-1) for s in sequences]
        for i, r in enumerate(rows):
            if r.size == 0:
                raise ValueError(f"sequence {i} is empty; the PPM scores at least one token")
            if r.min() < 0 or r.max() >= self.vocab:
                raise ValueError(f"sequence {i} has ids outside [0, {self.vocab}): min {r.min()}, max {r.max()}")
        out = np.zeros((len(rows),), np.float32)
        for start in range(0, len(rows), self.max_rows):
            chunk = rows[start:start + self.max_rows]
            batch, width = _pow2(len(chunk)), prompt_bucket(max(len(r) for r in chunk))
            ids = np.full((batch, width), self.pad_id, np.int32)
            lengths = np.ones((batch,), np.int32)
            for i, r in enumerate(chunk):
                ids[i, :len(r)], lengths[i] = r, len(r)
            with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
                values = _values(self.graphdef, self.state, ids, lengths)
            out[start:start + len(chunk)] = np.asarray(values)[:len(chunk)]
        return out
