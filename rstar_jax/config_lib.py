"""Pieces every config in configs/ shares (configs are Python files read by ml_collections
config_flags)."""

from __future__ import annotations

import pathlib

import ml_collections

# The tiny world's base model (scripts/pretrain_tiny.py), shipped with the package.
TINY_BASE = str(pathlib.Path(__file__).parent / "assets" / "tiny_base")


def model_config(preset: str, checkpoint: str, *, dtype: str = "bfloat16",
                 param_dtype: str = "float32", attention: str = "xla", remat: bool = True,
                 scan_layers: bool = True) -> ml_collections.ConfigDict:
    """The policy/PPM model: which architecture (`rstar_jax.models.presets`), where its weights are,
    and how to run it."""
    return ml_collections.ConfigDict({
        # the architecture (models.presets), which the dry run compiles; the run itself reads
        # the checkpoint's config.json (presets.check_architecture compares the two)
        "preset": preset,
        # Hugging Face directory (config.json + safetensors); never a hub id
        "checkpoint": checkpoint,
        "dtype": dtype,  # compute dtype
        "param_dtype": param_dtype,  # master weights
        # "xla" (everywhere) or "dot_product" (fused kernel where the backend has one)
        "attention": attention,
        "remat": remat,  # recompute blocks in the backward pass to fit long sequences
        # training runs the layers as a lax.scan: the compiler sees one block, not every layer
        "scan_layers": scan_layers,
    })


def mesh_config(data: int = 1, fsdp: int = -1, tensor: int = 1) -> ml_collections.ConfigDict:
    """Device mesh; -1 takes the remaining devices."""
    return ml_collections.ConfigDict({
        "data": data,  # data parallel: batch rows split, weights replicated
        "fsdp": fsdp,  # fully sharded data parallel: batch rows and the weights' embed axis split
        "tensor": tensor,  # tensor parallel: attention heads, MLP and vocabulary columns split
    })


def train_config(*, sft_lr: float = 7e-6, ppm_lr: float = 7e-6, sft_batch: int = 128,
                 ppm_batch: int = 512, max_length: int = 4096,
                 microbatches: int = 1) -> ml_collections.ConfigDict:
    """SFT and PPM training (RSTAR.md section 5; defaults are the reference code's: lr 7e-6,
    cosine, weight decay 0.1, 2 epochs of batch 128 for the policy, batch 512 and 5% held out for
    the PPM). Batches are global: rows per step over every device."""
    common = {"schedule": "cosine",  # learning-rate decay after warmup: cosine, linear or constant
              "warmup_fraction": 0.03,  # of the steps, a linear warmup from 0
              "weight_decay": 0.1,  # AdamW's
              "clip_norm": 1.0,  # global gradient norm clipped to this (0: no clipping)
              # a step's batch in this many parts, gradients summed: the same step, less memory
              "microbatches": microbatches,
              # tokens a row holds (SFT: packed examples; PPM/ORM: one sequence); longer examples
              # are left out and counted
              "max_length": max_length,
              # > 0: microbatches are the fewest that keep each chip's share of one within this
              # many tokens (a PPM pair counts both sequences), and `microbatches` is not read
              "tokens_per_chip": 0,
              "steps": 0,  # optimiser steps; 0: `epochs` passes over the round's data
              "save_every": 100}  # optimiser steps between checkpoints
    reward = {**common,
              "learning_rate": ppm_lr,  # peak, after warmup
              "epochs": 2,  # passes over the round's data, when `steps` is 0
              "batch": ppm_batch,  # pairs (ORM: trajectories) a step, over every device
              # fraction of the problems whose pairs are held out: evaluated during training, and
              # the best checkpoint by their accuracy is exported
              "held_out": 0.05}
    return ml_collections.ConfigDict({
        # The policy's supervised fine-tuning on the round's SFT examples (RSTAR.md section 5).
        "sft": {**common,
                "learning_rate": sft_lr,  # peak, after warmup
                "epochs": 2,  # passes over the round's data, when `steps` is 0
                "batch": sft_batch,  # packed rows a step, over every device
                # positions whose logits the SFT loss makes at once (0: a row's whole length); a
                # large vocabulary's float32 logits of a whole batch would not fit a chip
                "loss_chunk": 0},
        # The PPM: the policy with a value head, trained on the round's step pairs (pairwise).
        "ppm": {**reward,
                # the paper's tanh head; False trains as the reference code does
                "value_tanh": True},
        # The outcome reward model, the PPM's baseline (RSTAR.md section 5): trained like the PPM,
        # on whole trajectories labelled right or wrong, in the rounds listed (none: no ORM).
        "orm": {**reward, "rounds": ()},  # rounds that train an ORM
        "distributed": None,  # None: join other processes when the environment lists several
    })


def evolve_config(config: ml_collections.ConfigDict, *, train: str, test: str,
                  bootstrap: str = "few_shot", rounds: int = 4, search: dict | None = None,
                  rounds_search: dict | None = None,
                  eval_search: dict | None = None, searches: int = 1, max_train: int = 0,
                  exclude: str = "", max_test: int = 0, chunk: int = 256, batch: int = 32
                  ) -> ml_collections.ConfigDict:
    """Adds what the self-evolution rounds read (`rstar_jax.evolve`) to `config`.

    train/test: problem specs (`data.load.load_problems`: a benchmark name, "synthetic:...",
    a file); bootstrap: the round-1 policy (`evolve.config.BOOTSTRAP_KINDS`); search: SearchConfig
    fields every round and the evaluation use (budgets); rounds_search: {"round1": {...}, ...}
    per-round fields over the paper's presets; eval_search: the test-time search's fields;
    exclude: a problem spec of problems the policy was trained on before round 1 (its
    pretraining set), dropped from both sets; max_train / max_test: keep at most that many
    (0: all), after the drops.
    """
    config.rounds = rounds  # self-evolution rounds after round 0 (the bootstrap's evaluation)
    # The training and test problems (evolve.config.problem_sets).
    config.problems = ml_collections.ConfigDict({
        # problem spec (data.load.load_problems): a benchmark name, "synthetic:...", a file
        "train": train,
        "test": test,  # problem spec of the evaluation's problems
        # spec of problems the base policy was trained on, dropped from both sets ("": none)
        "exclude": exclude,
        "max_train": max_train,  # keep at most this many training problems (0: all)
        "max_test": max_test})  # keep at most this many test problems (0: all)
    # The round-1 policy (docs/evolve.md, "The bootstrap policy").
    config.bootstrap = ml_collections.ConfigDict({
        # the round-1 policy: "base", "few_shot", "checkpoint" or "reference" (docs/evolve.md)
        "kind": bootstrap,
        "checkpoint": "",  # kind "checkpoint": a local Hugging Face directory
        # kind "reference": fine-tune on the reference solutions of this fraction of the problems
        "fraction": 0.25})
    # The rounds' searches of the training problems (RSTAR.md section 3).
    config.search = ml_collections.ConfigDict({
        "preset": "paper",  # SearchConfig.preset: "paper" or "reference_code"
        "chunk": chunk,  # problems per record shard: a stopped search keeps every finished chunk
        "batch": batch,  # problems searched at once
        # Rows of the policy's and the PPM's prefix stores (0: one per problem of the larger of
        # the search and eval batches). Rows beyond those keep paths a search branched away
        # from; each costs the context's keys and values (the dry run counts them). Fewer rows
        # than the batch turn continuous batching off (it pins a row per problem).
        "prefix_rows": 0,
        # Rows of packed candidates the PPM scores in one call (`ValueScorer(max_rows=)`): a
        # call's scores of each row against its prefix grow with rows x step x context, and run
        # beside what the policy keeps (the dry run's "held at once").
        "ppm_rows": 64,
        "common": search or {},
        **{f"round{r}": (rounds_search or {}).get(f"round{r}", {}) for r in range(1, 5)},
    })
    config.extract = ml_collections.ConfigDict({})  # ExtractConfig fields; empty: the paper's
    # Each round's evaluation on the test problems (rstar_jax/evaluate.py).
    config.eval = ml_collections.ConfigDict({
        "batch": batch,  # problems evaluated at once
        "searches": searches,  # independent test-time MCTS searches per problem
        "search": eval_search or {},  # the test-time search's SearchConfig fields
        # maj@N and best-of-N samples; 0: N = the test-time search's rollouts x searches
        "samples": 0,
        "temperature": 0.7,  # of those samples
        "methods": ("greedy", "sampled", "mcts"),  # evaluate.METHODS run in every round...
        # ...except these rounds, which run only `light_methods` (a time budget)
        "light_rounds": (),
        "light_methods": ("greedy",),  # (evaluate.METHODS)
        "skip_rounds": ()})  # rounds not evaluated at all (a time budget)
    # The sandboxed pool that runs each step's code (rstar_jax/steps/executor.py).
    config.executor = ml_collections.ConfigDict({
        # sandboxed Python processes checking steps on each host; 0: as many as the host's cores
        # allow (steps.executor.host_workers)
        "workers": 2,
        "timeout_s": 5.0,  # a program running longer fails; its worker is killed and replaced
        "memory_mb": 1024})  # address space a program may add to its worker's
    # True: continue in a work directory started with another config (else refused)
    config.allow_config_change = False
    # Searches and evaluations: each process runs its own problems with the policy and the PPM on
    # this mesh over its host's devices (weights in model.dtype; -1 takes the host's devices).
    config.inference_mesh = mesh_config(data=1, fsdp=1, tensor=1)
    # JAX's persistent compilation cache: "workdir" (<the run's local directory>/jax_cache), a path
    # or URL (gs://...), or "" (off). A resumed or preempted run compiles nothing it compiled
    # before.
    config.compilation_cache = "workdir"
    # True: compile every jitted function of the run for the devices, print memory per chip against
    # HBM, stop (rstar_jax.dry_run); with a Cloud TPU topology such as "v5p:4x4x4" or "v5e:8x8" the
    # TPU compiler compiles for that slice without one (pip install -e '.[tpu]').
    config.dry_run = False
    # "" (this machine's devices) or a Cloud TPU slice, e.g. "v5p:4x4x4", "v5e:8x8"
    config.dry_run_topology = ""
    # what to compile: the training steps, the search and evaluation calls
    config.dry_run_parts = "train,search"
    return config


# Problems a host searches (and evaluates) at once, by the slice's chips: what the dry run shows
# fits a chip's HBM with the policy and the PPM tensor-parallel over a host's 4 chips, at the
# paper's candidates (docs/tpu.md). "": fits both v5e (16 GiB) and v5p (95 GiB) chips.
HOST_BATCHES = {"": (2, 2), "v5e": (2, 2), "v5p": (16, 16)}
# ... where a model's smaller KV cache takes more: Qwen2.5-Math-7B's 4 KV heads (57 KB a token
# against Phi-3-mini's 393 KB) let a v5p host search 64 problems (its prefill peaks at 79 GiB).
MODEL_HOST_BATCHES = {("qwen25_math_7b", "v5p"): (64, 32)}
# Rows the PPM scores in one call, by the slice's chips: at Phi-3-mini's context, 2 prefixes and
# 64 rows of 768-token candidates need 10.5 GiB of temporaries a v5e chip (16 rows: 4.4), beside
# what the policy keeps.
PPM_ROWS = {"": 16, "v5e": 16, "v5p": 64}
# Training tokens a chip takes in one microbatch, by the slice's chips: with the layers scanned and
# rematerialised, Phi-3-mini's and Qwen2.5-Math-7B's steps peak within a chip's HBM (docs/tpu.md).
TRAIN_TOKENS_PER_CHIP = {"": 8192, "v5e": 8192, "v5p": 32768}


def pretrained_config(preset: str, checkpoint: str,
                      chips: str | None = None) -> ml_collections.ConfigDict:
    """A run whose policy starts from a pretrained checkpoint (Phi-3, Qwen2.5-Math) on a TPU pod:
    the paper's budgets, NuminaMath-style training problems from a local file, MATH500 to test;
    `chips` ("v5e", "v5p"; default both) sizes the searches' batches (HOST_BATCHES)."""
    if (chips or "") not in HOST_BATCHES:
        raise ValueError(f"unknown chips {chips!r}; known: "
                         f"{', '.join(k for k in HOST_BATCHES if k)}")
    search_batch, eval_batch = MODEL_HOST_BATCHES.get((preset, chips), HOST_BATCHES[chips or ""])
    config = ml_collections.ConfigDict()
    config.seed = 0  # kept in the run's config.json; no stage reads it
    # The base model of the policy and the PPM: architecture, checkpoint, dtypes.
    config.model = model_config(preset, checkpoint)
    # The tokenizer's directory, when it is not the checkpoint's.
    config.tokenizer = ml_collections.ConfigDict({"path": ""})  # "" = the checkpoint directory
    config.mesh = mesh_config(data=1, fsdp=-1, tensor=1)  # the training mesh, over every device
    # Training the policy, the PPM and the ORM of each round (RSTAR.md section 5).
    config.train = train_config()
    evolve_config(config, train="/mnt/data/problems.parquet?preset=numina", test="math500",
                  search={"max_depth": 16, "max_step_tokens": 512, "max_output_tokens": 64},
                  eval_search={"rollouts": 64}, chunk=1024, batch=search_batch)
    config.eval.batch = eval_batch
    config.search.ppm_rows = PPM_ROWS[chips or ""]
    # tensor parallel over a host's chips
    config.inference_mesh = mesh_config(data=1, fsdp=1, tensor=-1)
    config.train.sft.loss_chunk = 512
    config.executor.workers = 0  # a TPU VM host has 100-200 cores
    for task in ("sft", "ppm", "orm"):
        config.train[task].tokens_per_chip = TRAIN_TOKENS_PER_CHIP[chips or ""]
    return config
