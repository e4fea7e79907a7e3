"""The dry run: every jitted function of a run compiled on abstract shapes, on this machine's
simulated devices and for a Cloud TPU slice through the TPU compiler (libtpu, compile-only)."""

import re

import jax.numpy as jnp
import pytest

from rstar_jax import dry_run as plan
from rstar_jax import evolve
from rstar_jax.models import presets
from test_evolve import smoke_config

TINY = presets.get("tiny")


def _rows(text):
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| function")]


def test_every_function_of_a_run_compiles_without_a_checkpoint():
    config = smoke_config(**{"model.checkpoint": "/nowhere", "mesh.data": 2, "mesh.fsdp": 2,
                             "mesh.tensor": 2, "model.scan_layers": True,
                             "search.common.continuous": True})
    text = evolve.dry_run(config)
    assert "training on 8 x cpu (data=2, fsdp=2, tensor=2)" in text
    assert "search and evaluation, each host: 1 x cpu" in text
    rows = {r[0]: r for r in _rows(text)}
    s = config.search
    # The smoke search: 64 problems, 4 candidates, steps of 96 tokens (decoded in a bucket of 128);
    # the context is the tiny model's, the store the larger of the search and evaluation batches.
    assert list(rows) == [
        "sft train step (8 x 512)", "ppm train step (8 x 512)",
        f"prefill (64 x {TINY.max_position_embeddings} through the store)",
        "decode (64 x 4 rows x 128 tokens)",
        "continuous decode chunk (64 places x 4 samples, 256 lanes)",
        "PPM values (64 prefixes, 64 rows of 128 tokens)",
        "held at once: policy and PPM (64 x 4)",
        "decode (64 x 1 rows x 128 tokens)",
        "continuous decode chunk (64 places x 1 samples, 64 lanes)",
        "PPM values of 64 solutions (1024 tokens)"]
    assert s.batch == 64 and s.round1.candidates == 4 and s.common.max_step_tokens == 96
    # One row per compiled call, with every stage that calls it.
    assert rows["decode (64 x 4 rows x 128 tokens)"][1] == "round 1, round 2, round 3, round 4, evaluation MCTS"
    assert rows["PPM values (64 prefixes, 64 rows of 128 tokens)"][1] == "round 3, round 4, evaluation MCTS"
    assert rows["decode (64 x 1 rows x 128 tokens)"][1] == "evaluation solutions"
    assert rows[f"prefill (64 x {TINY.max_position_embeddings} through the "
                "store)"][1].count(",") == 5
    # A continuous search holds the larger of: the chunk's peak (larger than the decode's) with
    # the PPM's weights and store; the PPM's peak with the policy's weights, store and decode
    # buffers. Float32 weights of about 1.7M parameters each; the store has a row a problem.
    chunk, decode, ppm = (float(rows[name][5]) for name in (
        "continuous decode chunk (64 places x 4 samples, 256 lanes)",
        "decode (64 x 4 rows x 128 tokens)", "PPM values (64 prefixes, 64 rows of 128 tokens)"))
    assert chunk > decode
    store = 64 * TINY.max_position_embeddings * TINY.num_hidden_layers * 2 * (
        TINY.num_key_value_heads * TINY.head_dim * 4) / 2**30
    buffers = 256 * 128 * TINY.num_hidden_layers * 2 * (TINY.num_key_value_heads * TINY.head_dim
                                                         * 4) / 2**30
    weights = 4 * 2 * TINY.num_params() / 2**30  # at most, the PPM's with its value head
    held = float(rows["held at once: policy and PPM (64 x 4)"][5])
    least = max(chunk + store, ppm + store + buffers)
    assert least * 0.99 < held < least + 2 * weights
    for r in rows.values():
        assert 0 < float(r[5]) < 8  # peak GiB per device of a 1.7M-parameter model
        assert r[10] == "-"  # no peak FLOP/s known for a CPU
    # The decode returns its donated KV buffers: per layer keys and values [64 x 4, 2 heads, 128,
    # 32] float32, beside the tokens [256, 128] and lengths [256] (int32) and the step count.
    c = TINY
    buffers = c.num_hidden_layers * 2 * 256 * c.num_key_value_heads * 128 * c.head_dim * 4
    outputs = float(rows["decode (64 x 4 rows x 128 tokens)"][3]) * 2**30
    # 3 digits shown
    assert outputs == pytest.approx(buffers + 256 * 128 * 4 + 256 * 4 + 4, rel=5e-3)


def test_the_meshes_of_a_pod_slice():
    devices = plan.topology_devices("v5p:4x4x4")  # 16 hosts of 4 chips
    assert len(devices) == 64 and devices[0].device_kind == "TPU v5" and plan.hbm_gib(devices[0]) == 95
    config = smoke_config(**{"mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": 1,
                             "inference_mesh.tensor": -1})
    train, infer = plan.meshes(config, devices)
    assert dict(train.shape) == {"data": 1, "fsdp": 64, "tensor": 1}
    # Each process searches its own problems on its own host's chips.
    assert dict(infer.shape) == {"data": 1, "fsdp": 1, "tensor": 4}
    assert {d.process_index for d in infer.devices.flat} == {devices[0].process_index}
    # A v5e slice's compiler takes no program on part of it: a host is compiled as a one-host v5e
    # slice.
    v5e = plan.topology_devices("v5e:4x4")
    _, infer = plan.meshes(config, v5e, "v5e:4x4")
    assert infer.devices.size == 4 and infer.devices.flat[0].device_kind == "TPU v5 lite"
    assert {d.process_index for d in v5e} != {0} and len(plan.topology_devices("v5e:2x2")) == 4
    with pytest.raises(ValueError, match="needs 8 devices; there are 4"):
        plan.meshes(smoke_config(**{"inference_mesh.tensor": 8}), devices)
    with pytest.raises(ValueError, match="v5e:8x8, v5p:4x4x4"):
        plan.topology_devices("v99:1x1")


def test_a_tpu_slice_compiles_and_a_search_that_does_not_fit_is_named():
    devices = plan.topology_devices("v5e:2x2")  # one host of 4 chips, 16 GiB each
    train, infer = plan.meshes(smoke_config(**{"mesh.data": 1, "mesh.fsdp": -1,
                                               "inference_mesh.tensor": -1}), devices)
    # The training step compiles for the TPU (building the optimizer state's shardings runs
    # nothing).
    step = plan.train_step(TINY, train, task="sft", rows=8, length=128, dtype=jnp.bfloat16)
    assert 0 < step.peak < 2**30 and step.flops > 0 and step.bytes_accessed > 0
    # At the chips' peak (197 bf16 TFLOP/s a v5e chip) the step's FLOPs, counted from the model,
    # split over 4 chips: forward and backward (6 x parameters a token, the LM head's among them)
    # and remat's second forward.
    flops = plan.train_flops(TINY, "sft", 8, 128, remat=True)
    assert flops > 8 * TINY.num_params(include_embeddings=False) * 8 * 128
    assert step.ideal_s == pytest.approx(flops / 4 / 197e12)
    # 8192 problems x 16 candidates: the decode's KV buffers are 4 layers x 2 x 131072 rows x 2
    # heads x 256 tokens x 32 dims x 2 bytes = 32 GiB, and 2 KV heads do not split over a tensor
    # axis of 4, so every chip would hold all of them.
    shape = plan.SearchShape("round 4 search", 8192, 16, 200, 232, False,
                             "search.round4.candidates")
    calls = plan.search_calls(TINY, infer, shape, context=256, store_rows=8, dtype=jnp.bfloat16)
    hbm = plan.hbm_gib(devices[0])
    assert hbm == 16
    with pytest.raises(plan.DoesNotFit) as refused:
        plan.check(calls, hbm)
    # The TPU compiler refuses it and says how much it would need; the error names the config field.
    assert re.search(r"decode \(8192 x 16 rows x 256 tokens\) needs [\d.]+ GiB per chip, over the "
                     r"chip's 16 GiB \(change search.round4.candidates or "
                     r"search.batch\)", str(refused.value))
    decode = next(c for c in calls if c.name.startswith("decode"))
    assert decode.peak > 32 * plan.GIB  # at least its KV buffers
    assert "**no**" in plan.table("round 4", calls, hbm)
    plan.check([step], hbm)  # fits: no error


def test_the_parts_to_compile_are_chosen():
    text = evolve.dry_run(smoke_config(dry_run_parts="search", **{"search.ppm_rows": 16}))
    assert "training on" not in text and "search and evaluation, each host" in text
    # Searches decode in lockstep unless search.common.continuous: no chunk is compiled. The PPM
    # scores search.ppm_rows rows a call (as many prefixes at most), and what the search holds
    # at once is at least the PPM call's peak.
    rows = {r[0]: r for r in _rows(text)}
    assert not any(name.startswith("continuous decode chunk") for name in rows)
    held = float(rows["held at once: policy and PPM (64 x 4)"][5])
    assert held > float(rows["PPM values (16 prefixes, 16 rows of 128 tokens)"][5])
    with pytest.raises(evolve.ConfigError, match=r"config.search.ppm_rows must be an int >= 8.*"
                                                 r"got 4"):
        evolve.dry_run(smoke_config(dry_run_parts="search", **{"search.ppm_rows": 4}))
    with pytest.raises(evolve.ConfigError,
                       match="config.dry_run_parts='tpu': name train, search or both"):
        evolve.dry_run(smoke_config(dry_run_parts="tpu"))
