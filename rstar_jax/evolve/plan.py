"""The dry run of a config: every jitted function its run calls, compiled for its TPU slice (or
this machine's devices) without a checkpoint, with each one's memory per chip
(`rstar_jax.dry_run`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from rstar_jax import dry_run as plan
from rstar_jax.evolve.config import ConfigError, eval_budget, eval_search_config, microbatches, \
    ppm_rows, prefix_rows, search_config
from rstar_jax.models import presets
from rstar_jax.train import batch_shards


def dry_run(config: ml_collections.ConfigDict) -> str:
    """Compiles every jitted function a run of `config` calls (`rstar_jax.dry_run`) for
    `config.dry_run_topology`'s TPU slice, or this machine's devices, and returns the tables;
    raises `dry_run.DoesNotFit`, after the tables are printed, when a function needs more memory
    per chip than the chip has. Reads no checkpoint."""
    topology = config.get("dry_run_topology", "")
    parts = [x.strip() for x in config.get("dry_run_parts", "train,search").split(",") if x.strip()]
    if not parts or set(parts) - {"train", "search"}:
        raise ConfigError(f"config.dry_run_parts={config.dry_run_parts!r}: name train, search or "
                          "both (train,search)")
    devices = plan.topology_devices(topology) if topology else jax.devices()
    model_config = presets.get(config.model.preset)
    train_mesh, infer_mesh = plan.meshes(config, devices, topology)
    hbm = plan.hbm_gib(devices[0])
    trained = _train_steps(config, model_config, train_mesh) if "train" in parts else []
    inferred = _search_calls(config, model_config, infer_mesh) if "search" in parts else []

    def describe(mesh):
        shape = ", ".join(f"{k}={v}" for k, v in mesh.shape.items())
        return f"{mesh.devices.size} x {mesh.devices.flat[0].device_kind} ({shape})"

    where = f"{topology} " if topology else ""
    tables = []
    if trained:
        tables.append(plan.table(f"training on {where}{describe(train_mesh)}", trained, hbm))
    if inferred:
        tables.append(plan.table(f"search and evaluation, each host: {describe(infer_mesh)}",
                                 inferred, hbm))
    text = "\n".join(tables)
    print(text)
    plan.check(trained + inferred, hbm)
    return text


def _kwargs(config: ml_collections.ConfigDict) -> dict:
    return {"dtype": jnp.dtype(config.model.dtype), "attention": config.model.attention}


def _train_steps(config: ml_collections.ConfigDict, model_config, mesh) -> list:
    """The training steps: policy SFT's, and the PPM's (the ORM's too)."""
    m, t = config.model, config.train
    sizes = "/ .tokens_per_chip (or .microbatches) / mesh"
    steps = [plan.train_step(model_config, mesh, task=task, rows=c.batch, length=c.max_length,
                             remat=m.remat, scan_layers=m.get("scan_layers", False),
                             microbatches=microbatches(c, task, batch_shards(mesh)),
                             param_dtype=jnp.dtype(m.param_dtype),
                             loss_chunk=c.get("loss_chunk", 0),
                             field=f"train.{task}.batch {sizes}", **_kwargs(config))
             for task, c in (("sft", t.sft), ("ppm", t.ppm))]
    steps[0].used_by = "policy SFT"
    steps[1].used_by = "PPM" + (" and ORM" if t.orm.rounds else "")
    return steps


def _search_calls(config: ml_collections.ConfigDict, model_config, mesh) -> list:
    """Each kind of search the run makes, once: the rounds', and evaluation's (greedy and
    sampled solutions are searches of one candidate; the test-time search uses the PPM); and the
    rescoring of best-of-N."""
    shapes: dict[tuple, list[tuple[str, str]]] = {}  # call shape -> (stage, the field sizing it)
    for r in range(1, config.rounds + 1):
        s = search_config(config, r)
        key = (config.search.batch, s.candidates, s.max_step_tokens, s.step_capacity,
               s.mode.uses_ppm, s.continuous)
        shapes.setdefault(key, []).append((f"round {r}", f"search.round{r}.candidates"))
    budget, test = eval_budget(config), eval_search_config(config)
    batch = config.eval.batch
    shapes.setdefault((batch, 1, budget.max_step_tokens, budget.step_capacity, False,
                       budget.continuous), []).append(("evaluation solutions", "eval.batch"))
    shapes.setdefault((batch, test.candidates, test.max_step_tokens, test.step_capacity, True,
                       test.continuous), []).append(("evaluation MCTS", "eval.search.candidates"))
    context = model_config.max_position_embeddings
    calls = []
    compiled: dict = {}  # a call the compiler refused would be compiled again for each stage
    for (rows, k, tokens, capacity, ppm, continuous), stages in shapes.items():
        shape = plan.SearchShape(", ".join(name for name, _ in stages), rows, k, tokens, capacity,
                                 ppm, " or ".join(dict.fromkeys(field for _, field in stages)),
                                 continuous)
        calls += plan.search_calls(model_config, mesh, shape, context=context,
                                   store_rows=prefix_rows(config),
                                   score_rows=ppm_rows(config), cache=compiled,
                                   **_kwargs(config))
    calls.append(plan.rescore_call(model_config, mesh, rows=64, context=context,
                                   **_kwargs(config)))
    calls[-1].used_by = "evaluation best-of-N"
    return calls
