"""The CPU default: the tiny world, all four rounds on 2 CPU cores in minutes.

    python launch/tpu_evolve.py --config=configs/tiny.py --workdir=runs/tiny
    python launch/tpu_evolve.py --config=configs/tiny.py:smoke --workdir=/tmp/smoke   # the tests' path

The policy is the `tiny` preset (1.7M parameters, a 512-piece SentencePiece vocabulary)
pretrained on the generator's reference solutions of level 1-2 problems
(`scripts/pretrain_tiny.py`; shipped in rstar_jax/assets/tiny_base). It is also the round-1
bootstrap policy, the stand-in for the paper's large bootstrap model. Problems come from the
synthetic generator (levels 1-3); level 3 is new to the base model.
"""

import ml_collections

from rstar_jax import config_lib

VARIANTS = ("default", "smoke")
# Generator seeds of the training and test problems; scripts/pretrain_tiny.py keeps the base
# model's pretraining problems out of both.
TRAIN_SEED, TEST_SEED = 1, 2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; known: {', '.join(VARIANTS)}")
    smoke = variant == "smoke"
    config = ml_collections.ConfigDict()
    config.variant = variant
    config.seed = 0
    config.model = config_lib.model_config("tiny", checkpoint=config_lib.TINY_BASE, dtype="float32",
                                           param_dtype="float32", remat=False)
    config.mesh = config_lib.mesh_config(data=-1, fsdp=1)
    # Small batches and a high learning rate: a small model, minutes of training.
    config.train = config_lib.train_config(sft_lr=1e-3, ppm_lr=1e-3, sft_batch=8, ppm_batch=16, max_length=512)
    n_train, n_test = (8, 4) if smoke else (192, 64)
    budget = {"max_depth": 8, "max_step_tokens": 96, "max_output_tokens": 24}
    per_round = {"round1": {"candidates": 4, "rollouts": 4},
                 **{f"round{r}": {"candidates": 4, "rollouts": 6 if not smoke else 4} for r in (2, 3, 4)}}
    config_lib.evolve_config(
        config, train=f"synthetic:n={n_train},seed={TRAIN_SEED},levels=123",
        test=f"synthetic:n={n_test},seed={TEST_SEED},levels=123",
        bootstrap="base", search=budget, rounds_search=per_round,
        eval_search={"candidates": 4, "rollouts": 4}, chunk=4 if smoke else 64, batch=32)
    if smoke:  # a few optimiser steps, each saved: the tests stop and resume training
        config.train.sft.save_every = config.train.ppm.save_every = 1
        config.train.ppm.batch = 8
    return config
