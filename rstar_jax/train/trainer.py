"""One trainer for the policy (SFT) and the PPM: optax AdamW, one jitted step over a sharded
model with gradient accumulation.

The model's parameters stay where the model put them (one device, or sharded over a mesh by
`from_pretrained(..., mesh=)` / the model's logical-axis rules); the optimizer state is created
by a jitted `init`, so its moments take the parameters' shardings. Batches are split into
`microbatches` along their rows and their gradients summed in a `lax.scan`; every loss is a sum
divided by the whole batch's count (losses.py), so any split gives the full batch's step.
Mixed precision is the model's: build it with `dtype=jnp.bfloat16, param_dtype=jnp.float32` for
bf16 compute with f32 master weights and optimizer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rstar_jax._checks import positive_int
from rstar_jax.train import losses
from rstar_jax.train.batches import OutcomeBatch, PPMBatch, SFTBatch
from rstar_jax.train.devices import batch_shards

# the policy, the PPM, the outcome reward model (a baseline for the PPM)
TASKS = ("sft", "ppm", "orm")
_BATCHES = {"sft": SFTBatch, "ppm": PPMBatch, "orm": OutcomeBatch}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings. schedule: "cosine", "linear" (decay to end_lr_fraction x the peak
    after warmup, over total_steps) or "constant"."""

    learning_rate: float = 1e-5
    warmup_steps: int = 0
    total_steps: int = 1000
    schedule: str = "cosine"
    end_lr_fraction: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0  # global gradient norm; 0 disables
    microbatches: int = 1
    # SFT: positions whose logits are made at once (0: the whole sequence); see
    # losses.chunked_sft_loss_sum. It must divide the rows' length.
    loss_chunk: int = 0

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        positive_int(self.total_steps, "TrainConfig.total_steps")
        positive_int(self.microbatches, "TrainConfig.microbatches")
        warmup = self.warmup_steps
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be a non-negative int, got {warmup!r}")
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} exceeds "
                             f"total_steps={self.total_steps}")
        chunk = self.loss_chunk
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
            raise ValueError("TrainConfig.loss_chunk must be an int >= 0 (0: no chunks), got "
                             f"{self.loss_chunk!r}")
        if not self.learning_rate > 0 or self.clip_norm < 0:
            raise ValueError("learning_rate must be > 0 and clip_norm >= 0; got "
                             f"{self.learning_rate}, {self.clip_norm}")


def make_schedule(c: TrainConfig) -> optax.Schedule:
    peak, end = c.learning_rate, c.learning_rate * c.end_lr_fraction
    decay_steps = max(1, c.total_steps - c.warmup_steps)
    if c.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif c.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=c.end_lr_fraction)
    if not c.warmup_steps:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, c.warmup_steps), decay],
                                [c.warmup_steps])


def make_optimizer(c: TrainConfig) -> optax.GradientTransformation:
    adam = optax.adamw(make_schedule(c), b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
    return optax.chain(optax.clip_by_global_norm(c.clip_norm), adam) if c.clip_norm else adam


def variable_sharding(v: nnx.Variable, mesh, rules) -> NamedSharding:
    """Where a model variable lives on `mesh`: by its logical axes and `rules`, replicated if it
    has none."""
    axes = getattr(v, "axes", None)
    shape = v.get_value().shape
    if axes is None:
        return NamedSharding(mesh, PartitionSpec())
    return rules.sharding(axes, shape, mesh)


def create_sharded(make, mesh, rules=None):
    """The model `make()` builds, with every parameter created directly in its shard on `mesh`
    (by its logical axes and `rules`, default the model rules): the shapes come from
    `nnx.eval_shape`, and one jitted call with those out-shardings runs the initialisers, so
    no device ever holds a whole unsharded model."""
    from rstar_jax.models import DEFAULT_RULES

    rules = rules or DEFAULT_RULES
    graphdef, state = nnx.split(nnx.eval_shape(make))
    shardings = jax.tree.map(lambda v: variable_sharding(v, mesh, rules), state,
                             is_leaf=lambda x: isinstance(x, nnx.Variable))
    with jax.set_mesh(mesh):
        state = jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def _loss_sums(model, task: str, batch: dict,
               loss_chunk: int = 0) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(loss sum, count, correct, judged) of one microbatch; the last two are the PPM's pairs
    ranked right and the ORM's outcomes called right (the score's sign), and their counts.
    loss_chunk: see `TrainConfig`."""
    if task == "sft":
        hidden, _ = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
        if loss_chunk and loss_chunk < hidden.shape[1]:
            total, count = losses.chunked_sft_loss_sum(model.logits, hidden, batch["targets"],
                                                       batch["weights"], chunk=loss_chunk)
        else:
            total, count = losses.sft_loss_sum(model.logits(hidden), batch["targets"],
                                               batch["weights"])
        return total, count, jnp.zeros(()), jnp.zeros(())
    scores = model.value(batch["ids"], batch["lengths"])
    if task == "orm":
        total, count = losses.outcome_loss_sum(scores, batch["labels"], batch["weights"])
        right = (jnp.sign(scores) == batch["labels"]).astype(jnp.float32) * batch["weights"]
        return total, count, jnp.sum(right), count
    pos, neg = scores[0::2], scores[1::2]
    total, count = losses.ppm_loss_sum(pos, neg, batch["weights"])
    correct, pairs = losses.pair_accuracy(pos, neg, batch["weights"] > 0)
    return total, count, correct, pairs


def _train_step_fn(graphdef, params, opt_state, rest, batch, *, task, config):
    tx = make_optimizer(config)  # from the (hashable) config: equal configs share a compilation

    def micro(carry, mb):
        grads, sums = carry

        def loss_fn(p):
            total, count, correct, pairs = _loss_sums(nnx.merge(graphdef, p, rest), task, mb,
                                                      config.loss_chunk)
            return total, (count, correct, pairs)

        (total, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grads = jax.tree.map(lambda a, b: a + b.astype(a.dtype), grads, g)
        return (grads, sums + jnp.stack([total, *aux])), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (grads, sums), _ = jax.lax.scan(micro, (zeros, jnp.zeros((4,), jnp.float32)), batch)
    count = jnp.maximum(sums[1], 1.0)
    grads = jax.tree.map(lambda g, p: (g / count).astype(p.dtype), grads, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": sums[0] / count, "count": sums[1], "grad_norm": optax.tree.norm(grads),
               "accuracy": sums[2] / jnp.maximum(sums[3], 1.0)}
    return params, opt_state, metrics


# buffers donated
_JIT = {"static_argnames": ("graphdef", "task", "config"), "donate_argnums": (1, 2)}
_train_step = jax.jit(_train_step_fn, **_JIT)  # one device: compiled once for every trainer


_SHARDED_STEPS: dict = {}


def train_step(mesh, params, opt_shardings):
    """The jitted training step on `mesh`: its outputs keep the shardings of `params` and
    `opt_shardings`, so the optimizer state stays sharded like the parameters from step to step.
    One jitted function per set of shardings: the trainers of later rounds reuse its
    compilations."""
    out = (jax.tree.map(lambda x: x.sharding, params), opt_shardings,
           NamedSharding(mesh, PartitionSpec()))
    key = (jax.tree.structure(out), tuple(jax.tree.leaves(out)))
    if key not in _SHARDED_STEPS:
        _SHARDED_STEPS[key] = jax.jit(_train_step_fn, out_shardings=out, **_JIT)
    return _SHARDED_STEPS[key]


def opt_state_shardings(tx, params, mesh):
    """Shardings of `tx.init(params)` on `mesh`: each moment like its parameter, anything else
    (step counts) replicated. Without them a jitted `init` would replicate the moments, which
    only read the parameters' shapes, on every device."""
    abstract = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_utils.tree_map_params(tx, lambda _, s: s, abstract,
                                            jax.tree.map(lambda x: x.sharding, params),
                                            transform_non_params=lambda _: replicated)


@functools.partial(jax.jit, static_argnames=("graphdef", "task"))
def _eval_step(graphdef, params, rest, batch, *, task):
    return jnp.stack(_loss_sums(nnx.merge(graphdef, params, rest), task, batch))


def batch_arrays(task: str, batch) -> dict[str, np.ndarray]:
    kind = _BATCHES[task]
    if not isinstance(batch, kind):
        raise TypeError(f"a {task!r} trainer takes {kind.__name__}es, got {type(batch).__name__}")
    out = dataclasses.asdict(batch)
    if task == "ppm":  # pairs must stay together when rows are split
        out["ids"] = out["ids"].reshape(-1, 2, out["ids"].shape[-1])
        out["lengths"] = out["lengths"].reshape(-1, 2)
    return out


def microbatches_for(rows: int, row_tokens: int, shards: int, tokens_per_chip: int) -> int:
    """The fewest microbatches that keep each data-parallel device's share of a microbatch within
    `tokens_per_chip` tokens: a batch of `rows` rows (an SFT row, or a PPM pair counting its two
    sequences) of `row_tokens` tokens each, over `shards` devices (data x fsdp), each microbatch
    splitting evenly over them. Raises ValueError when even one row per device is over budget or
    the rows do not split over the devices."""
    if rows % shards:
        raise ValueError(f"a batch of {rows} rows does not split over {shards} data-parallel "
                         f"devices; make it a multiple of {shards}")
    for m in range(1, rows // shards + 1):
        if rows % (m * shards) == 0 and rows // (m * shards) * row_tokens <= tokens_per_chip:
            return m
    raise ValueError(f"one row of {row_tokens} tokens a device is over the budget of "
                     f"{tokens_per_chip} tokens a chip; raise tokens_per_chip or shorten "
                     "max_length")


def split_microbatches(task: str, arrays: dict, microbatches: int) -> dict:
    """A batch's arrays [rows, ...] as [microbatches, rows / microbatches, ...]; a PPM batch's
    rows are pairs, so its ids and lengths (two rows a pair) split with them."""
    rows = len(arrays["weights"])
    out = {k: v.reshape(microbatches, rows // microbatches, *v.shape[1:])
           for k, v in arrays.items()}
    if task == "ppm":
        out["ids"] = out["ids"].reshape(microbatches, -1, out["ids"].shape[-1])
        out["lengths"] = out["lengths"].reshape(microbatches, -1)
    return out


class Trainer:
    """Trains `model` (a CausalLM; with a value head for tasks "ppm" and "orm") in place of its
    parameters.

    `step(batch)` runs one optimiser step on an SFTBatch or PPMBatch and returns float metrics
    (loss, count, grad_norm, accuracy for the PPM, lr); `evaluate(batches)` the held-out loss
    (and pair accuracy); `model()` the trained model. Steps donate the parameter buffers, so
    the model passed in (and anything sharing its arrays) is spent after the first step: read
    the weights through `model()`.
    """

    def __init__(self, model, config: TrainConfig, task: str):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task != "sft" and not model.has_value_head:
            raise ValueError(f"the {task.upper()} trainer needs a model with a value head "
                             "(CausalLM(..., value_head=True))")
        self.task, self.config, self.model_config = task, config, model.config
        self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
        self.tx = make_optimizer(config)
        self.schedule = make_schedule(config)
        # The mesh the weights were loaded onto, even of one device: the optimizer state is then
        # placed as the step returns it, so the second step does not compile again.
        sharding = getattr(model.embed[...], "sharding", None)
        self.mesh = sharding.mesh if isinstance(sharding, NamedSharding) else None
        with self._mesh():
            if self.mesh is None:
                self.opt_state = jax.jit(self.tx.init)(self.params)
                self._step = _train_step
            else:
                shardings = opt_state_shardings(self.tx, self.params, self.mesh)
                self.opt_state = jax.jit(self.tx.init, out_shardings=shardings)(self.params)
                self._step = train_step(self.mesh, self.params, shardings)
        self.step_count = 0

    def _mesh(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _place(self, arrays: dict[str, np.ndarray], microbatches: int) -> dict[str, jax.Array]:
        """[rows, ...] -> [microbatches, rows / microbatches, ...], rows over data and fsdp."""
        rows = len(next(iter(arrays.values())))
        shards = batch_shards(self.mesh)
        if rows % (microbatches * shards):
            raise ValueError(f"a batch of {rows} {'pairs' if self.task == 'ppm' else 'rows'} does "
                             f"not split into {microbatches} microbatches over {shards} "
                             "data-parallel devices; make it a multiple of "
                             f"{microbatches * shards}")
        out = split_microbatches(self.task, arrays, microbatches)
        if self.mesh is None:
            return out
        spec = PartitionSpec(None, ("data", "fsdp"))
        return {k: jax.device_put(v, NamedSharding(self.mesh, spec)) for k, v in out.items()}

    def step(self, batch) -> dict[str, float]:
        arrays = self._place(batch_arrays(self.task, batch), self.config.microbatches)
        lr = float(self.schedule(self.step_count))
        with self._mesh():
            self.params, self.opt_state, metrics = self._step(self.graphdef, self.params,
                                                              self.opt_state, self.rest,
                                                              arrays, task=self.task,
                                                              config=self.config)
        self.step_count += 1
        return {k: float(v) for k, v in jax.device_get(metrics).items()} | {"lr": lr}

    def evaluate(self, batches) -> dict[str, float]:
        """Held-out loss over `batches` (count-weighted), and pair accuracy for the PPM."""
        sums = np.zeros(4)
        for batch in batches:
            arrays = {k: v[0] for k, v in self._place(batch_arrays(self.task, batch), 1).items()}
            with self._mesh():
                sums += np.asarray(_eval_step(self.graphdef, self.params, self.rest, arrays,
                                              task=self.task))
        out = {"loss": sums[0] / max(sums[1], 1.0), "count": sums[1]}
        if self.task != "sft":
            out["accuracy"] = sums[2] / max(sums[3], 1.0)
        return out

    def model(self):
        return nnx.merge(self.graphdef, self.params, self.rest)
