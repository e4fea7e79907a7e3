"""Stock checkpoints, as downloaded from the hub, have no step tokens: launch/convert_checkpoint.py
and the evolution's first use give them the tokens, rows at the mean, and change nothing else."""

import importlib.util
import io
import json
import pathlib
import shutil
import subprocess
import sys
import uuid

import ml_collections
import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers
from absl import flags

import checkpoints
from rstar_jax import evolve
from rstar_jax.config_lib import TINY_BASE
from rstar_jax.models import from_pretrained, read_config, tensor_files, vocab
from rstar_jax.tokenizer import STEP_TOKENS, Tokenizer
from test_evolve import smoke_config

ROOT = pathlib.Path(__file__).parent.parent
CORPUS = ["total = 2 * 20 * 12\nprint(total)\n", "The answer is 480 pounds, so 16 times.\n"] * 20


@pytest.fixture(scope="module")
def cli():
    """`launch/convert_checkpoint.py`'s main, called in-process with the given flags; returns
    its exit status."""
    spec = importlib.util.spec_from_file_location("convert_checkpoint_cli",
                                                  ROOT / "launch" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["convert_checkpoint.py", *args])
        try:
            return module.main([])
        finally:
            flags.FLAGS.unparse_flags()

    return run


def _sp_tokenizer_without_step_tokens(directory):
    """A Phi-3-like SentencePiece tokenizer (dummy prefix, BOS) of at most 200 ids and no step tokens."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=200, hard_vocab_limit=False,
        model_type="bpe", character_coverage=1.0, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2,
        num_threads=1, minloglevel=2)
    (directory / "tokenizer.model").write_bytes(buf.getvalue())


def _stock(tmp_path, case):
    """(directory, transformers model) of a random stock checkpoint and its tokenizer, without
    step tokens. qwen2: an untied head, 256 rows, a tokenizer.json of all 256 ids (the tables
    must grow). phi3: stored in bfloat16, a SentencePiece tokenizer of at most 200 ids (the new ids fit)."""
    directory = tmp_path / f"stock_{case}"
    if case == "qwen2":
        model = checkpoints.save("qwen2_gqa", directory)
        checkpoints.bpe_tokenizer_dir(directory, checkpoints.VOCAB, CORPUS)
    else:
        model = checkpoints.build("phi3").to(torch.bfloat16)
        model.save_pretrained(directory)
        _sp_tokenizer_without_step_tokens(directory)
    return directory, model


@pytest.mark.parametrize("case, rows_after, dtype",
                         [("qwen2", 384, "float32"), ("phi3", 256, "bfloat16")])
def test_convert_adds_the_step_tokens_with_rows_at_the_mean_and_keeps_the_rest(
        tmp_path, cli, capsys, case, rows_after, dtype):
    source, reference = _stock(tmp_path, case)
    before = Tokenizer.from_dir(source)
    ids_before = before.vocab_size
    assert ids_before == 256 if case == "qwen2" else ids_before <= 200
    assert vocab.missing_step_tokens(before) == list(STEP_TOKENS)
    out = tmp_path / "converted"
    assert cli(f"--source={source}", f"--out={out}") == 0
    printed = capsys.readouterr().out
    new_ids = dict(zip(STEP_TOKENS, range(ids_before, ids_before + len(STEP_TOKENS))))
    assert json.dumps(new_ids) in printed and f"embedding rows: 256 -> {rows_after}" in printed

    tokenizer = Tokenizer.from_dir(out)
    assert tokenizer.step_token_ids == new_ids
    text = "total = 2 * 20 * 12\nprint(total)"
    assert tokenizer.encode(f"{text}<end_of_step><code>") == [*before.encode(text),
                                                              new_ids["<end_of_step>"],
                                                              new_ids["<code>"]]
    assert read_config(out).vocab_size == rows_after
    assert json.loads((out / vocab.CONVERTED_FILE).read_text())["added"] == new_ids

    # The weights keep their dtype; the other rows are the source's, bit for bit.
    src, dst = tensor_files.TensorFiles.from_dir(source), tensor_files.TensorFiles.from_dir(out)
    embed = np.asarray(dst.get("model.embed_tokens.weight"))
    assert embed.dtype.name == dtype and json.loads((out / "config.json").read_text())["torch_dtype"] == dtype
    old, end = np.asarray(src.get("model.embed_tokens.weight")), ids_before + len(STEP_TOKENS)
    np.testing.assert_array_equal(embed[:ids_before], old[:ids_before])
    # (unused rows the new ids did not take)
    np.testing.assert_array_equal(embed[end:256], old[end:])
    model = from_pretrained(out)
    trained = np.asarray(src.get("model.embed_tokens.weight")[:ids_before], np.float32)
    mean = trained.mean(0)
    for i in new_ids.values():  # (mean in float32, then rounded to the stored dtype)
        np.testing.assert_allclose(np.asarray(model.embed[...])[i], mean,
                                   atol=1e-6 if dtype == "float32" else 1e-2)
    head = np.asarray(model.lm_head[...])  # [E, V]
    head_mean = np.asarray(src.get("lm_head.weight")[:ids_before], np.float32).mean(0)
    np.testing.assert_allclose(head[:, new_ids["<answer>"]], head_mean,
                               atol=1e-6 if dtype == "float32" else 1e-2)
    if rows_after > 256:  # rows added by growing start at the mean too
        np.testing.assert_allclose(np.asarray(model.embed[...])[-1], mean, atol=1e-6)

    # transformers loads the new directory and gives the old tokens the source's logits.
    if dtype == "float32":
        ids = checkpoints.token_ids(2, 12)
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        ours = checkpoints.logits(reloaded, ids)
        assert ours.shape[-1] == rows_after
        np.testing.assert_allclose(ours[..., :256], checkpoints.logits(reference, ids), atol=1e-4,
                                   rtol=0)

    # A converted directory has nothing to convert: said so, nothing written.
    again = tmp_path / "again"
    assert cli(f"--source={out}", f"--out={again}") == 0
    assert "already has every step token" in capsys.readouterr().out and not again.exists()


def test_convert_refuses_bad_input_naming_the_path(tmp_path, cli, capsys):
    missing = tmp_path / "nowhere"
    assert cli(f"--source={missing}", f"--out={tmp_path / 'out'}") == 2
    assert f"checkpoint directory {missing} does not exist" in capsys.readouterr().err

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    assert cli(f"--source={no_config}", f"--out={tmp_path / 'out'}") == 2
    assert f"{no_config} has no config.json" in capsys.readouterr().err

    no_tokenizer = tmp_path / "no_tokenizer"
    checkpoints.save("llama", no_tokenizer)
    assert cli(f"--source={no_tokenizer}", f"--out={tmp_path / 'out'}") == 2
    err = capsys.readouterr().err
    assert f"{no_tokenizer} has no tokenizer" in err and "--tokenizer" in err and "config.json" in err  # (found: ...)

    _sp_tokenizer_without_step_tokens(tmp_path)  # its tokenizer elsewhere: --tokenizer
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    assert cli(f"--source={no_tokenizer}", f"--tokenizer={tmp_path}", f"--out={taken}") == 2
    assert f"output {taken} already exists and is not an empty directory" in capsys.readouterr().err
    assert cli(f"--source={no_tokenizer}", f"--tokenizer={tmp_path}",
               f"--out={tmp_path / 'out'}") == 0
    assert Tokenizer.from_dir(tmp_path / "out").step_token_ids["<code>"] == Tokenizer.from_dir(tmp_path).vocab_size

    too_many = tmp_path / "too_many"  # a tokenizer of more ids than the model has rows
    checkpoints.save("llama", too_many)
    checkpoints.bpe_tokenizer_dir(too_many, 300, CORPUS)
    assert cli(f"--source={too_many}", f"--out={tmp_path / 'out2'}") == 2
    assert "do not belong together" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_step_token_ids_of_a_stock_tokenizer_says_to_convert(tmp_path):
    with pytest.raises(KeyError, match="launch/convert_checkpoint.py"):
        Tokenizer.from_dir(checkpoints.stock_tiny_base(tmp_path)).step_token_ids


# --- the evolution ----------------------------------------------------------------------------


@pytest.fixture
def conversions(monkeypatch):
    """The calls of `convert_checkpoint`, counted."""
    calls, real = [], vocab.convert_checkpoint

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(vocab, "convert_checkpoint", counted)
    return calls


def test_a_stock_checkpoint_is_converted_once_and_the_rounds_run_on_it(tmp_path, conversions):
    """The tiny world's base without its step tokens: the run converts it into the workdir and
    every model of the run (the "reference" bootstrap's SFT starts from the base) has them."""
    stock = checkpoints.stock_tiny_base(tmp_path / "stock")
    config = smoke_config(**{"model.checkpoint": str(stock), "rounds": 1,
                             "bootstrap.kind": "reference"})
    workdir = tmp_path / "run"
    results = evolve.run(config, workdir, progress=False)
    assert [x.round for x in results] == [0, 1] and (workdir / "round_1" / "eval.json").exists()
    assert len(conversions) == 1
    base = workdir / "base" / "model"
    ids = dict(zip(STEP_TOKENS, range(512, 519)))
    assert Tokenizer.from_dir(base).step_token_ids == ids and read_config(base).vocab_size == 640
    assert json.loads((workdir / "base" / "convert.json").read_text())["model"] == "base/model"
    # The bootstrap SFT started from the converted base (a stock start would have 512 rows). (The
    # converted base writes no step tokens yet, so the round solves nothing and trains no policy.)
    bootstrap = workdir / "bootstrap" / "model"
    assert Tokenizer.from_dir(bootstrap).step_token_ids == ids and read_config(bootstrap).vocab_size == 640
    # the source is untouched
    assert vocab.missing_step_tokens(Tokenizer.from_dir(stock)) == list(STEP_TOKENS)

    again = evolve.Evolution(config, workdir)  # a resumed run: the converted copy, not a new one
    assert again.base_checkpoint == str(base) and again.tokenizer.step_token_ids == ids
    assert again.policy_path(0) == str(workdir / "bootstrap" / "model")
    assert evolve.run(config, workdir, progress=False)[1].greedy == results[1].greedy
    assert len(conversions) == 1


def test_a_url_workdir_converts_once_and_a_new_machine_pulls_the_copy(tmp_path, conversions):
    stock = checkpoints.stock_tiny_base(tmp_path / "stock")
    config = smoke_config(**{"model.checkpoint": str(stock)})
    url = f"memory://bucket/{uuid.uuid4().hex}"
    first = evolve.Evolution(config, url, cache_dir=tmp_path / "machine0")
    assert first.policy_path(0) == str(tmp_path / "machine0" / "base" / "model")
    second = evolve.Evolution(config, url, cache_dir=tmp_path / "machine1")
    base = tmp_path / "machine1" / "base" / "model"
    assert second.base_checkpoint == str(base) and (base / "model.safetensors").exists()
    assert second.tokenizer.step_token_ids["<code>"] == 512
    assert len(conversions) == 1


def _with_tokenizer(config, path):
    # (as the pretrained configs have it)
    config.tokenizer = ml_collections.ConfigDict({"path": str(path)})
    return config


def test_the_tokenizer_path_is_converted_with_the_model_or_refused(tmp_path, conversions):
    stock = checkpoints.stock_tiny_base(tmp_path / "stock")
    # the tokenizer files apart from the weights
    weights, tok = tmp_path / "weights", tmp_path / "tok"
    weights.mkdir(), tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(stock / name, weights / name)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(stock / name, tok / name)
    run = evolve.Evolution(_with_tokenizer(smoke_config(**{"model.checkpoint": str(weights)}), tok),
                           tmp_path / "run")
    assert run.tokenizer.step_token_ids["<code>"] == 512 and len(conversions) == 1
    assert run.base_checkpoint == str(tmp_path / "run" / "base" / "model")

    # A tokenizer with the step tokens beside a model that never had them: their rows are padding.
    paired = _with_tokenizer(smoke_config(**{"model.checkpoint": str(stock)}), TINY_BASE)
    with pytest.raises(evolve.ConfigError,
                       match="has the step tokens but config.model.checkpoint="):
        evolve.Evolution(paired, tmp_path / "run2").tokenizer
    assert len(conversions) == 1


def test_evaluating_a_run_that_never_converted_its_stock_checkpoint_says_what_to_do(tmp_path, conversions):
    stock = checkpoints.stock_tiny_base(tmp_path / "stock")
    config = smoke_config(**{"model.checkpoint": str(stock)})
    evolve.Evolution(config, tmp_path / "run")  # a run directory (config.json), nothing converted
    reading = evolve.Evolution(config, tmp_path / "run", check_workdir=False)
    with pytest.raises(evolve.ConfigError,
                       match=r"has no step tokens.*launch/convert_checkpoint.py --source="):
        reading.policy_path(0)
    assert not conversions
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "evaluate.py"),
                           "--config=configs/tiny.py:smoke",
                           f"--workdir={tmp_path / 'run'}", "--round=0",
                           f"--config.model.checkpoint={stock}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and f"config.model.checkpoint='{stock}' has no step tokens" in done.stderr, done.stderr


def test_a_stock_bootstrap_checkpoint_is_refused_with_what_to_do(tmp_path):
    """The "checkpoint" bootstrap runs with the run's tokenizer: a stock one has no rows for its ids."""
    stock = checkpoints.stock_tiny_base(tmp_path / "stock")
    config = smoke_config(**{"bootstrap.kind": "checkpoint", "bootstrap.checkpoint": str(stock)})
    with pytest.raises(evolve.ConfigError,
                       match=r"config.bootstrap.checkpoint=.*'<code>': None.*convert_checkpoint"):
        evolve.Evolution(config, tmp_path / "run").models.check_bootstrap_checkpoint()
    # its ids: 512.., the base's (TINY_BASE): 4..
    vocab.convert_checkpoint(stock, tmp_path / "converted")
    config.bootstrap.checkpoint = str(tmp_path / "converted")
    with pytest.raises(evolve.ConfigError, match=r"'<code>': 512.*'<code>': 4"):
        evolve.Evolution(config, tmp_path / "run2").models.check_bootstrap_checkpoint()
    config.bootstrap.checkpoint = TINY_BASE
    evolve.Evolution(config, tmp_path / "run3").models.check_bootstrap_checkpoint()
