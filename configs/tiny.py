"""The CPU default: a ~1.7M-parameter Llama-style model trained from scratch, minutes end to end.

    python launch/tpu_evolve.py --config=configs/tiny.py --workdir=runs/tiny
"""

import ml_collections

from rstar_jax import config_lib

VARIANTS = ("default",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; known: {', '.join(VARIANTS)}")
    config = ml_collections.ConfigDict()
    config.variant = variant
    config.seed = 0
    # No checkpoint: the base model (presets.TINY, vocabulary 512) and its SentencePiece
    # tokenizer are trained in-process.
    config.model = config_lib.model_config("tiny", checkpoint="", dtype="float32", param_dtype="float32", remat=False)
    config.mesh = config_lib.mesh_config(data=-1, fsdp=1)
    # Small batches and a high learning rate: a model trained from scratch in minutes.
    config.train = config_lib.train_config(sft_lr=3e-3, ppm_lr=1e-3, sft_batch=8, ppm_batch=16, max_length=512)
    return config
