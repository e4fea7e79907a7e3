"""The memory table of docs/gpu.md: what each model preset needs on one GPU, from its shape alone.

    python scripts/gpu_memory.py

Lower bounds, counted from `rstar_jax.models.presets` (no activations, no XLA temporaries):
- search: the policy and the PPM held at once in bf16 (2 bytes a parameter each) plus the
  policy's KV cache of ROWS rows of the model's whole context (layers x 2 x KV heads x head dim
  x 2 bytes a token);
- training: float32 weights, float32 gradients and AdamW's two float32 moments, 16 bytes a
  parameter (the configs' `model.param_dtype="float32"`); with `param_dtype="bfloat16"` all four
  are bf16, 8 bytes a parameter.
The compiled peak of every function of a run is what `--config.dry_run=True` prints.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from rstar_jax.models import presets  # noqa: E402

GIB = 2**30
PRESETS = ("tiny", "qwen25_math_1p5b", "phi3_mini_4k", "qwen25_math_7b")
ROWS = 32  # rows the search decodes at once: the pod configs' 2 problems x 16 candidates (round 4)
GPUS_GB = (24, 40, 80)  # memory as sold, in 10^9 bytes


def kv_bytes_per_token(c) -> int:
    return c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 2


def row(name: str) -> dict[str, float]:
    """The figures of one preset, in GiB except `params` and `kv_kb` (KB a token)."""
    c = presets.get(name)
    n = c.num_params()
    kv_row = kv_bytes_per_token(c) * c.max_position_embeddings / GIB
    return {"params": n, "bf16": 2 * n / GIB, "f32": 4 * n / GIB,
            "kv_kb": kv_bytes_per_token(c) / 1e3, "context": c.max_position_embeddings,
            "kv_row": kv_row, "search": 2 * 2 * n / GIB + ROWS * kv_row,
            "train32": 16 * n / GIB, "train16": 8 * n / GIB}


def fits(gib: float) -> str:
    """The GPUs (of GPUS_GB) whose memory exceeds `gib`."""
    names = [f"{gb} GB" for gb in GPUS_GB if gb * 1e9 / GIB > gib]
    return ", ".join(names) or "none"


def gib(x: float) -> str:
    return f"{x:.3g} GiB"


def count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def table() -> str:
    lines = [
        "| preset | parameters | weights bf16 / f32 GiB | KV cache a token (bf16) | KV of one "
        f"full-context row | search: policy + PPM bf16 + {ROWS} rows | fits | training f32 + "
        "AdamW (16 B/param) | fits | training bf16 (8 B/param) | fits |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in PRESETS:
        r = row(name)
        lines.append(
            f"| {name} | {count(r['params'])} | {r['bf16']:.3g} / {r['f32']:.3g} | "
            f"{r['kv_kb']:.1f} KB | {gib(r['kv_row'])} ({r['context']} tokens) | "
            f"{gib(r['search'])} | {fits(r['search'])} | {gib(r['train32'])} | "
            f"{fits(r['train32'])} | {gib(r['train16'])} | {fits(r['train16'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
