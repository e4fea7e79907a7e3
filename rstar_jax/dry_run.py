"""A run's jitted functions compiled ahead of time, with the memory each needs per chip.

    python launch/tpu_evolve.py --config=configs/phi3.py --config.dry_run=True \
        --config.dry_run_topology=v5p:4x4x4

Every jitted function a run of the config calls is lowered with abstract arguments (shapes,
dtypes and the shardings the run gives them) and compiled: the SFT and PPM training steps on the
training mesh (every device), and on the inference mesh (one host's devices, where each
process searches its own problems) the engine's prefill through the prefix store, its fan-out
decode and the PPM's scoring, at each round's and the evaluation's batch and candidates.
Nothing is allocated and no checkpoint is read.

The devices are this machine's, or a Cloud TPU slice's (`dry_run_topology`, e.g. "v5e:8x8",
"v5p:4x4x4", "v6e:8x8"): the TPU compiler (`libtpu`, `pip install -e '.[tpu]'`) compiles for a
topology without the hardware, so a config can be proven on a laptop before paying for a slice.
From XLA's analyses each function reports its arguments, outputs and temporaries per chip, its
peak against the chip's HBM, its compile time and the cost model's flops and bytes.

Shapes are the largest the run can meet: prompts and paths as long as the model's context (the
engine's buckets never exceed it), steps of `max_step_tokens`. What a dry run cannot know: the
host executor's throughput, the input pipeline, preemptions.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rstar_jax.engine.continuous import _chunk, lane_bucket
from rstar_jax.engine.generation import _STOP_SLOTS, _decode, _extend, _pow2, activation_sharding, \
    decode_bucket, prompt_bucket
from rstar_jax.engine.value import Packed, _stored_fork_values, _values
from rstar_jax.models import DEFAULT_RULES, CausalLM
from rstar_jax.train.devices import inference_mesh, mesh_from_config
from rstar_jax.train.loop import flops_per_token
from rstar_jax.train.batches import PPMBatch, SFTBatch
from rstar_jax.train.trainer import TrainConfig, batch_arrays, make_optimizer, \
    opt_state_shardings, split_microbatches, variable_sharding
from rstar_jax.train.trainer import train_step as sharded_train_step

GIB = 2.0**30
# HBM per chip (device_kind -> GiB), from Cloud TPU's system architecture pages. (A v4 topology
# lists each of a chip's two cores as a device, so its HBM per device is not one chip's.)
HBM_GIB = {"TPU v5 lite": 16.0, "TPU v5": 95.0, "TPU v6 lite": 32.0}
# A chip's peak: dense bf16 TFLOP/s and HBM GB/s (Cloud TPU's published figures).
PEAK = {"TPU v5 lite": (197.0, 819.0), "TPU v5": (459.0, 2765.0), "TPU v6 lite": (918.0, 1640.0)}


class DoesNotFit(RuntimeError):
    """A function's peak memory per chip is over the chip's HBM."""


@dataclasses.dataclass
class Compiled:
    """One compiled function: bytes per chip (XLA's memory analysis), compile seconds, and the
    cost model's flops and bytes accessed (per chip; -1 where the backend gives none)."""

    name: str
    arguments: int
    outputs: int
    temporaries: int
    aliased: int  # outputs that reuse donated arguments' buffers
    seconds: float = 0.0
    flops: float = -1.0
    bytes_accessed: float = -1.0
    field: str = ""  # the config field that sizes it, named when it does not fit
    used_by: str = ""  # which stages of the run call it
    # the compiler's refusal when the function cannot fit a chip (then only temporaries are known)
    error: str = ""
    # seconds a call takes at the chip's peak (`roofline`, or analytic FLOPs for a training step);
    # -1: unknown
    ideal_s: float = -1.0

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs + self.temporaries - self.aliased

    def over(self, hbm_gib: float | None) -> bool:
        """Whether it needs more than a chip's `hbm_gib` (None: unknown, never over)."""
        return bool(self.error) or (hbm_gib is not None and self.peak > hbm_gib * GIB)

    def row(self, hbm_gib: float | None) -> str:
        if self.over(hbm_gib):
            fits = "**no**"
        elif hbm_gib is None:
            fits = "-"
        else:
            fits = "yes"
        cost = [f"{x:.3g}" if x >= 0 else "-" for x in (self.flops, self.bytes_accessed)]
        ideal = f"{1e3 * self.ideal_s:.3g}" if self.ideal_s >= 0 else "-"
        return (f"| {self.name} | {self.used_by} | {self.arguments / GIB:.3g} | "
                f"{self.outputs / GIB:.3g} | {self.temporaries / GIB:.3g} | {self.peak / GIB:.3g} "
                f"| {fits} | {self.seconds:.1f} | {cost[0]} | {cost[1]} | {ideal} |")


def compile_call(name: str, fn: Callable, *args, mesh, field: str = "", cache: dict | None = None,
                 **kwargs) -> Compiled:
    """Lowers and compiles `fn(*args, **kwargs)` (a jitted function, abstract arguments) under
    `mesh`. With a `cache` (one dry run's), a call compiled before under the same name and mesh
    is not compiled again: a function the compiler refused is not in JAX's own cache, and a large
    one costs minutes."""
    key = (getattr(fn, "__name__", repr(fn)), name, mesh)
    if cache is not None and key in cache:
        return dataclasses.replace(cache[key], seconds=0.0, field=field)
    result = _compile(name, fn, *args, mesh=mesh, field=field, **kwargs)
    if cache is not None:
        cache[key] = result
    return result


def _compile(name: str, fn: Callable, *args, mesh, field: str, **kwargs) -> Compiled:
    # a large model's step takes minutes
    print(f"dry run: compiling {name}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = fn.lower(*args, **kwargs)
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            # the TPU compiler refuses what cannot fit a chip's HBM
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            need = re.search(r"\(([\d.]+)([KMGT])\) exceeds available", str(e))
            size = float(need.group(1)) * 1024 ** "KMGT".index(need.group(2)) * 1024 if need else -1
            return Compiled(name, 0, 0, int(size), 0, seconds=time.perf_counter() - start,
                            field=field, error=str(e).splitlines()[0])
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    else:
        cost = cost or {}
    sizes = (-1, -1, -1, 0) if m is None else (
        int(m.argument_size_in_bytes), int(m.output_size_in_bytes), int(m.temp_size_in_bytes),
        int(getattr(m, "alias_size_in_bytes", 0)))
    flops, bytes_accessed = float(cost.get("flops", -1.0)), float(cost.get("bytes accessed", -1.0))
    return Compiled(name, *sizes, seconds=seconds, flops=flops, bytes_accessed=bytes_accessed,
                    field=field, ideal_s=roofline(flops, bytes_accessed,
                                                  mesh.devices.flat[0].device_kind))


def roofline(flops: float, bytes_accessed: float, device_kind: str) -> float:
    """Seconds a chip of `device_kind` needs at its peak for `flops` and `bytes_accessed`
    (whichever bounds it), or -1 when the chip's peak or the cost is unknown. XLA's cost analysis
    counts a loop's body once: for a decode that is one token's step."""
    peak = PEAK.get(device_kind)
    if peak is None or flops < 0 or bytes_accessed < 0:
        return -1.0
    return max(flops / (peak[0] * 1e12), bytes_accessed / (peak[1] * 1e9))


def train_flops(model_config, task: str, rows: int, length: int, remat: bool) -> float:
    """FLOPs of one training step of the whole batch, counted from the model (the cost analysis
    counts scanned layers and microbatches once): forward and backward, plus one more forward of
    the blocks under remat; a PPM row is a pair of sequences, and reward models have no LM head."""
    per_token = flops_per_token(model_config, length)
    if task != "sft":  # a reward model scores with its value head
        per_token -= 6 * model_config.hidden_size * model_config.vocab_size
    tokens = rows * length * (2 if task == "ppm" else 1)
    return per_token * tokens * (4 / 3 if remat else 1.0)


# --------------------------------------------------------------------------- devices


def topology_devices(name: str) -> list:
    """The devices of a Cloud TPU slice (e.g. "v5p:4x4x4"), for compiling only: nothing may run
    on them."""
    # libtpu takes a lock file so that one process drives a host's chips; compiling only drives
    # none, and a second dry run (or a test) may compile beside the first.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
    except Exception as e:  # no libtpu, or a name it does not know
        raise ValueError(f"cannot get the devices of TPU topology {name!r} ({type(e).__name__}: "
                         f"{e}); the TPU compiler comes with `pip install -e '.[tpu]'` (libtpu), "
                         "and names look like v5e:8x8, v5p:4x4x4, v6e:8x8") from e


def hbm_gib(device) -> float | None:
    """The HBM of one chip of `device`'s kind in GiB, or None when unknown (a CPU)."""
    if device.platform != "tpu":
        return None
    return HBM_GIB.get(device.device_kind)


def host_devices(topology: str, devices: Sequence) -> list:
    """The devices one host's process searches on, for compiling: the first host's devices of a
    slice, or, where the TPU compiler refuses a program on part of a slice (v5e and v6e: "device
    assignment should include all slice devices"), the devices of a one-host slice of the same
    chips and shape (a v5e or v6e host has 4 chips, 2x2)."""
    first = [d for d in devices if d.process_index == devices[0].process_index]
    if not topology or len(first) == len(devices) or not topology.startswith(("v5e", "v6e")):
        return first
    if len(first) != 4:
        raise ValueError(f"a host of {topology} has {len(first)} chips; the dry run knows 4-chip "
                         "hosts (2x2)")
    return topology_devices(f"{topology.split(':')[0]}:2x2")


def meshes(config: ml_collections.ConfigDict, devices: Sequence, topology: str = "") -> tuple:
    """(training mesh over every device, inference mesh over one host's devices), as a run of
    `config` makes them; `topology`: the slice's name, when `devices` are its compile-only
    devices."""
    return (mesh_from_config(config.mesh, devices),
            inference_mesh(config.inference_mesh, host_devices(topology, devices)))


# --------------------------------------------------------------------------- abstract arguments


def _abstract_state(state, mesh, rules):
    """`state` with each variable's value an abstract array sharded as the real run shards it."""

    def place(v):
        value = v.get_value()
        return v.replace(jax.ShapeDtypeStruct(value.shape, value.dtype,
                                              sharding=variable_sharding(v, mesh, rules)))

    return jax.tree.map(place, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _array(shape, dtype, mesh, axes=None, rules=DEFAULT_RULES):
    """An abstract array: replicated, or laid out by logical `axes` as the engine lays it out."""
    if axes:
        sharding = activation_sharding(mesh, rules, shape, axes)
    else:
        sharding = NamedSharding(mesh, PartitionSpec())
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _bytes_per_chip(tree) -> int:
    """Bytes of one chip's shard of every abstract array in `tree` (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _model(model_config, mesh, *, dtype, param_dtype, attention="xla", remat=False,
           scan_layers=False, value_head=False, lm_head=True, rules=DEFAULT_RULES):
    def make():
        return CausalLM(model_config, dtype=dtype, param_dtype=param_dtype, remat=remat,
                        scan_layers=scan_layers, attention=attention,
                        value_head=value_head, lm_head=lm_head, rules=rules, rngs=nnx.Rngs(0))

    return nnx.eval_shape(make)


# --------------------------------------------------------------------------- training


def train_step(model_config, mesh, *, task: str, rows: int, length: int, dtype=jnp.bfloat16,
               param_dtype=jnp.float32, remat: bool = True, scan_layers: bool = True,
               attention: str = "xla", microbatches: int = 1, loss_chunk: int = 0,
               rules=DEFAULT_RULES, field: str = "") -> Compiled:
    """One training step of `task` ("sft": `rows` packed rows of `length` tokens; "ppm": `rows`
    pairs), compiled on `mesh` as `Trainer.step` runs it."""
    model = _model(model_config, mesh, dtype=dtype, param_dtype=param_dtype, attention=attention,
                   remat=remat, scan_layers=scan_layers, value_head=task == "ppm", rules=rules)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = _abstract_state(params, mesh, rules), _abstract_state(rest, mesh, rules)
    config = TrainConfig(microbatches=microbatches, loss_chunk=loss_chunk)
    tx = make_optimizer(config)
    # (outside the mesh context: optax builds the state's tree with eager ops, which must not run
    # on compile-only devices)
    shardings = opt_state_shardings(tx, params, mesh)
    opt_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             jax.eval_shape(tx.init, params), shardings)
    if task == "sft":
        batch = SFTBatch(*(np.zeros((rows, length), np.int32) for _ in range(4)),
                         np.zeros((rows, length), np.float32))
    else:
        batch = PPMBatch(np.zeros((2 * rows, length), np.int32), np.zeros(2 * rows, np.int32),
                         np.zeros(rows, np.float32))
    spec = NamedSharding(mesh, PartitionSpec(None, ("data", "fsdp")))
    arrays = split_microbatches(task, batch_arrays(task, batch), microbatches)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec) for k, v in arrays.items()}
    parts = f", {microbatches} microbatches" if microbatches > 1 else ""
    name = f"{task} train step ({rows} x {length}{parts})"
    step = compile_call(name, sharded_train_step(mesh, params, shardings), graphdef, params,
                        opt_state, rest, batch, mesh=mesh, task=task, config=config, field=field)
    per_chip = train_flops(model_config, task, rows, length, remat) / mesh.devices.size
    return dataclasses.replace(step, ideal_s=roofline(per_chip, 0.0,
                                                      mesh.devices.flat[0].device_kind))


# --------------------------------------------------------------------------- search and evaluation


@dataclasses.dataclass(frozen=True)
class SearchShape:
    """The engine calls of one kind of search: `batch` problems, `candidates` samples an
    expansion, steps of `step_tokens` sampled tokens (`step_capacity` with the output block), the
    PPM scoring the candidates when `ppm`, decoded in chunks (`ContinuousDecoder`) when
    `continuous`. `field` is the config field that sizes it."""

    name: str
    batch: int
    candidates: int
    step_tokens: int
    step_capacity: int
    ppm: bool
    field: str
    continuous: bool = False


def _store(c, mesh, rows: int, length: int, dtype, rules):
    """A prefix store's arrays as `PrefixStore.take` makes them: per layer keys [S, K, D, L],
    values [S, K, L, D]."""
    axes = ("act_batch", "act_kv_heads", None, None)
    keys = (rows, c.num_key_value_heads, c.head_dim, length)
    values = (rows, c.num_key_value_heads, length, c.head_dim)
    return tuple((_array(keys, dtype, mesh, axes, rules), _array(values, dtype, mesh, axes, rules))
                 for _ in range(c.num_hidden_layers))


def _split(model, mesh, rules):
    graphdef, state = nnx.split(model)
    return graphdef, _abstract_state(state, mesh, rules)


def search_calls(model_config, mesh, shape: SearchShape, *, context: int, store_rows: int,
                 dtype=jnp.bfloat16, attention: str = "xla", vocab_limit: int | None = None,
                 score_rows: int = 64, rules=DEFAULT_RULES,
                 cache: dict | None = None) -> list[Compiled]:
    """The engine's calls in one expansion of `shape`'s search, compiled on `mesh` with
    weights in `dtype` as `Engine.generate` and `ValueScorer.score_children` make them: the
    prefill of the batch's prompts and paths through the prefix store, the decode of `candidates`
    samples of each, and (with `ppm`) the PPM's values of the candidates through its own store.
    The last row is what a PPM search holds at once: the larger of the policy's peak (its
    prefill's, decode's or chunk's) with what the PPM keeps between calls (weights, store), and
    the PPM's peak with what the policy keeps (weights, store, decode buffers)."""
    c = model_config
    i32, f32 = np.int32, np.float32
    b, k = _pow2(shape.batch), shape.candidates
    rows = b * k
    width = context  # the store's length (the context) bounds every prefix
    new = prompt_bucket(context)
    graphdef, state = _split(_model(c, mesh, dtype=dtype, param_dtype=dtype, attention=attention),
                             mesh, rules)

    def vec(n, dtype=i32):
        return _array((n,), dtype, mesh)

    axes = ("act_batch", "act_kv_heads", None, None)

    def prefixes(n):  # `held_prefix` of n rows: per layer keys [n, K, D, W], values [n, K, W, D]
        return tuple((_array((n, c.num_key_value_heads, c.head_dim, width), dtype, mesh, axes,
                             rules),
                      _array((n, c.num_key_value_heads, width, c.head_dim), dtype, mesh, axes,
                             rules))
                     for _ in range(c.num_hidden_layers))

    # the policy's prefix store; the PPM's has the same shape
    store = _store(c, mesh, store_rows, context, dtype, rules)
    prefill = compile_call(
        f"prefill ({b} x {new} through the store)", _extend, graphdef, state, store,
        prefixes(b), vec(b), _array((b, new), i32, mesh), vec(b), vec(b), vec(b), mesh=mesh,
        width=width, field="search.batch or eval.batch", cache=cache)
    out = [prefill]
    prefix_keys = tuple(k for k, _ in prefixes(b))
    prefix_values = tuple(v for _, v in prefixes(b))
    length = decode_bucket(shape.step_tokens)
    buffer = (rows, c.num_key_value_heads, length, c.head_dim)
    buffers = tuple((_array(buffer, dtype, mesh, axes, rules),
                     _array(buffer, dtype, mesh, axes, rules))
                    for _ in range(c.num_hidden_layers))
    decode = compile_call(
        f"decode ({b} x {k} rows x {length} tokens)", _decode, graphdef, state, prefix_keys,
        prefix_values, vec(b), vec(b), _array((b, c.vocab_size), f32, mesh,
                                              ("act_batch", "act_vocab"), rules),
        buffers, vec(rows, bool), vec(b, np.uint32), vec(rows, f32), vec(rows), vec(rows, f32),
        vec(_STOP_SLOTS), _array((), i32, mesh), mesh=mesh, samples=k,
        vocab_limit=vocab_limit or c.vocab_size, pad_id=0, with_logprobs=False,
        field=f"{shape.field} or search.batch", cache=cache)
    out.append(decode)
    # Continuous batching (`ContinuousDecoder`, `search.common.continuous`): a chunk of decode
    # steps for every slot at once, reading the store and the slots' buffers. A search decodes in
    # lockstep otherwise, and never calls it.
    peak = max(prefill.peak, decode.peak)  # the policy's calls
    if shape.continuous:
        places = min(shape.batch, store_rows)
        slots = places * k
        chunk_buffers = tuple((_array((slots, *buffer[1:]), dtype, mesh, axes, rules),
                               _array((slots, *buffer[1:]), dtype, mesh, axes, rules))
                              for _ in range(c.num_hidden_layers))
        state_arrays = (_array((slots, length), i32, mesh), vec(slots), vec(slots, bool),
                        vec(slots))
        lanes = lane_bucket(slots)  # every slot running
        groups = _pow2(places)
        chunk = compile_call(
            f"continuous decode chunk ({places} places x {k} samples, {lanes} lanes)", _chunk,
            graphdef, state, store, chunk_buffers,
            state_arrays, vec(groups), vec(groups), vec(lanes), vec(lanes), vec(lanes),
            vec(lanes, np.uint32), *(_array((), t, mesh) for t in (f32, i32, f32)),
            vec(_STOP_SLOTS), _array((), i32, mesh), _array((), i32, mesh), mesh=mesh, samples=k,
            per=k, width=width,
            vocab_limit=vocab_limit or c.vocab_size, pad_id=0,
            field=f"{shape.field} or search.batch", cache=cache)
        out.append(chunk)
        peak = max(peak, chunk.peak)
    if shape.ppm:
        # A call packs at most score_rows rows (`ValueScorer.score_children`), a child in one
        # row at most, and holds as many prefixes as rows when each prefix fills one: the most
        # of both.
        rows = _pow2(max(8, min(score_rows, b * k)))
        group = _pow2(min(b, rows))
        children = prompt_bucket(shape.step_capacity)
        ppm_graphdef, ppm_state = _split(_model(c, mesh, dtype=dtype, param_dtype=dtype,
                                                attention=attention, value_head=True,
                                                lm_head=False), mesh, rules)
        score = compile_call(
            f"PPM values ({group} prefixes, {rows} rows of {children} tokens)",
            _stored_fork_values,
            ppm_graphdef, ppm_state, store,
            prefixes(group), vec(group), _array((group, new), i32, mesh), vec(group), vec(group),
            Packed(*(_array((rows, children), i32, mesh) for _ in range(3)), vec(rows),
                   vec(group)),
            mesh=mesh, width=width, field=f"{shape.field}", cache=cache)
        out.append(score)
        # Between its calls the policy keeps its weights, its store and the decode's buffers
        # (`Engine` keeps them for the next call), and the PPM its weights and store: each
        # model's calls run beside what the other keeps.
        policy_kept = _bytes_per_chip((state, store, buffers))
        ppm_kept = _bytes_per_chip((ppm_state, store))
        out.append(Compiled(f"held at once: policy and PPM ({b} x {k})",
                            max(peak + ppm_kept, score.peak + policy_kept),
                            0, 0, 0, field=f"{shape.field} or search.batch"))
    for r in out:
        r.used_by = shape.name
    return out


def rescore_call(model_config, mesh, *, rows: int, context: int, dtype=jnp.bfloat16,
                 attention: str = "xla", rules=DEFAULT_RULES) -> Compiled:
    """The PPM's values of `rows` whole solutions as long as the context (`ValueScorer.score`:
    best-of-N at evaluation)."""
    graphdef, state = _split(_model(model_config, mesh, dtype=dtype, param_dtype=dtype,
                                    attention=attention, value_head=True, lm_head=False), mesh,
                             rules)
    length = prompt_bucket(context)
    return compile_call(f"PPM values of {rows} solutions ({length} tokens)", _values, graphdef,
                        state, _array((rows, length), np.int32, mesh),
                        _array((rows,), np.int32, mesh), mesh=mesh, field="model")


# --------------------------------------------------------------------------- the report


def table(title: str, results: Sequence[Compiled], hbm: float | None) -> str:
    head = f"{title}; HBM per chip: {'unknown' if hbm is None else f'{hbm:g} GiB'}"
    lines = [head, "",
             "| function | used by | arguments GiB | outputs GiB | temporaries GiB | peak GiB | "
             "fits | compile s | flops | bytes | ideal ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    note = ("\nflops, bytes: XLA's cost analysis per chip, a loop's body counted once (a decode's: "
            "one token). ideal ms: a call at the chip's peak, bf16 FLOP/s or HBM bandwidth, "
            "whichever bounds it (a training step: its whole batch's FLOPs counted from the "
            "model).\n")
    return "\n".join(lines + [r.row(hbm) for r in merged(results)]) + "\n" + note


def merged(results: Sequence[Compiled]) -> list[Compiled]:
    """One row per function and shape, its users joined (the same compiled call serves several
    stages)."""
    rows: dict[str, Compiled] = {}
    for r in results:
        if r.name in rows:
            first = rows[r.name]
            rows[r.name] = dataclasses.replace(first, used_by=f"{first.used_by}, {r.used_by}",
                                               seconds=first.seconds + r.seconds)
        else:
            rows[r.name] = r
    return list(rows.values())


def check(results: Sequence[Compiled], hbm: float | None) -> None:
    """Raises `DoesNotFit` naming each function over `hbm` GiB and the config field to change."""
    over = [r for r in merged(results) if r.over(hbm)]
    if over:
        limit = "its HBM" if hbm is None else f"{hbm:g} GiB"
        raise DoesNotFit("; ".join(f"{r.name} needs {r.peak / GIB:.3g} GiB per chip, over the "
                                   f"chip's {limit} (change "
                                   f"{r.field or 'the mesh'}){f': {r.error}' if r.error else ''}"
                                   for r in over))
