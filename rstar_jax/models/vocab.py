"""Giving a checkpoint the seven step tokens: new ids, new rows, sensible starting values.

A policy checkpoint that has never seen `<code>`, `<end_of_step>`... needs a row for each in the
embedding and the LM head. A new row starts at the mean of the trained rows: a random row
would be an outlier the model attends to oddly, and a zero row would give every step token
logit 0, far above what untrained tokens should score.

`convert_checkpoint` does this to a checkpoint directory as downloaded from the hub (Phi-3,
Qwen2.5-Math), writing a new directory with the model and its tokenizer together;
`launch/convert_checkpoint.py` and the evolution's first use of a stock checkpoint call it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from rstar_jax.models import hf, tensor_files
from rstar_jax.models.transformer import CausalLM
from rstar_jax.tokenizer import BACKENDS, STEP_TOKENS, Tokenizer, backend_of, listing

CONVERTED_FILE = "CONVERTED.json"  # what convert_checkpoint did, beside the weights


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _replace(variable, value: jax.Array, rules) -> None:
    old = variable[...]
    if isinstance(old.sharding, NamedSharding):  # keep a sharded model sharded
        value = jax.device_put(value, rules.sharding(variable.axes, value.shape, old.sharding.mesh))
    variable.set_value(value)


def set_new_rows(model: CausalLM, new_ids: list[int], trained_rows: int, num_rows: int) -> None:
    """Grows the embedding (and an untied LM head) to `num_rows` rows and sets rows `new_ids`, and
    every row added by growing, to the mean of rows [0, trained_rows)."""
    config = model.config
    if num_rows < config.vocab_size:
        raise ValueError(f"cannot shrink the vocabulary from {config.vocab_size} to {num_rows} "
                         "rows")
    grow = num_rows - config.vocab_size
    ids = jnp.asarray(new_ids, jnp.int32)

    embed = model.embed[...]
    mean = embed[:trained_rows].astype(jnp.float32).mean(axis=0).astype(embed.dtype)  # [E]
    embed = jnp.concatenate([embed, jnp.broadcast_to(mean, (grow, embed.shape[1]))], axis=0)
    _replace(model.embed, embed.at[ids].set(mean), model.rules)
    if hasattr(model, "lm_head"):
        head = model.lm_head[...]  # [E, V]
        mean = head[:, :trained_rows].astype(jnp.float32).mean(axis=1).astype(head.dtype)
        head = jnp.concatenate([head, jnp.broadcast_to(mean[:, None], (head.shape[0], grow))],
                               axis=1)
        _replace(model.lm_head, head.at[:, ids].set(mean[:, None]), model.rules)
    model.config = config.replace(vocab_size=num_rows)


def add_step_tokens(model: CausalLM, tokenizer: Tokenizer,
                    pad_to_multiple: int = 128) -> dict[str, int]:
    """Adds the step tokens to `tokenizer` (a no-op for tokens it has) and gives each newly added
    token a row starting at the mean embedding. The tables grow, to a multiple of
    `pad_to_multiple` rows (so a tensor axis can shard them), only when the ids do not fit.
    Returns token -> id.

    Pass the checkpoint's own tokenizer: which tokens are new is read off the tokenizer, so a
    tokenizer that already has the step tokens (saved after an earlier round) paired with a base
    checkpoint would leave their rows as the base model's untrained padding."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} ids but the model only "
            f"{model.config.vocab_size} rows; they do not belong together"
        )
    trained_rows = tokenizer.vocab_size
    new = missing_step_tokens(tokenizer)
    ids = tokenizer.add_step_tokens()
    if new:
        rows = max(model.config.vocab_size, _round_up(tokenizer.vocab_size, pad_to_multiple))
        set_new_rows(model, [ids[t] for t in new], trained_rows, rows)
    return ids


def missing_step_tokens(tokenizer: Tokenizer) -> list[str]:
    """The step tokens `tokenizer` does not have as single tokens (a stock checkpoint: all
    seven)."""
    return [t for t in STEP_TOKENS if tokenizer.token_to_id(t) is None]


def _host_device():
    """This host's CPU, where a conversion holds the whole model (an accelerator's memory may not
    fit it); None when JAX runs without a CPU backend (then: the default device)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


def convert_checkpoint(source: str | os.PathLike, out: str | os.PathLike, *,
                       tokenizer: str | os.PathLike | None = None,
                       pad_to_multiple: int = 128) -> dict:
    """Writes to `out` the checkpoint at `source` (a Hugging Face directory: config.json,
    safetensors, the tokenizer files) with the step tokens: its tokenizer with them added and the
    model with a row for each at the mean of the trained rows (`add_step_tokens`). The weights keep
    the dtype they are stored in at `source`; the other rows are copied unchanged.

    `tokenizer`: the directory of the checkpoint's tokenizer when it is not `source` itself. It must
    be the tokenizer the checkpoint was trained with, not one that already has the step tokens (see
    `add_step_tokens`).

    The model is loaded on this host's CPU and written by this process alone (call it on one
    process), into a temporary directory renamed to `out` when complete; `out` must not exist, or
    be empty. When the tokenizer already has every step token nothing is written.

    Returns a summary: source, out, tokenizer, dtype, added (token -> id of the new tokens),
    present (token -> id of those it had), rows_before and rows_after (the embedding table's),
    tokenizer_ids_before and tokenizer_ids_after, written (bool). The same
    summary is written to `out/CONVERTED.json`.
    """
    source, out = pathlib.Path(source).expanduser(), pathlib.Path(out).expanduser()
    tok_dir = pathlib.Path(tokenizer).expanduser() if tokenizer else source
    _check_source(source, tok_dir, given=tokenizer is not None)
    tok = Tokenizer.from_dir(tok_dir)
    summary = {"source": str(source), "out": str(out), "tokenizer": str(tok_dir),
               "rows_before": hf.read_config(source).vocab_size,
               "tokenizer_ids_before": tok.vocab_size}
    missing = missing_step_tokens(tok)
    if not missing:
        ids = tok.step_token_ids
        return summary | {"dtype": None, "added": {}, "present": ids,
                          "rows_after": summary["rows_before"],
                          "tokenizer_ids_after": tok.vocab_size, "written": False}
    if out.resolve() == source.resolve():
        raise ValueError(f"output {out} is the source directory; write the converted checkpoint to "
                         "a new one")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output {out} already exists and is not an empty directory; remove "
                              "it or choose another output directory")
    files = tensor_files.TensorFiles.from_dir(source)
    if "model.embed_tokens.weight" not in files:
        raise ValueError(f"checkpoint {source} has no tensor 'model.embed_tokens.weight'; it is "
                         "not a Llama, Qwen2 or Phi-3 causal LM this repository can load")
    dtype = jnp.dtype(files.get("model.embed_tokens.weight").dtype)

    device = _host_device()
    with jax.default_device(device) if device is not None else contextlib.nullcontext():
        model = hf.from_pretrained(source, dtype=jnp.float32, param_dtype=dtype, value_head=False)
        ids = add_step_tokens(model, tok, pad_to_multiple)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written earlier try
        hf.save_pretrained(model, tmp, this_process_only=True)
    tok.save(tmp)
    summary |= {"dtype": dtype.name, "added": {t: ids[t] for t in missing},
                "present": {t: i for t, i in ids.items() if t not in missing},
                "rows_after": model.config.vocab_size, "tokenizer_ids_after": tok.vocab_size,
                "written": True}
    (tmp / CONVERTED_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # (empty: checked above)
    os.replace(tmp, out)
    return summary


def _check_source(source: pathlib.Path, tok_dir: pathlib.Path, given: bool) -> None:
    """Clear errors, naming the path, for what `from_pretrained` and `Tokenizer.from_dir` would
    otherwise fail on less plainly."""
    if "://" in str(source):
        raise ValueError(f"checkpoint {source} is a URL; copy it to a local directory first")
    if not source.is_dir():
        raise FileNotFoundError(f"checkpoint directory {source} does not exist; pass a Hugging "
                                "Face model directory (config.json, *.safetensors, the tokenizer "
                                "files)")
    if not (source / hf.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"checkpoint directory {source} has no {hf.CONFIG_FILE}; pass the "
                                "model's Hugging Face directory (e.g. from `huggingface-cli "
                                "download <repo> --local-dir DIR`)")
    if backend_of(tok_dir) is None:
        where = "tokenizer directory" if given else "checkpoint directory"
        raise FileNotFoundError(
            f"{where} {tok_dir} has no tokenizer ({' or '.join(BACKENDS.values())}; found: "
            f"{listing(tok_dir)}); download the checkpoint's tokenizer files too, or name the "
            "directory that holds them (--tokenizer)")
