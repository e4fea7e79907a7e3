"""Compiles a config's sharded steps on abstract shapes and reports memory per device.

Nothing is allocated and no checkpoint is read: parameters, optimizer state and batches are
`jax.ShapeDtypeStruct`s with the shardings the real run gives them, so a TPU user can check a
mesh, batch and sequence length before paying for the slice (on CPU with simulated devices
too: `--xla_force_host_platform_device_count=8`). Reported per device from XLA's
`memory_analysis()`: arguments (parameters, optimizer state, batch), outputs, temporaries.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rstar_jax.models import DEFAULT_RULES, CausalLM
from rstar_jax.train.batches import PPMBatch, SFTBatch
from rstar_jax.train.trainer import (
    TrainConfig,
    batch_arrays,
    make_optimizer,
    opt_state_shardings,
    split_microbatches,
    train_step,
    variable_sharding,
)


@dataclasses.dataclass
class Memory:
    """Bytes per device of one compiled step."""

    name: str
    arguments: int
    outputs: int
    temporaries: int
    aliased: int  # outputs that reuse donated arguments' buffers

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs + self.temporaries - self.aliased

    def row(self) -> str:
        gib = 2.0**30
        return (f"| {self.name} | {self.arguments / gib:.3g} | {self.outputs / gib:.3g} | "
                f"{self.temporaries / gib:.3g} | {self.peak / gib:.3g} |")


def _memory(name: str, compiled) -> Memory:
    m = compiled.memory_analysis()
    if m is None:  # a backend without the analysis
        return Memory(name, -1, -1, -1, 0)
    return Memory(name, int(m.argument_size_in_bytes), int(m.output_size_in_bytes), int(m.temp_size_in_bytes),
                  int(getattr(m, "alias_size_in_bytes", 0)))


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _abstract_state(state, mesh, rules):
    """`state` with each variable's value an abstract array sharded as the real run shards it."""

    def place(v):
        value = v.get_value()
        return v.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=variable_sharding(v, mesh, rules)))

    return jax.tree.map(place, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _abstract_batch(task: str, rows: int, length: int, microbatches: int, mesh) -> dict:
    """A batch laid out as `Trainer.step` lays it out, as abstract arrays."""
    if task == "sft":
        batch = SFTBatch(*(np.zeros((rows, length), np.int32) for _ in range(4)), np.zeros((rows, length), np.float32))
    else:
        batch = PPMBatch(np.zeros((2 * rows, length), np.int32), np.zeros(2 * rows, np.int32),
                         np.zeros(rows, np.float32))
    spec = NamedSharding(mesh, PartitionSpec(None, ("data", "fsdp")))
    arrays = split_microbatches(task, batch_arrays(task, batch), microbatches)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec) for k, v in arrays.items()}


def train_step_memory(model_config, mesh, *, task: str, rows: int, length: int, dtype=jnp.bfloat16,
                      param_dtype=jnp.float32, remat: bool = True, attention: str = "xla", microbatches: int = 1,
                      rules=DEFAULT_RULES) -> Memory:
    """Compiles one training step of `task` ("sft": `rows` packed rows of `length` tokens;
    "ppm": `rows` pairs) on `mesh` and returns its memory per device."""

    def make():
        return CausalLM(model_config, dtype=dtype, param_dtype=param_dtype, remat=remat, attention=attention,
                        value_head=task == "ppm", rules=rules, rngs=nnx.Rngs(0))

    graphdef, params, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
    params, rest = _abstract_state(params, mesh, rules), _abstract_state(rest, mesh, rules)
    config = TrainConfig(microbatches=microbatches)
    tx = make_optimizer(config)
    with jax.set_mesh(mesh):
        shardings = opt_state_shardings(tx, params, mesh)
        opt_state = _abstract(jax.eval_shape(tx.init, params), shardings)
        batch = _abstract_batch(task, rows, length, microbatches, mesh)
        step = train_step(mesh, params, shardings)
        compiled = step.lower(graphdef, params, opt_state, rest, batch, task=task, config=config).compile()
    return _memory(f"{task} train step ({rows} x {length})", compiled)


def forward_memory(model_config, mesh, *, rows: int, length: int, dtype=jnp.bfloat16, param_dtype=jnp.float32,
                   value_head: bool = False, attention: str = "xla", rules=DEFAULT_RULES) -> Memory:
    """Compiles a forward pass over `rows` x `length` tokens (a search prefilling its B prompts
    and paths, or the PPM scoring them) and returns its memory per device."""

    def make():
        return CausalLM(model_config, dtype=dtype, param_dtype=param_dtype, attention=attention,
                        value_head=value_head, lm_head=not value_head, rules=rules, rngs=nnx.Rngs(0))

    graphdef, state = nnx.split(nnx.eval_shape(make))
    state = _abstract_state(state, mesh, rules)
    ids = jax.ShapeDtypeStruct((rows, length), np.int32, sharding=NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))

    def run(state, ids):
        model = nnx.merge(graphdef, state)
        return model.value(ids) if value_head else model(ids)[:, -1]

    with jax.set_mesh(mesh):
        compiled = jax.jit(run).lower(state, ids).compile()
    return _memory(f"{'PPM' if value_head else 'policy'} forward ({rows} x {length})", compiled)


def kv_cache_memory(model_config, mesh, *, rows: int, length: int, dtype=jnp.bfloat16) -> Memory:
    """The KV cache of decoding `rows` sequences of `length` tokens (a search's B x K samples),
    per device: rows over data and fsdp, key/value heads over tensor (when they divide)."""
    c = model_config
    total = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * rows * length * jnp.dtype(dtype).itemsize
    batch_shards = min(rows, mesh.shape["data"] * mesh.shape["fsdp"])
    head_shards = mesh.shape["tensor"] if c.num_key_value_heads % mesh.shape["tensor"] == 0 else 1
    return Memory(f"KV cache ({rows} x {length})", math.ceil(total / (batch_shards * head_shards)), 0, 0, 0)


def table(memories: list[Memory], mesh) -> str:
    shape = ", ".join(f"{k}={v}" for k, v in mesh.shape.items())
    lines = [f"memory per device, GiB ({mesh.devices.size} x {mesh.devices.flat[0].platform}; mesh {shape})",
             "| step | arguments | outputs | temporaries | peak |", "|---|---|---|---|---|"]
    return "\n".join(lines + [m.row() for m in memories]) + "\n"
