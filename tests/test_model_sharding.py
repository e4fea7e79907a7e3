"""Loading onto a (data, fsdp, tensor) mesh of 8 simulated CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import checkpoints
from rstar_jax import from_pretrained, save_pretrained
from rstar_jax.models import DEFAULT_RULES, make_mesh


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def _forward(model, ids, mesh=None):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids):
        return nnx.merge(graphdef, state)(ids)

    if mesh is None:
        return np.asarray(run(state, ids))
    with jax.set_mesh(mesh):
        ids = jax.device_put(ids, NamedSharding(mesh, P(("data", "fsdp"))))
        return np.asarray(run(state, ids))


@pytest.mark.parametrize("name", ["qwen2_gqa", "phi3"])
def test_sharded_model_gives_the_same_logits_as_one_device(tmp_path, mesh, name):
    checkpoints.save(name, tmp_path)
    ids = jnp.asarray(checkpoints.token_ids(4, 24))
    single = _forward(from_pretrained(tmp_path), ids)
    sharded = _forward(from_pretrained(tmp_path, mesh=mesh), ids, mesh)
    np.testing.assert_allclose(sharded, single, atol=1e-5)


def test_parameters_are_created_in_their_shards(tmp_path, mesh):
    checkpoints.save("qwen2_gqa", tmp_path)
    model = from_pretrained(tmp_path, mesh=mesh)
    q = model.layers[0].attn.q_proj[...]
    assert q.sharding.spec == P("fsdp", "tensor", None)
    # each device holds a quarter of the kernel: half the embed rows, half the heads
    assert {s.data.shape for s in q.addressable_shards} == {(32, 4, 8)}
    assert model.embed[...].sharding.spec == P("tensor", "fsdp")
    assert model.layers[0].mlp.down_proj[...].sharding.spec == P("tensor", "fsdp")
    assert model.norm.scale[...].sharding.spec == P(None)


def test_an_axis_that_does_not_divide_a_dim_replicates_it():
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
    assert DEFAULT_RULES.spec(("embed", "kv_heads", "head_dim"), (64, 4, 16), mesh) == P("fsdp", None, None)
    assert DEFAULT_RULES.spec(("embed", "heads", "head_dim"), (64, 16, 16), mesh) == P("fsdp", "tensor", None)


def test_mesh_fills_the_minus_one_axis_and_rejects_bad_shapes():
    assert dict(make_mesh({"data": 2, "fsdp": -1, "tensor": 2}).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="needs 12 devices; 8 are available"):
        make_mesh({"data": 3, "fsdp": 2, "tensor": 2})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        make_mesh({"model": 8})


def test_sharded_model_saves_a_checkpoint_transformers_loads(tmp_path, mesh):
    import torch
    import transformers

    reference = checkpoints.save("phi3", tmp_path / "theirs")
    model = from_pretrained(tmp_path / "theirs", mesh=mesh)
    save_pretrained(model, tmp_path / "ours")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    ids = checkpoints.token_ids(2, 16)
    np.testing.assert_allclose(checkpoints.logits(reloaded, ids),
                               checkpoints.logits(reference, ids), atol=1e-5)
