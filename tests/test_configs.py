"""Config files load, and their presets are the public architectures."""

import importlib.util
import pathlib

import pytest
import transformers

from rstar_jax.models import ModelConfig, presets

CONFIG_DIR = pathlib.Path(__file__).parent.parent / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.py"))


def _load(path, arg=None):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_names_a_known_preset(path):
    config = _load(path)
    presets.get(config.model.preset)
    assert config.model.dtype in ("float32", "bfloat16")


def test_tiny_rejects_unknown_variants():
    assert _load(CONFIG_DIR / "tiny.py").variant == "default"
    with pytest.raises(ValueError, match="unknown tiny variant 'huge'; known: default"):
        _load(CONFIG_DIR / "tiny.py", "huge")


def test_phi3_preset_is_transformers_phi3_default_with_its_sliding_window():
    default = ModelConfig.from_hf_dict(transformers.Phi3Config().to_dict())
    assert presets.get("phi3_mini_4k") == default.replace(sliding_windows=(2047,) * 32)


@pytest.mark.parametrize("name, total", [
    ("phi3_mini_4k", 3_821_079_552),  # the published parameter counts
    ("qwen25_math_7b", 7_615_616_512),
    ("qwen25_math_1p5b", 1_543_714_304),
])
def test_preset_parameter_counts_match_the_published_models(name, total):
    assert presets.get(name).num_params() == total


def test_tiny_model_is_between_one_and_five_million_parameters():
    assert 1e6 <= presets.get("tiny").num_params() <= 5e6


def test_a_checkpoint_of_another_model_is_named_in_the_error():
    other = presets.get("qwen25_math_1p5b")
    presets.check_architecture("qwen25_math_1p5b", other.replace(vocab_size=151936 + 128))
    with pytest.raises(ValueError,
                       match="not a qwen25_math_7b model.*hidden_size: preset 3584, found 1536"):
        presets.check_architecture("qwen25_math_7b", other)


@pytest.mark.parametrize("variant,sizes", [("default", (64, 256)), ("study", (128, 512))])
def test_tiny_problem_sets_hold_none_of_the_base_models_pretraining_problems(variant, sizes):
    import json

    from rstar_jax import config_lib, evolve
    from rstar_jax.data import synthetic

    provenance = json.loads((pathlib.Path(config_lib.TINY_BASE) / "PROVENANCE.json").read_text())
    seen = {p.question for p in synthetic.generate(20_000, seed=provenance["generator_seed"],
                                                   levels=provenance["levels"])}
    train, test = evolve.problem_sets(_load(CONFIG_DIR / "tiny.py", variant).problems)
    assert (len(train), len(test)) == sizes
    assert not seen & {p.question for p in train + test}
    assert not {p.question for p in train} & {p.question for p in test}


@pytest.mark.parametrize("name", ["phi3", "qwen25_math_7b", "qwen25_math_1p5b"])
def test_pod_configs_size_a_hosts_searches_by_its_chips(name):
    import importlib

    module = importlib.import_module(f"configs.{name}")
    default, v5p = module.get_config(), module.get_config("v5p")
    # docs/tpu.md: what the dry run found fits a v5e chip (16 GiB) fits a v5p one; v5p takes more.
    assert (default.search.batch, default.eval.batch) == (2, 2)
    assert (v5p.search.batch, v5p.eval.batch) == ((64, 32) if name == "qwen25_math_7b" else (16, 16))
    assert dict(default.inference_mesh) == {"data": 1, "fsdp": 1, "tensor": -1}
    # The PPM scores fewer rows a call on a v5e chip, beside what the policy keeps.
    assert (default.search.ppm_rows, v5p.search.ppm_rows) == (16, 64)
    assert default.train.sft.loss_chunk == 512
    # Training: microbatches from a chip's token budget, and the layers scanned.
    assert default.model.scan_layers and default.train.ppm.tokens_per_chip == 8192
    assert v5p.train.sft.tokens_per_chip == v5p.train.orm.tokens_per_chip == 32768
    with pytest.raises(ValueError, match="unknown chips 'v4'; known: v5e, v5p"):
        module.get_config("v4")
