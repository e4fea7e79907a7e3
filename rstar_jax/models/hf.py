"""Hugging Face checkpoints in and out: `config.json` + safetensors <-> `CausalLM`.

One table (`_entries`) says, for every parameter of ours, which checkpoint tensor holds it,
which rows of it (Phi-3 fuses q/k/v and gate/up), and how its layout differs. Loading and
saving both read that table, so the two directions cannot drift apart.

With a mesh, each parameter is built shard by shard from memory-mapped files
(`jax.make_array_from_callback`), so a host only ever holds its own shards in memory. (It may
read more from disk: a shard of a transposed matrix is a strided slice of the file.)
The PPM's value head lives beside the model in `value_head.safetensors`, leaving the
directory a plain causal LM for transformers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from rstar_jax.models import tensor_files
from rstar_jax.models.config import ModelConfig
from rstar_jax.models.sharding import DEFAULT_RULES, ShardingRules
from rstar_jax.models.transformer import CausalLM

CONFIG_FILE = "config.json"
VALUE_HEAD_FILE = "value_head.safetensors"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry; recomputed here


@dataclasses.dataclass(frozen=True)
class _Entry:
    """Where one of our parameters lives in a checkpoint.

    layout: "same"; "linear" (checkpoint [out, in], ours [in, out]); "heads_in" (checkpoint
    [n * D, E], ours [E, n, D]); "heads_out" (checkpoint [E, H * D], ours [H, D, E]);
    "head_bias" (checkpoint [n * D], ours [n, D]).
    """

    path: tuple
    name: str
    layout: str = "same"
    rows: tuple[int, int] | None = None  # this parameter's rows of a fused checkpoint tensor
    value_head: bool = False  # stored in value_head.safetensors


def _entries(config: ModelConfig, lm_head: bool, value_head: bool) -> list[_Entry]:
    h, k, d, i = (config.num_attention_heads, config.num_key_value_heads, config.head_dim,
                  config.intermediate_size)
    out = [_Entry(("embed",), "model.embed_tokens.weight")]
    for n in range(config.num_hidden_layers):
        p, at = f"model.layers.{n}.", ("layers", n, "attn")
        out.append(_Entry(("layers", n, "input_norm", "scale"), p + "input_layernorm.weight"))
        if config.model_type == "phi3":
            qkv = p + "self_attn.qkv_proj.weight"
            out += [_Entry(at + ("q_proj",), qkv, "heads_in", (0, h * d)),
                    _Entry(at + ("k_proj",), qkv, "heads_in", (h * d, (h + k) * d)),
                    _Entry(at + ("v_proj",), qkv, "heads_in", ((h + k) * d, (h + 2 * k) * d))]
        else:
            out += [_Entry(at + (f"{x}_proj",), p + f"self_attn.{x}_proj.weight", "heads_in")
                    for x in "qkv"]
        if config.qkv_bias:
            out += [_Entry(at + (f"{x}_bias",), p + f"self_attn.{x}_proj.bias", "head_bias")
                    for x in "qkv"]
        out.append(_Entry(at + ("o_proj",), p + "self_attn.o_proj.weight", "heads_out"))
        if config.o_bias:
            out.append(_Entry(at + ("o_bias",), p + "self_attn.o_proj.bias"))
        out.append(_Entry(("layers", n, "post_attention_norm", "scale"),
                          p + "post_attention_layernorm.weight"))
        mlp = ("layers", n, "mlp")
        if config.model_type == "phi3":
            gate_up = p + "mlp.gate_up_proj.weight"
            out += [_Entry(mlp + ("gate_proj",), gate_up, "linear", (0, i)),
                    _Entry(mlp + ("up_proj",), gate_up, "linear", (i, 2 * i))]
        else:
            out += [_Entry(mlp + (f"{x}_proj",), p + f"mlp.{x}_proj.weight", "linear")
                    for x in ("gate", "up")]
        out.append(_Entry(mlp + ("down_proj",), p + "mlp.down_proj.weight", "linear"))
        if config.mlp_bias:
            out += [_Entry(mlp + (f"{x}_bias",), p + f"mlp.{x}_proj.bias")
                    for x in ("gate", "up", "down")]
    out.append(_Entry(("norm", "scale"), "model.norm.weight"))
    if lm_head and not config.tie_word_embeddings:
        out.append(_Entry(("lm_head",), "lm_head.weight", "linear"))
    if value_head:
        out += [_Entry(("value_head",), "value_head.weight", "linear", value_head=True),
                _Entry(("value_bias",), "value_head.bias", value_head=True)]
    return out


def _checkpoint_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """Shape a parameter of ours with `shape` has in the checkpoint."""
    if layout == "linear":
        return shape[::-1]
    if layout == "heads_in":
        return (shape[1] * shape[2], shape[0])
    if layout == "heads_out":
        return (shape[2], shape[0] * shape[1])
    if layout == "head_bias":
        return (shape[0] * shape[1],)
    return shape


def _to_ours(tensor: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """Checkpoint tensor -> our layout, as a view (no bytes are read here)."""
    if layout == "linear":
        return tensor.T
    if layout == "heads_in":
        e, n, d = shape
        return tensor.reshape(n, d, e).transpose(2, 0, 1)
    if layout == "heads_out":
        h, d, e = shape
        return tensor.reshape(e, h, d).transpose(1, 2, 0)
    if layout == "head_bias":
        return tensor.reshape(shape)
    return tensor


def _to_checkpoint(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":
        return array.T
    if layout == "heads_in":
        return array.transpose(1, 2, 0).reshape(-1, array.shape[0])
    if layout == "heads_out":
        return array.transpose(2, 0, 1).reshape(array.shape[2], -1)
    if layout == "head_bias":
        return array.reshape(-1)
    return array


def _local(path: str | Path) -> Path:
    if "://" in str(path):
        raise ValueError(
            f"checkpoint path {path} is not a local directory; copy the checkpoint to local disk "
            "(or mount the bucket, e.g. with gcsfuse) and pass that path"
        )
    return Path(path)


def read_config(path: str | Path) -> ModelConfig:
    path = _local(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint dir {path} does not exist")
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"checkpoint dir {path} has no {CONFIG_FILE}; expected a Hugging "
                                "Face model directory")
    return ModelConfig.from_hf_dict(json.loads((path / CONFIG_FILE).read_text()))


def _place(view: np.ndarray, dtype, sharding: jax.sharding.Sharding | None) -> jax.Array:
    if sharding is None:
        return jnp.asarray(np.asarray(view).astype(dtype))
    return jax.make_array_from_callback(view.shape, sharding,
                                        lambda index: np.asarray(view[index]).astype(dtype))


def from_pretrained(path: str | Path, dtype=jnp.float32, *, param_dtype=None,
                    mesh: jax.sharding.Mesh | None = None,
                    rules: ShardingRules = DEFAULT_RULES, attention: str = "xla",
                    remat: bool = False, scan_layers: bool = False, lm_head: bool = True,
                    value_head: bool | None = None, value_tanh: bool | None = None) -> CausalLM:
    """Loads a Hugging Face checkpoint directory (config.json + safetensors) as a `CausalLM`.

    dtype is the compute dtype; param_dtype (default: dtype) the dtype weights are stored in.
    With a mesh, every parameter is created directly in its shards (see `ShardingRules`).
    value_head: None loads `value_head.safetensors` if the directory has one; True also creates
    a zero-initialised head when it has none (a PPM starting from a policy); False skips it.
    """
    path = _local(path)
    config = read_config(path)
    files = tensor_files.TensorFiles.from_dir(path)
    head_file = path / VALUE_HEAD_FILE
    head_files = None
    if head_file.exists() and value_head is not False:
        head_files = tensor_files.TensorFiles([head_file])
    if value_head is None:
        value_head = head_files is not None
    if value_tanh is None:
        value_tanh = head_files is None or head_files.metadata.get("tanh", "true") == "true"
    param_dtype = param_dtype or dtype

    abstract = nnx.eval_shape(lambda: CausalLM(
        config, dtype=dtype, param_dtype=param_dtype, attention=attention, remat=remat,
        scan_layers=scan_layers, lm_head=lm_head, value_head=value_head, value_tanh=value_tanh,
        rules=rules, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    table = {e.path: e for e in _entries(config, lm_head, value_head)}
    used = set()
    loaded = []
    flat = nnx.to_flat_state(state)
    for param_path, variable in tqdm(flat, desc=f"loading {path.name}", unit="tensor", disable=None,
                                     leave=False):
        shape = variable.get_value().shape
        entry = table[param_path]
        source = head_files if entry.value_head else files
        if source is None:  # a new value head for a PPM made from a policy checkpoint
            view = np.zeros(shape, np.float32)
        else:
            view = _checkpoint_view(source, entry, shape, path)
            used.add(entry.name)
        sharding = rules.sharding(variable.axes, shape, mesh) if mesh is not None else None
        loaded.append((param_path, variable.replace(_place(view, param_dtype, sharding))))
    unused = [n for n in files.names() if n not in used and not n.endswith(_IGNORED_SUFFIXES)
              and not (n == "lm_head.weight" and (config.tie_word_embeddings or not lm_head))]
    if unused:
        logging.warning("checkpoint %s has tensors this model does not use: %s", path, unused[:8])
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))


def _checkpoint_view(files: tensor_files.TensorFiles, entry: _Entry, shape,
                     path: Path) -> np.ndarray:
    if entry.name not in files:
        raise KeyError(
            f"checkpoint {path} has no tensor {entry.name!r} (needed for parameter "
            f"{'/'.join(map(str, entry.path))}); its weights do not match its config.json, or a "
            "safetensors file is missing"
        )
    tensor = files.get(entry.name)
    expected = _checkpoint_shape(shape, entry.layout)
    where = entry.name
    if entry.rows is not None:
        begin, end = entry.rows
        where = f"rows {begin}:{end} of {entry.name} {tuple(tensor.shape)}"
        tensor = tensor[begin:end]
    if tuple(tensor.shape) != expected:
        raise ValueError(
            f"tensor {where} in {path} has shape {tuple(tensor.shape)}, but config.json implies "
            f"{expected}; the weights and config.json come from different models"
        )
    return _to_ours(tensor, entry.layout, shape)


def _to_host(array: jax.Array) -> np.ndarray:
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def save_pretrained(model: CausalLM, out_dir: str | Path, *, max_shard_bytes: int = 5 * 2**30,
                    this_process_only: bool = False) -> Path:
    """Writes config.json and safetensors weights that `transformers.AutoModelForCausalLM` loads,
    plus value_head.safetensors when the model has a value head. Tensors are gathered and written
    one at a time. Every process must call this; only process 0 writes. `this_process_only`: the
    model lives on this process's devices alone (e.g. its CPU); this process writes it, and no
    other takes part."""
    out = _local(out_dir)
    config = model.config
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    if this_process_only and not all(v.get_value().is_fully_addressable for v in params.values()):
        raise ValueError(f"save_pretrained({out}, this_process_only=True): the model is sharded "
                         "over other processes' devices too; call save_pretrained on every process "
                         "instead")
    groups: dict[str, list[_Entry]] = {}
    for entry in _entries(config, model.has_lm_head, model.has_value_head):
        groups.setdefault(entry.name, []).append(entry)

    def produce(parts: list[_Entry]):
        return lambda: np.concatenate(
            [_to_checkpoint(_to_host(params[e.path].get_value()), e.layout) for e in parts], axis=0)

    tensors, head = [], []
    for name, parts in groups.items():
        first = params[parts[0].path].get_value()
        shape = [_checkpoint_shape(params[e.path].get_value().shape, e.layout) for e in parts]
        full = (sum(s[0] for s in shape), *shape[0][1:])
        (head if parts[0].value_head else tensors).append((name, full, np.dtype(first.dtype),
                                                           produce(parts)))

    if this_process_only or jax.process_index() == 0:
        _write(out, model, tensors, head, max_shard_bytes)
    else:
        for _, _, _, make in tensors + head:
            make()  # gathering is collective: every process takes part, one writes
    if jax.process_count() > 1 and not this_process_only:
        # nobody reads it before process 0 has finished
        multihost_utils.sync_global_devices(f"save_pretrained {out}")
    return out


def _write(out: Path, model: CausalLM, tensors, head, max_shard_bytes: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dtype_name = str(np.dtype(tensors[0][2]))
    hf = model.config.to_hf_dict() | {"torch_dtype": dtype_name, "dtype": dtype_name}
    (out / CONFIG_FILE).write_text(json.dumps(hf, indent=2))
    tensor_files.write_sharded(out, tensors, max_shard_bytes)
    if head:
        tensor_files.write(out / VALUE_HEAD_FILE, head,
                           metadata={"format": "pt",
                                     "tanh": "true" if model.value_tanh else "false"})
    else:
        (out / VALUE_HEAD_FILE).unlink(missing_ok=True)
