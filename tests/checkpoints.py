"""Tiny random Hugging Face checkpoints, built locally with transformers (no hub access)."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import torch
import transformers

VOCAB = 256

_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
               pad_token_id=0)

# name -> (config class, model class, config kwargs)
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(num_attention_heads=4, num_key_value_heads=4)),
    "llama_bias_llama3_rope": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "qwen2_gqa": ("Qwen2Config", "Qwen2ForCausalLM",
                  dict(num_attention_heads=8, num_key_value_heads=2)),
    "qwen2_sliding": ("Qwen2Config", "Qwen2ForCausalLM",
                      dict(num_attention_heads=4, num_key_value_heads=2,
                                                              use_sliding_window=True,
                           sliding_window=7,
                                                              # layer 1 slides
                                                              max_window_layers=1)),
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM",
                   dict(num_attention_heads=4, num_key_value_heads=2,
                                                           tie_word_embeddings=True)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(num_attention_heads=4, num_key_value_heads=4,
                                                   original_max_position_embeddings=256)),
    "phi3_gqa_sliding": ("Phi3Config", "Phi3ForCausalLM",
                         dict(num_attention_heads=4, num_key_value_heads=2,
                                                               original_max_position_embeddings=256,
                                                               sliding_window=7)),
    # Phi-3 128k style: sequences longer than 16 tokens switch to the long factors.
    "phi3_longrope": ("Phi3Config", "Phi3ForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        original_max_position_embeddings=16,
        rope_scaling={"type": "longrope", "short_factor": list(np.linspace(1.0, 1.5, 8)),
                      "long_factor": list(np.linspace(1.0, 6.0, 8))})),
}


def build(name: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A float32 model whose every weight (norms and biases too) is random and large enough that
    logits spread over several units, so a wrong layout or a dropped term cannot hide."""
    config_cls, model_cls, kwargs = CASES[name]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**_COMMON, **kwargs})
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def save(name: str, directory, seed: int = 0, **save_kwargs) -> transformers.PreTrainedModel:
    model = build(name, seed)
    model.save_pretrained(directory, **save_kwargs)
    return model


def logits(model: transformers.PreTrainedModel, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


def bpe_tokenizer_dir(directory, vocab_size: int, corpus, specials=()) -> None:
    """A byte-level BPE `tokenizer.json` trained on `corpus`, laid out like Qwen2.5's (specials
    after the BPE vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(list(specials))
    tok.save(str(directory / "tokenizer.json"))


def token_ids(batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(3, VOCAB, (batch, length)).astype(np.int32)


def stock_tiny_base(directory) -> pathlib.Path:
    """The tiny world's pretrained base as a checkpoint downloaded from the hub would be: the same
    weights, but a tokenizer without the step tokens. Their pieces become `<unused_k>` (as stock
    vocabularies hold reserved tokens), so every other id, and the embedding table of 512 rows,
    stay as they are; a conversion has to grow the table for the step tokens."""
    from sentencepiece import sentencepiece_model_pb2

    from rstar_jax.config_lib import TINY_BASE
    from rstar_jax.tokenizer import STEP_TOKENS

    base, directory = pathlib.Path(TINY_BASE), pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        shutil.copy(base / name, directory / name)
    proto = sentencepiece_model_pb2.ModelProto.FromString((base / "tokenizer.model").read_bytes())
    renamed = 0
    for piece in proto.pieces:
        if piece.piece in STEP_TOKENS:
            piece.piece = f"<unused_{renamed}>"
            renamed += 1
    assert renamed == len(STEP_TOKENS), renamed
    (directory / "tokenizer.model").write_bytes(proto.SerializeToString())
    return directory
