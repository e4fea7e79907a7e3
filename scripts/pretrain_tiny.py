"""Pretrains the tiny world's base model: the checkpoint `configs/tiny.py` starts from.

A 1.7M-parameter model needs tens of minutes of CPU to learn to copy a question's numbers into
its code (DESIGN.md, "The tiny world"), more than the whole 15-minute default may spend. So this
script does that once: it trains a SentencePiece tokenizer and the `tiny` preset from random
weights on the generator's reference solutions of levels 1-2 only (level 3 is left for search to
find), none of them a problem of the tiny config's seeds at the time it ran (the config also drops
these problems from its sets: `configs/tiny.py` PRETRAINING), and writes a Hugging Face
directory (config.json, safetensors, tokenizer.model). The result ships as
`rstar_jax/assets/tiny_base`; rerun this to rebuild it:

    python scripts/pretrain_tiny.py --out=/tmp/tiny_base --steps=6000
    cp /tmp/tiny_base/model/* rstar_jax/assets/tiny_base/

It resumes from `--out`'s checkpoints when stopped, and prints greedy accuracy per level on
held-out problems every `--eval_every` steps. At the end it evaluates `--final_eval_n` held-out
problems per level and writes the command, the schedule and that accuracy to
`model/PROVENANCE.json`.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_OUT = flags.DEFINE_string("out", "/tmp/tiny_base", "Output directory (checkpoints, model/).")
_STEPS = flags.DEFINE_integer("steps", 6000, "Optimiser steps.")
_ROWS = flags.DEFINE_integer("rows", 8, "Packed rows of 512 tokens per step.")
_LR = flags.DEFINE_float("lr", 3e-3, "Peak learning rate (cosine to 10%).")
_PROBLEMS = flags.DEFINE_integer("problems", 20000, "Generated training problems.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 500, "Greedy evaluation every this many steps.")
_EXPORT_ONLY = flags.DEFINE_bool("export_only", False,
                                 "Export the latest checkpoint to model/ and stop.")
_EVAL_N = flags.DEFINE_integer("eval_n", 48, "Held-out problems per evaluation (levels 1-3).")
_FINAL_EVAL_N = flags.DEFINE_integer("final_eval_n", 128,
                                     "Held-out problems per level in the final evaluation.")
_LEVELS = flags.DEFINE_list("levels", ["1", "2"],
                            "Levels of the pretraining problems, in turn (1,2,1,2,3: a "
                            "fifth of level 3).")
_INIT = flags.DEFINE_string("init", "",
                            "A model directory to continue from (its tokenizer is kept); empty: "
                            "random weights and a new tokenizer.")
SEED = 100  # the generator seed of the pretraining problems; the tiny config's seeds are small
TINY_SETS = 4096


def main(argv):
    del argv
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from configs import tiny
    from rstar_jax import evaluate, save_pretrained
    from rstar_jax.data import synthetic
    from rstar_jax.data.dedup import decontaminate
    from rstar_jax.engine import Engine
    from rstar_jax.models import CausalLM, from_pretrained, presets
    from rstar_jax.search.config import SearchConfig
    from rstar_jax.steps import format as fmt
    from rstar_jax.steps.executor import CodeExecutor
    from rstar_jax.tokenizer import Tokenizer
    from rstar_jax.train import Checkpoints, TrainConfig, Trainer, epochs, fit, pack_sft, tokenize_sft

    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    # Every problem a tiny variant of up to TINY_SETS problems trains or tests on (the generator's
    # problem i does not depend on n), and the held-out problems, are left out.
    tiny_sets = {f"tiny seed {seed}": synthetic.generate(TINY_SETS, seed=seed)
                 for seed in (tiny.TRAIN_SEED, tiny.TEST_SEED)}
    held_out = synthetic.generate(3 * _FINAL_EVAL_N.value, seed=SEED + 1)  # levels in turn
    levels = [int(x) for x in _LEVELS.value]
    problems = synthetic.generate(_PROBLEMS.value, seed=SEED, levels=levels)
    problems, overlap = decontaminate(problems, {**tiny_sets, "held_out": held_out})
    print(f"{len(problems)} pretraining problems ({len(overlap.removed_ids)} dropped: in the tiny "
          "config's sets or held out)")

    examples = synthetic.reference_examples(problems)
    # the tokenizer's corpus
    texts = [fmt.policy_prompt(ex.question) + ex.response for ex in examples[:2000]]
    tok_dir = out / "model"
    init = pathlib.Path(_INIT.value) if _INIT.value else None
    if init is not None:  # the ids the model was trained with
        tokenizer = Tokenizer.from_dir(init)
    elif (tok_dir / "tokenizer.model").exists():
        # a resumed run keeps the ids its checkpoints were trained with
        tokenizer = Tokenizer.from_dir(tok_dir)
    else:
        tokenizer = Tokenizer.train_sentencepiece(texts, tok_dir,
                                                  vocab_size=presets.get("tiny").vocab_size)
    sequences = list(tokenize_sft(examples, tokenizer))

    def batches():  # the same order on every run, so a resumed run continues exactly
        return epochs(sequences, 0, lambda order: pack_sft(order, rows=_ROWS.value, length=512,
                                                           pad_id=tokenizer.pad_id))

    if init is not None:
        model = from_pretrained(str(init), dtype=jnp.float32, param_dtype=jnp.float32, remat=False)
    else:
        model = CausalLM(presets.get("tiny"), rngs=nnx.Rngs(0))
    schedule = TrainConfig(learning_rate=_LR.value, warmup_steps=min(100, _STEPS.value),
                           total_steps=_STEPS.value, end_lr_fraction=0.1, weight_decay=0.01)
    trainer = Trainer(model, schedule, "sft")
    search = SearchConfig(max_depth=8, max_step_tokens=96, max_output_tokens=24)
    every, total = _EVAL_EVERY.value, _STEPS.value
    with Checkpoints(out / "ckpt", keep=2, every=every) as ckpt, CodeExecutor(num_workers=2) as executor:
        if _EXPORT_ONLY.value:
            ckpt.restore_latest(trainer)
            targets = []
        else:  # train to each evaluation point; fit resumes from the checkpoint the last one saved
            targets = sorted({min(t, total) for t in range(every, total + every,
                                                           every)} - set(range(
                (ckpt.latest_step() or 0) + 1)))

        def greedy(problems):
            """Greedy accuracy overall and per level: ({"all": a, "level1": a, ...}, n per level)."""
            engine = Engine(trainer.model(), vocab_size=tokenizer.vocab_size,
                            pad_id=tokenizer.pad_id)
            sols = evaluate.solve(problems, engine, executor, tokenizer, search=search,
                                  progress=False)
            by_level = {}
            for s in sols:
                by_level.setdefault(f"level{s.problem.metadata['level']}", []).append(s.candidates[0].correct)
            line = {"all": evaluate.accuracy(sols)} | {k: float(np.mean(v))
                                                       for k, v in sorted(by_level.items())}
            return {k: round(v, 3) for k, v in line.items()}, {k: len(v)
                                                               for k, v in sorted(by_level.items())}

        for target in targets:
            fit(trainer, batches(), steps=target, checkpoints=ckpt, log_every=50, progress=True)
            print(f"step {trainer.step_count} greedy accuracy "
                  f"{greedy(held_out[:_EVAL_N.value])[0]}", flush=True)
        if targets:
            ckpt.save(trainer, data_position=trainer.step_count, force=True)  # one batch a step
        final, counts = greedy(held_out)
    print(f"step {trainer.step_count}: greedy accuracy on {len(held_out)} held-out problems "
          f"{final}")
    save_pretrained(trainer.model(), out / "model")
    tokenizer.save(out / "model")
    (out / "model" / "PROVENANCE.json").write_text(json.dumps({
        "command": "python " + " ".join(sys.argv), "script": "scripts/pretrain_tiny.py",
        "steps": trainer.step_count, "schedule_steps": _STEPS.value, "rows": _ROWS.value,
        "length": 512, "lr": _LR.value,
        "problems": len(problems), "generator_seed": SEED, "levels": levels,
        "init": str(init) if init is not None else None,
        "init_provenance": json.loads((init / "PROVENANCE.json").read_text())
        if init is not None and (init / "PROVENANCE.json").exists() else None,
        "held_out": {"generator_seed": SEED + 1, "problems": counts, "greedy_accuracy": final}},
        indent=2) + "\n")
    print(f"wrote {out / 'model'}")


if __name__ == "__main__":
    app.run(main)
