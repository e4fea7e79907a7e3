"""rStar-Math with microsoft/Phi-3-mini-4k-instruct as the policy and PPM base, on a TPU pod.

    python launch/tpu_evolve.py --config=configs/phi3.py \
        --config.model.checkpoint=/mnt/models/Phi-3-mini-4k-instruct --workdir=gs://bucket/run
"""

import ml_collections

from rstar_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: the slice's chips, "v5e" or "v5p" (configs/phi3.py:v5p), which sizes the searches'
    batches; none: batches that fit both."""
    return config_lib.pretrained_config("phi3_mini_4k",
                                        checkpoint="/mnt/models/Phi-3-mini-4k-instruct", chips=arg)
