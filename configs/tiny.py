"""The CPU default: a ~1.7M-parameter Llama-style model trained from scratch, minutes end to end.

    python launch/tpu_evolve.py --config=configs/tiny.py --workdir=runs/tiny
    python launch/tpu_evolve.py --config=configs/tiny.py:smoke --workdir=runs/smoke   # seconds, for tests
"""

import ml_collections

from rstar_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant not in ("default", "smoke"):
        raise ValueError(f"unknown tiny variant {variant!r}; use 'default' or 'smoke'")
    config = ml_collections.ConfigDict()
    config.variant = variant
    config.seed = 0
    # No checkpoint: the base model is pretrained in-process (or read from the workdir's cache).
    config.model = config_lib.model_config("tiny", checkpoint="", dtype="float32", param_dtype="float32", remat=False)
    config.tokenizer = ml_collections.ConfigDict({"vocab_size": 512})  # SentencePiece, trained in-process
    config.mesh = config_lib.mesh_config(data=-1, fsdp=1)
    if variant == "smoke":
        config.tokenizer.vocab_size = 320
    return config
