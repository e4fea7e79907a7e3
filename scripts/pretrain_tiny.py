"""Pretrains the tiny world's base model: the checkpoint `configs/tiny.py` starts from.

A 1.7M-parameter model needs tens of minutes of CPU to learn to copy a question's numbers into
its code (DESIGN.md, "The tiny world"), more than the whole 15-minute default may spend. So this
script does that once: it trains a SentencePiece tokenizer and the `tiny` preset from random
weights on the generator's reference solutions of levels 1-2 only (level 3 is left for search to
find), none of them a problem the tiny config trains or evaluates on, and writes a Hugging Face
directory (config.json, safetensors, tokenizer.model). The result ships as
`rstar_jax/assets/tiny_base`; rerun this to rebuild it:

    python scripts/pretrain_tiny.py --out=/tmp/tiny_base --steps=6000
    cp /tmp/tiny_base/model/* rstar_jax/assets/tiny_base/

It resumes from `--out`'s checkpoints when stopped, and prints greedy accuracy per level on
held-out problems every `--eval_every` steps.
"""

from __future__ import annotations

import json
import pathlib
import random
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_OUT = flags.DEFINE_string("out", "/tmp/tiny_base", "Output directory (checkpoints, model/).")
_STEPS = flags.DEFINE_integer("steps", 6000, "Optimiser steps.")
_ROWS = flags.DEFINE_integer("rows", 8, "Packed rows of 512 tokens per step.")
_LR = flags.DEFINE_float("lr", 3e-3, "Peak learning rate (cosine to 10%).")
_PROBLEMS = flags.DEFINE_integer("problems", 20000, "Generated training problems.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 500, "Greedy evaluation every this many steps.")
_EXPORT_ONLY = flags.DEFINE_bool("export_only", False, "Export the latest checkpoint to model/ and stop.")
_EVAL_N = flags.DEFINE_integer("eval_n", 48, "Held-out problems per evaluation (levels 1-3).")
SEED = 100  # the generator seed of the pretraining problems; the tiny config's seeds are small


def main(argv):
    del argv
    import numpy as np
    from flax import nnx

    from configs import tiny
    from rstar_jax import evaluate, save_pretrained
    from rstar_jax.data import SFTExample, synthetic
    from rstar_jax.data.dedup import decontaminate
    from rstar_jax.engine import Engine
    from rstar_jax.evolve import problem_sets
    from rstar_jax.models import CausalLM, presets
    from rstar_jax.search.config import SearchConfig
    from rstar_jax.steps import format as fmt
    from rstar_jax.steps.executor import CodeExecutor
    from rstar_jax.tokenizer import Tokenizer
    from rstar_jax.train import Checkpoints, TrainConfig, Trainer, fit, pack_sft, tokenize_sft

    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny.get_config()
    train_set, test_set = problem_sets(config.problems)
    problems = synthetic.generate(_PROBLEMS.value, seed=SEED, levels=(1, 2))
    problems, overlap = decontaminate(problems, {"tiny_train": train_set, "tiny_test": test_set})
    held_out = synthetic.generate(_EVAL_N.value, seed=SEED + 1)
    print(f"{len(problems)} pretraining problems ({sum(overlap.exact.values())} dropped: in the tiny config's sets)")

    texts = [fmt.policy_prompt(p.question) + p.metadata["solution"] for p in problems]
    tok_dir = out / "model"
    if (tok_dir / "tokenizer.model").exists():  # a resumed run keeps the ids its checkpoints were trained with
        tokenizer = Tokenizer.from_dir(tok_dir)
    else:
        tokenizer = Tokenizer.train_sentencepiece(texts[:2000], tok_dir, vocab_size=presets.get("tiny").vocab_size)
    examples = [SFTExample(p.id, fmt.policy_prompt(p.question), p.metadata["solution"]) for p in problems]
    sequences = list(tokenize_sft(examples, tokenizer))

    def batches():  # the same order on every run, so a resumed run continues exactly
        for epoch in range(10**6):
            order = list(sequences)
            random.Random(epoch).shuffle(order)
            yield from pack_sft(order, rows=_ROWS.value, length=512, pad_id=tokenizer.pad_id)

    model = CausalLM(presets.get("tiny"), rngs=nnx.Rngs(0))
    schedule = TrainConfig(learning_rate=_LR.value, warmup_steps=min(100, _STEPS.value), total_steps=_STEPS.value,
                           end_lr_fraction=0.1, weight_decay=0.01)
    trainer = Trainer(model, schedule, "sft")
    search = SearchConfig(max_depth=8, max_step_tokens=96, max_output_tokens=24)
    every, total = _EVAL_EVERY.value, _STEPS.value
    with Checkpoints(out / "ckpt", keep=2, every=every) as ckpt, CodeExecutor(num_workers=2) as executor:
        if _EXPORT_ONLY.value:
            ckpt.restore_latest(trainer)
            targets = []
        else:  # train to each evaluation point; fit resumes from the checkpoint the last one saved
            targets = sorted({min(t, total) for t in range(every, total + every, every)} - set(range(
                (ckpt.latest_step() or 0) + 1)))
        for target in targets:
            fit(trainer, batches(), steps=target, checkpoints=ckpt, log_every=50, progress=True)
            engine = Engine(trainer.model(), vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
            sols = evaluate.solve(held_out, engine, executor, tokenizer, search=search, progress=False)
            by_level = {}
            for s in sols:
                by_level.setdefault(s.problem.metadata["level"], []).append(s.candidates[0].correct)
            line = {f"level{k}": round(float(np.mean(v)), 3) for k, v in sorted(by_level.items())}
            print(f"step {trainer.step_count} greedy accuracy {evaluate.accuracy(sols):.3f} {line}", flush=True)
        if targets:
            ckpt.save(trainer, data_position=trainer.step_count, force=True)  # one batch a step
    save_pretrained(trainer.model(), out / "model")
    tokenizer.save(out / "model")
    (out / "model" / "PROVENANCE.json").write_text(json.dumps({
        "script": "scripts/pretrain_tiny.py", "steps": trainer.step_count, "schedule_steps": _STEPS.value,
        "rows": _ROWS.value, "lr": _LR.value, "problems": len(problems), "generator_seed": SEED, "levels": [1, 2]},
        indent=2) + "\n")
    print(f"wrote {out / 'model'}")


if __name__ == "__main__":
    app.run(main)
