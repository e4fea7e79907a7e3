"""Training: losses, batches from records, and the trainer (accumulation, 8 simulated devices,
learning on small tasks)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scripted import CharTokenizer

from rstar_jax.data import PPMPair, SFTExample
from rstar_jax.models import CausalLM, make_mesh, presets
from rstar_jax.train import (
    PPMBatch,
    epochs,
    TrainConfig,
    Trainer,
    create_sharded,
    make_schedule,
    pack_sft,
    pair_weights,
    ppm_batches,
    tokenize_sft,
)
from rstar_jax.train.losses import ppm_loss_sum, sft_loss_sum

CONFIG = presets.get("tiny")


def tiny(seed=0, value_head=False):
    return CausalLM(CONFIG, value_head=value_head, rngs=nnx.Rngs(seed))


def random_sequences(n, seed=0, low=20, high=60):
    rng = np.random.default_rng(seed)
    return [(rng.integers(3, 500, size=rng.integers(low, high)).tolist(), int(rng.integers(2, 10)))
            for _ in range(n)]


# --- losses and batches ---------------------------------------------------------------------


def test_sft_loss_is_the_masked_token_cross_entropy():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    total, count = sft_loss_sum(logits, jnp.array([[0, 1]]), jnp.array([[0.0, 1.0]]))
    assert float(count) == 1 and float(total) == pytest.approx(-np.log(0.8), rel=1e-6)
    total, count = ppm_loss_sum(jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0]),
                                jnp.array([0.5, 0.25]))
    assert float(total) == pytest.approx(0.5 * np.log1p(np.exp(-1.0)) + 0.25 * np.log(2), rel=1e-6)
    assert float(count) == 0.75


def test_sft_examples_pack_into_segments_with_response_targets_only():
    batches = list(pack_sft([([5, 6, 7, 8], 2), ([9, 10, 11], 1), ([12, 13, 14, 15, 16], 3)],
                            rows=2, length=6, pad_id=0))
    assert len(batches) == 1
    b = batches[0]
    # Row 0: example 1 (3 inputs) then example 2 (2 inputs); row 1: example 3 (4 inputs).
    np.testing.assert_array_equal(b.inputs, [[5, 6, 7, 9, 10, 0], [12, 13, 14, 15, 0, 0]])
    np.testing.assert_array_equal(b.targets, [[6, 7, 8, 10, 11, 0], [13, 14, 15, 16, 0, 0]])
    np.testing.assert_array_equal(b.segment_ids, [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(b.positions, [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]])
    # Targets 7, 8 (prompt of 2 tokens), 10, 11 (prompt of 1), 15, 16 (prompt of 3).
    np.testing.assert_array_equal(b.weights, [[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]])
    assert b.tokens == 9


def test_an_sft_example_refuses_a_question_already_wrapped_in_the_policy_prompt():
    from rstar_jax.steps.format import policy_prompt

    with pytest.raises(ValueError, match="already starts with the policy prompt"):
        SFTExample("p", policy_prompt("What is 1?"), "<answer>\\boxed{1}<end_of_answer>")


def test_reference_solutions_are_tokenized_after_exactly_one_policy_prompt(tmp_path):
    from rstar_jax.data.synthetic import generate, reference_examples
    from rstar_jax.testing import tiny_tokenizer

    tok = tiny_tokenizer(tmp_path)
    problems = generate(4, seed=0)
    for p, (ids, prompt_len) in zip(problems, tokenize_sft(reference_examples(problems), tok)):
        assert ids[:prompt_len] == tok.policy_prompt_ids(p.question)
        assert tok.decode(ids).count("<|user|>") == 1


def test_a_root_steps_pairs_and_the_final_pairs_weigh_as_two_groups():
    pairs = [PPMPair("p", "A", "x1", "y1", kind="step"), PPMPair("p", "A", "x2", "y2", kind="step"),
             PPMPair("p", "A", "w1", "z1", kind="final")]
    np.testing.assert_allclose(pair_weights(pairs), [0.25, 0.25, 1])


def test_every_pair_is_in_each_epoch_once_and_padding_pairs_weigh_nothing():
    tok = CharTokenizer()
    pairs = [PPMPair(f"p{i}", "A", f"x{i}", f"y{i}") for i in range(5)]
    seen = []
    for batch in itertools.islice(epochs(pairs, 0, lambda order: ppm_batches(order, tok, 4, 100)),
                                  4):
        assert batch.ids.shape[0] == 8  # always whole batches: a batch splits over devices
        for i, w in enumerate(batch.weights):
            seen.append(tok.decode(batch.ids[2 * i, :batch.lengths[2 * i]]) if w > 0 else None)
    assert sorted(filter(None, seen[:8])) == sorted(filter(None, seen[8:])) == [f"Ax{i}" for i in range(5)]
    # 3 padding pairs an epoch; a new order each epoch
    assert seen.count(None) == 6 and seen[:8] != seen[8:]


def test_records_become_batches_with_a_tokenizer():
    tok = CharTokenizer()
    step = "<code>\nx = 1\n<end_of_step>"
    ((ids, prompt_len),) = tokenize_sft([SFTExample("p", "What is 1?", step)], tok)
    assert ids == tok.policy_prompt_ids("What is 1?") + tok.encode(step) + [tok.eos_id] and prompt_len == len(
        tok.policy_prompt_ids("What is 1?"))
    pairs = [PPMPair("p", "A", "x1", "y1"), PPMPair("p", "A", "x1", "y2"),
             PPMPair("p", "A", "x2", "y1"),
             PPMPair("p", "B", "x", "y"), PPMPair("q", "A", "x", "y")]
    np.testing.assert_allclose(pair_weights(pairs), [0.25, 0.25, 0.25, 1, 1])
    batch, = list(ppm_batches(pairs[:3], tok, batch_pairs=4, max_length=100))
    assert batch.ids.shape == (8, 64) and list(batch.lengths[:2]) == [3, 3]
    assert tok.decode(batch.ids[1, :3]) == "Ay1" and list(batch.weights) == [0.25, 0.25, 0.25, 0]
    assert len(list(ppm_batches(pairs[:3], tok, batch_pairs=4, max_length=2))) == 0


def test_schedules_warm_up_and_decay():
    cosine = make_schedule(TrainConfig(learning_rate=1.0, warmup_steps=10, total_steps=110))
    assert [float(cosine(s)) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]
    assert float(cosine(60)) == pytest.approx(0.5, abs=1e-6) and float(cosine(110)) == pytest.approx(0, abs=1e-6)
    linear = make_schedule(TrainConfig(learning_rate=1.0, schedule="linear", total_steps=10,
                                       end_lr_fraction=0.1))
    assert float(linear(5)) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="schedule must be cosine, linear or constant, got 'step'"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="warmup_steps=5 exceeds total_steps=2"):
        TrainConfig(warmup_steps=5, total_steps=2)


# --- the trainer ----------------------------------------------------------------------------


def _params(trainer):
    return jax.tree.leaves(jax.device_get(trainer.params))


def _assert_same_step(batch, **change):
    """One SFT step of the tiny model with TrainConfig(**change) equals one with the defaults:
    loss, count, gradient norm and parameters after it."""
    # Adam's first step is lr * g / (|g| + eps): with the default eps a gradient near 0 turns
    # float rounding into a whole step, so compare with eps large enough to keep it linear.
    base = Trainer(tiny(), TrainConfig(learning_rate=1e-3, eps=1e-3), "sft")
    other = Trainer(tiny(), TrainConfig(learning_rate=1e-3, eps=1e-3, **change), "sft")
    a, b = base.step(batch), other.step(batch)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["count"] == b["count"]
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for x, y in zip(_params(base), _params(other)):
        np.testing.assert_allclose(x, y, atol=1e-7)


def test_four_microbatches_make_the_step_of_the_whole_batch():
    (batch,) = list(pack_sft(random_sequences(8), rows=4, length=128))
    _assert_same_step(batch, microbatches=4)
    with pytest.raises(ValueError, match="a batch of 4 rows does not split into 3 microbatches"):
        Trainer(tiny(), TrainConfig(microbatches=3), "sft").step(batch)


def test_the_chunked_sft_loss_makes_the_step_of_the_whole_sequence():
    (batch,) = list(pack_sft(random_sequences(8), rows=4, length=128))
    _assert_same_step(batch, loss_chunk=32)
    with pytest.raises(ValueError,
                       match=r"loss chunk \(48 positions\) must divide the sequence length 128"):
        Trainer(tiny(), TrainConfig(loss_chunk=48), "sft").step(batch)
    with pytest.raises(ValueError, match="loss_chunk must be an int >= 0"):
        TrainConfig(loss_chunk=-1)


def test_a_model_on_a_one_device_mesh_compiles_its_step_once_for_every_trainer():
    # evolve loads the model to train onto the config's mesh, one CPU device here: the optimizer
    # state must come out of init placed as the step returns it, or step 2 compiles again.
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    trainer = Trainer(create_sharded(lambda: tiny(2), mesh), TrainConfig(learning_rate=1e-3), "sft")
    batches = list(pack_sft(random_sequences(48, seed=2), rows=8, length=128))[:3]
    for batch in batches:
        trainer.step(batch)
    assert trainer._step._cache_size() == 1
    # The next round's trainer of the same model reuses that compilation.
    again = Trainer(create_sharded(lambda: tiny(3), mesh), TrainConfig(learning_rate=1e-3), "sft")
    again.step(batches[0])
    assert again._step is trainer._step and again._step._cache_size() == 1


def test_a_step_on_eight_devices_equals_one_device(tmp_path):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = create_sharded(lambda: tiny(3), mesh)
    # really sharded
    assert sharded.layers[0].mlp.gate_proj[...].sharding.spec != jax.sharding.PartitionSpec()
    for a, b in zip(jax.tree.leaves(nnx.state(sharded, nnx.Param)),
                    jax.tree.leaves(nnx.state(tiny(3), nnx.Param))):
        # created in shards, same values
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    local = tiny(3)
    # the very same start
    nnx.update(local, jax.tree.map(jnp.asarray, jax.device_get(nnx.state(sharded))))
    (batch,) = list(pack_sft(random_sequences(16, seed=1), rows=8, length=128))
    config = TrainConfig(learning_rate=1e-3, eps=1e-3, microbatches=2)  # eps: see the test above
    wide, single = Trainer(sharded, config, "sft"), Trainer(local, config, "sft")

    def moments_sharded_like_their_parameters():
        # Adam's moments sit in the shards of their parameters, from creation on: replicated they
        # would cost every device 2x the whole model in float32.
        pairs = []
        optax.tree_utils.tree_map_params(wide.tx,
                                         lambda m, p: pairs.append((m.sharding, p.sharding)),
                                         wide.opt_state, wide.params)
        assert len(pairs) == 2 * len(jax.tree.leaves(wide.params))  # mu and nu
        for m, p in pairs:
            assert m.is_equivalent_to(p, 3), (m, p)

    moments_sharded_like_their_parameters()
    for _ in range(2):
        mw, ms = wide.step(batch), single.step(batch)
        assert mw["loss"] == pytest.approx(ms["loss"], rel=1e-5)
    moments_sharded_like_their_parameters()
    for a, b in zip(_params(wide), _params(single)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # A checkpoint of the sharded run restores onto one device (and back), array for array.
    from rstar_jax.train.checkpoint import Checkpoints

    with Checkpoints(tmp_path) as checkpoints:
        checkpoints.save(wide, data_position=2)
        checkpoints.wait()
        other = Trainer(tiny(4), config, "sft")
        assert checkpoints.restore_latest(other)["step"] == 2
    for a, b in zip(_params(wide), _params(other)):
        np.testing.assert_array_equal(a, b)


def test_sft_on_step_format_responses_drives_the_held_out_loss_down(tmp_path):
    from rstar_jax.data.synthetic import generate, reference_examples
    from rstar_jax.testing import tiny_tokenizer

    tok = tiny_tokenizer(tmp_path)
    problems = generate(40, seed=0, families=["arithmetic"], levels=[1])
    examples = reference_examples(problems)
    train = list(pack_sft(tokenize_sft(examples[:32], tok), rows=4, length=256, pad_id=tok.pad_id))
    held = list(pack_sft(tokenize_sft(examples[32:], tok), rows=4, length=256, pad_id=tok.pad_id))
    model = CausalLM(CONFIG, rngs=nnx.Rngs(0))
    trainer = Trainer(model, TrainConfig(learning_rate=3e-3, warmup_steps=3, total_steps=20), "sft")
    before = trainer.evaluate(held)["loss"]
    for i in range(20):
        trainer.step(train[i % len(train)])
    after = trainer.evaluate(held)["loss"]
    assert after < 0.65 * before, (before, after)  # 6.26 -> 3.77 nats a token when written


def test_the_ppm_learns_separable_pairs():
    rng = np.random.default_rng(0)

    def batch(n):
        # Prompt: random tokens; the positive step contains token 7 three times, the negative token
        # 8.
        ids = rng.integers(20, 500, size=(2 * n, 24)).astype(np.int32)
        ids[0::2, 16:19] = 7
        ids[1::2, 16:19] = 8
        lengths = np.full((2 * n,), 24, np.int32)
        return PPMBatch(ids=ids, lengths=lengths, weights=np.ones((n,), np.float32))

    trainer = Trainer(tiny(value_head=True), TrainConfig(learning_rate=2e-3, total_steps=40), "ppm")
    held = [batch(32)]
    start = trainer.evaluate(held)
    for _ in range(40):
        metrics = trainer.step(batch(16))
    end = trainer.evaluate(held)
    assert end["accuracy"] > 0.95 and end["loss"] < start["loss"], (start, end, metrics)
    with pytest.raises(TypeError, match="a 'ppm' trainer takes PPMBatches, got SFTBatch"):
        trainer.step(next(pack_sft(random_sequences(2), rows=1, length=128)))
    with pytest.raises(ValueError, match="needs a model with a value head"):
        Trainer(tiny(), TrainConfig(), "ppm")


def test_outcome_examples_become_labelled_rows():
    from rstar_jax.data import OutcomeExample
    from rstar_jax.train import outcome_batches

    tok = CharTokenizer()
    examples = [OutcomeExample("p", "Q1", "<answer>1<end_of_answer>", True),
                OutcomeExample("q", "Q2", "<answer>22<end_of_answer>", False)]
    batch, = outcome_batches(examples, tok, batch_rows=4, max_length=200)
    assert batch.ids.shape == (4, 128) and list(batch.labels) == [1, -1, 0, 0] and list(batch.weights) == [1, 1, 0, 0]
    first = tok.policy_prompt_ids("Q1") + tok.encode(examples[0].response)
    assert batch.ids[0, :batch.lengths[0]].tolist() == first and batch.tokens == len(first) + batch.lengths[1]


def test_the_orm_learns_separable_outcomes():
    from rstar_jax.train import OutcomeBatch

    rng = np.random.default_rng(0)

    def batch(n):
        # Random tokens; a right trajectory contains token 7 three times, a wrong one token 8.
        ids = rng.integers(20, 500, size=(n, 24)).astype(np.int32)
        labels = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
        ids[:, 16:19] = np.where(labels[:, None] > 0, 7, 8)
        return OutcomeBatch(ids=ids, lengths=np.full((n,), 24, np.int32), labels=labels,
                            weights=np.ones((n,), np.float32))

    trainer = Trainer(tiny(value_head=True), TrainConfig(learning_rate=2e-3, total_steps=40), "orm")
    held = [batch(64)]
    start = trainer.evaluate(held)
    for _ in range(40):
        trainer.step(batch(16))
    end = trainer.evaluate(held)
    assert end["accuracy"] > 0.95 and end["loss"] < 0.5 * start["loss"], (start, end)
    with pytest.raises(ValueError, match="the ORM trainer needs a model with a value head"):
        Trainer(tiny(), TrainConfig(), "orm")


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    from rstar_jax.train.checkpoint import Checkpoints

    batches = list(pack_sft(random_sequences(24, seed=2), rows=2, length=128))[:4]
    config = TrainConfig(learning_rate=1e-3, warmup_steps=1, total_steps=4)
    straight = Trainer(tiny(5), config, "sft")
    for b in batches:
        straight.step(b)

    first = Trainer(tiny(5), config, "sft")
    with Checkpoints(tmp_path / "ckpt", keep=2) as checkpoints:
        for b in batches[:2]:
            first.step(b)
            checkpoints.save(first, data_position=first.step_count, best_loss=1.5)
    # The process dies here; a new one builds a fresh model (other weights) and resumes.
    resumed = Trainer(tiny(6), config, "sft")
    with Checkpoints(tmp_path / "ckpt", keep=2) as checkpoints:
        meta = checkpoints.restore_latest(resumed)
        assert meta == {"step": 2, "data_position": 2, "best_loss": 1.5} and resumed.step_count == 2
        for b in batches[meta["data_position"]:]:
            resumed.step(b)
            checkpoints.save(resumed, data_position=resumed.step_count)
        assert checkpoints.manager.all_steps() == [3, 4]  # keep=2
    for a, b in zip(_params(straight), _params(resumed)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(jax.device_get(straight.opt_state)),
                    jax.tree.leaves(jax.device_get(resumed.opt_state))):
        np.testing.assert_array_equal(a, b)
    assert Checkpoints(tmp_path / "empty").restore_latest(Trainer(tiny(), config, "sft")) is None


def test_fit_resumes_keeps_the_best_and_logs(tmp_path):
    from rstar_jax.train.checkpoint import Checkpoints
    from rstar_jax.train.loop import fit

    batches = list(pack_sft(random_sequences(40, seed=4), rows=2, length=128))[:6]
    held = batches[-1:]
    config = TrainConfig(learning_rate=1e-3, total_steps=6)

    def run(steps, model):
        trainer = Trainer(model, config, "sft")
        with Checkpoints(tmp_path / "last", keep=1) as last, Checkpoints(tmp_path / "best", keep=1) as best:
            history = fit(trainer, batches, steps=steps, eval_batches=held, eval_every=1,
                          checkpoints=last, best=best, logdir=tmp_path / "tb", peak_flops=2e11,
                          progress=False)
        return trainer, history

    _, first = run(3, tiny(7))
    resumed, second = run(5, tiny(8))  # a new process: other initial weights, resumed from step 3
    assert len(first) == 3 and len(second) == 2 and resumed.step_count == 5
    straight = Trainer(tiny(7), config, "sft")
    for b in batches[:5]:
        straight.step(b)
    for a, b in zip(_params(straight), _params(resumed)):
        np.testing.assert_array_equal(a, b)
    losses = [m["eval_loss"] for m in first + second]
    with Checkpoints(tmp_path / "best") as best:
        meta = best.restore_latest(Trainer(tiny(), config, "sft"))
    assert meta["best"] == pytest.approx(min(losses)) and meta["step"] == 1 + int(np.argmin(losses))
    assert all(0 < m["mfu"] < 1 and m["tokens_per_s"] > 0 for m in second)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_devices_from_the_config(monkeypatch):
    import importlib.util
    import pathlib

    from rstar_jax.train.devices import initialize, mesh_from_config, several_processes

    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    assert not several_processes() and initialize() is False and initialize(False) is False
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w-0,w-1,w-2,w-3")
    assert several_processes()
    path = pathlib.Path(__file__).parent.parent / "configs" / "tiny.py"
    spec = importlib.util.spec_from_file_location("tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    mesh = mesh_from_config(config.mesh)
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}  # 8 simulated devices
    assert config.train.sft.learning_rate == 3e-4 and config.train.ppm.held_out == 0.1
    with pytest.raises(ValueError, match=r"unknown mesh axes \['model'\]"):
        mesh_from_config({"model": 2})


def test_a_cloud_tpu_vm_slice_is_found_from_its_metadata(monkeypatch):
    # A slice made with `gcloud compute tpus tpu-vm create` sets no worker variables: its hosts are
    # listed by the metadata server, served here by a local stand-in.
    import http.server
    import threading

    from rstar_jax.train.devices import several_processes, tpu_vm_workers

    endpoints = {"value": "w-0:0:10.0.0.1,w-1:1:10.0.0.2,w-2:2:10.0.0.3,w-3:3:10.0.0.4"}
    asked = []

    class Metadata(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append((self.path, self.headers.get("Metadata-Flavor")))
            body = endpoints["value"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for var in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                    "MEGASCALE_NUM_SLICES"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_port}")
        assert tpu_vm_workers() == 4 and several_processes()
        assert asked[0] == ("/computeMetadata/v1/instance/attributes/worker-network-endpoints",
                            "Google")
        endpoints["value"] = "w-0"  # a one-host slice
        assert tpu_vm_workers() == 1 and not several_processes()
        monkeypatch.setenv("MEGASCALE_NUM_SLICES", "2")  # ... but one of two slices
        assert several_processes()
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.delenv("MEGASCALE_NUM_SLICES")
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_port}")  # nothing answers now
    assert tpu_vm_workers(timeout_s=0.5) is None and not several_processes()


def test_microbatches_are_the_fewest_within_the_token_budget():
    from rstar_jax.train.trainer import microbatches_for

    # 128 rows of 4096 tokens over 64 devices: 2 rows (8192 tokens) a device in one microbatch.
    assert microbatches_for(128, 4096, 64, 8192) == 1
    assert microbatches_for(128, 4096, 64, 8191) == 2
    assert microbatches_for(128, 4096, 8, 16384) == 4  # 16 rows a device -> 4 a microbatch
    # 12 rows a device: 2 microbatches would leave 6 (600 tokens)
    assert microbatches_for(96, 100, 8, 500) == 3
    with pytest.raises(ValueError, match="one row of 4096 tokens"):
        microbatches_for(128, 4096, 64, 4000)
    with pytest.raises(ValueError, match="multiple of 64"):
        microbatches_for(100, 4096, 64, 10**6)


def test_evolution_reads_microbatches_from_the_token_budget():
    from configs import tiny
    from rstar_jax.evolve import ConfigError, microbatches
    from rstar_jax.train import batch_shards, mesh_from_config

    config = tiny.get_config("smoke")
    c = config.train.ppm  # batch 8 pairs of 512 tokens, each pair two sequences
    c.microbatches = 2
    assert microbatches(c, "ppm", 1) == 2  # no budget: as configured
    c.tokens_per_chip = 4096
    assert microbatches(c, "ppm", 1) == 2  # 8 pairs x 1024 tokens = 8192 a chip
    # data=-1: 8 devices, a pair each
    assert microbatches(c, "ppm", batch_shards(mesh_from_config(config.mesh))) == 1
    assert microbatches(config.train.sft, "sft", 1) == 1  # sft has no budget set
    orm = config.train.orm  # an outcome row is one sequence
    orm.tokens_per_chip = 4096
    assert microbatches(orm, "orm", 1) == 1
    c.tokens_per_chip = 1000
    with pytest.raises(ConfigError, match="train.ppm: one row of 1024 tokens"):
        microbatches(c, "ppm", 1)
