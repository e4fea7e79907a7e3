"""rStar-Math with Qwen/Qwen2.5-Math-7B as the policy and PPM base, on a TPU pod.

    python launch/tpu_evolve.py --config=configs/qwen25_math_7b.py \
        --config.model.checkpoint=/mnt/models/Qwen2.5-Math-7B --workdir=gs://bucket/run
"""

import ml_collections

from rstar_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: the slice's chips, "v5e" or "v5p" (configs/qwen25_math_7b.py:v5p), which sizes the searches'
    batches; none: batches that fit both."""
    return config_lib.pretrained_config("qwen25_math_7b", checkpoint="/mnt/models/Qwen2.5-Math-7B",
                                        chips=arg)
