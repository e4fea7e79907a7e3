"""The CPU default: the tiny world, all four rounds on 2 CPU cores in minutes.

    python launch/tpu_evolve.py --config=configs/tiny.py --workdir=runs/tiny
    python launch/tpu_evolve.py --config=configs/tiny.py:smoke --workdir=/tmp/smoke   # the tests' path
    python scripts/tiny_study.py --workdir=runs/study   # the study variant and its ablation (docs/tiny_world.md)

The policy is the `tiny` preset (1.7M parameters, a 512-piece SentencePiece vocabulary)
pretrained on the generator's reference solutions of level 1-2 problems
(`scripts/pretrain_tiny.py`; shipped in rstar_jax/assets/tiny_base). It is also the round-1
bootstrap policy, the stand-in for the paper's large bootstrap model. Problems come from the
synthetic generator (levels 1-3); level 3 is new to the base model.
"""

import ml_collections

from rstar_jax import config_lib

VARIANTS = ("default", "smoke", "study")
# Generator seeds of the training and test problems, and the shipped base's pretraining problems
# (scripts/pretrain_tiny.py; rstar_jax/assets/tiny_base/PROVENANCE.json), which the rounds drop
# from both sets.
TRAIN_SEED, TEST_SEED = 1, 2
PRETRAINING = "synthetic:n=20000,seed=100,levels=12"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; known: {', '.join(VARIANTS)}")
    smoke, study = variant == "smoke", variant == "study"
    config = ml_collections.ConfigDict()
    config.variant = variant  # "default", "smoke" or "study" (VARIANTS): the file's argument
    config.seed = 0  # kept in the run's config.json; no stage reads it
    config.model = config_lib.model_config("tiny", checkpoint=config_lib.TINY_BASE, dtype="float32",
                                           param_dtype="float32", remat=False,
                                           scan_layers=False)  # 4 layers compile in seconds
    config.mesh = config_lib.mesh_config(data=-1, fsdp=1)
    # Small batches and a high learning rate: a small model, minutes of training, sized in steps
    # (the paper's 2 epochs of a few hundred examples would be a handful of steps).
    config.train = config_lib.train_config(sft_lr=3e-4, ppm_lr=1e-3, sft_batch=8, ppm_batch=8,
                                           max_length=512)
    # A step takes about 1 s here (8 x 512 tokens, or 8 pairs): several passes over a round's
    # examples and pairs.
    steps = (2, 2, 2) if smoke else (20, 40, 40)
    config.train.sft.steps, config.train.ppm.steps, config.train.orm.steps = steps
    config.train.ppm.held_out = config.train.orm.held_out = 0.1
    config.train.orm.rounds = (1, 2, 3, 4) if study else (4,)
    n_train, n_test = {"default": (64, 256), "smoke": (8, 4), "study": (128, 512)}[variant]
    # Programs run in a fraction of what sampling takes: whole batches sample faster than halves.
    budget = {"max_depth": 8, "max_step_tokens": 96, "max_output_tokens": 24, "overlap": False}
    rollouts = 4 if smoke else 8
    # One budget every round, so the rounds' searches measure their policies. The tiny policy is
    # far more certain than a 7B model: at the paper's 0.7 its four samples of a step are mostly
    # the same text, and the trees are single paths. Measured on 96 round-1 problems (64 of
    # level 3): 136 trajectories and 2 step pairs at 0.7, 178 and 8 at 1.2.
    per_round = {f"round{r}": {"candidates": 4, "rollouts": rollouts, "temperature": 1.2}
                 for r in (1, 2, 3, 4)}
    # Round 4 searches the problems it left unsolved again (the paper: 64 rollouts instead of
    # 16); here with half the rollouts in the 15-minute default, twice as many in the study.
    per_round["round4"]["unsolved_rollouts"] = 2 * rollouts if study else rollouts // 2
    # The base solves level 1 greedily already; half the training problems are level 3, where
    # the rounds have to find what the base cannot write. The test set is level 1-3 alike.
    # The base's pretraining problems are dropped from both sets (a few level-1 problems of any
    # seed are among them): each set is drawn a little larger and cut to its size after the drop.
    def spec(n, seed, levels):
        return f"synthetic:n={n + max(4, n // 16)},seed={seed},levels={levels}"

    config_lib.evolve_config(
        config, train=spec(n_train, TRAIN_SEED, "1233"), test=spec(n_test, TEST_SEED, "123"),
        exclude=PRETRAINING, max_train=n_train, max_test=n_test,
        bootstrap="base", search=budget, rounds_search=per_round,
        # (2 candidates an expansion, 4 in the smoke test: the trajectory budget, N = 4, is the
        # same)
        eval_search={"candidates": 4 if smoke else 2, "rollouts": 4, "temperature": 1.0},
        chunk=4 if smoke else 64, batch=64)
    # Test-time sampling at the paper's test temperature: at 0.7 the samples of a tiny policy are
    # mostly one text, and maj@k and best-of-N would be greedy again.
    config.eval.temperature = 1.0
    # The 15-minute budget: round 0 is evaluated greedily, round 4 with every method, rounds 1-3
    # not at all (each round's search of the training problems, at one budget, shows its
    # policy's progress). The study's 90 minutes: every method in rounds 0 and 4, greedy (and
    # the PPM's and ORM's AUC over the greedy answers) in rounds 1-3. The smoke test: everything.
    config.eval.light_rounds = {"default": (0,), "smoke": (), "study": (1, 2, 3)}[variant]
    config.eval.skip_rounds = (1, 2, 3) if variant == "default" else ()
    # The tiny model's typical wrong step differs from the right one by a copied number, a few
    # characters: the paper's 20-character filter would drop exactly those pairs. A problem
    # solved once in many trajectories is a hard one the rounds have to learn from, so it is
    # kept (the paper drops problems under 50% correct).
    config.extract.min_distance = 1
    config.extract.min_correct_fraction = 0.0
    if smoke:  # a few optimiser steps, each saved: the tests stop and resume training
        # (and no compilation cache: the tests run many work directories in one process)
        config.compilation_cache = ""
        config.train.sft.save_every = config.train.ppm.save_every = config.train.orm.save_every = 1
    return config
