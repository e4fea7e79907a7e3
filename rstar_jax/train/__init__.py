"""Training the policy (SFT) and the PPM: losses, batches from records, one sharded trainer."""

from rstar_jax import _lazy

_EXPORTS = {
    **dict.fromkeys(("OutcomeBatch", "PPMBatch", "SFTBatch", "epochs", "outcome_batches",
                     "pack_sft", "pair_weights", "ppm_batches", "tokenize_sft"),
                    "rstar_jax.train.batches"),
    "Checkpoints": "rstar_jax.train.checkpoint",
    **dict.fromkeys(("batch_shards", "inference_mesh", "initialize", "mesh_from_config"),
                    "rstar_jax.train.devices"),
    **dict.fromkeys(("fit", "flops_per_token"), "rstar_jax.train.loop"),
    **dict.fromkeys(("TrainConfig", "Trainer", "create_sharded", "make_optimizer", "make_schedule"),
                    "rstar_jax.train.trainer"),
}  # fmt: skip
__all__ = list(_EXPORTS)  # imported lazily, below

__getattr__, __dir__ = _lazy.attach(__name__, _EXPORTS)
