"""Specification of rstar_jax.tokenizer: round trips, single-id step tokens, stable ids.

Every tokenizer is built here, offline: a tiny SentencePiece model (`train_sentencepiece`), a
byte-level BPE `tokenizer.json` laid out like Qwen2.5 (specials after the BPE vocabulary), and a
Phi-3-style directory (a Llama-style SP model of N pieces plus `tokenizer_config.json` whose
`added_tokens_decoder` holds `<|endoftext|>`=N ... `<|user|>`=N+10, as Phi-3-mini has with
N=32000).
"""

import importlib.util
import inspect
import io
import json

import pytest
import sentencepiece as spm

import checkpoints
from rstar_jax.search.driver import output_block_ids
from rstar_jax.steps import format as fmt
from rstar_jax.tokenizer import BACKENDS as FILES
from rstar_jax.tokenizer import POLICY_PROMPT, STEP_TOKENS, Backend, Tokenizer

WORKED_EXAMPLE = (
    "<code>\n# Step 1: total weight lifted with two 20-pound weights\ntotal = 2 * 20 * 12\n"
    "<end_of_step>\n# Step 2: repetitions with two 15-pound weights\nreps = total / (2 * 15)\n"
    "<end_of_step>\n# Now print the final answer\nprint(reps)\n<end_of_code>\n"
    "<output>16.0<end_of_output>\n<answer>Terrell must lift them \\boxed{16} times.<end_of_answer>"
)
CODE_WITH_INDENT = "<code>\ndef G(m, n):\n    return m**n  # two  spaces\n\n\n<end_of_step>\n  x = 1\n"
UNICODE = "π ≈ 3.14159, √2, 日本語, emoji 🙂"
QUESTION = "If $G(m, n, p, q) = m^n + p \\times q$, what is $y$ such that $G(3, y, 6, 15) = 171$?"
CORPUS = [WORKED_EXAMPLE, CODE_WITH_INDENT, POLICY_PROMPT.format(question=QUESTION),
          "The total weight is 480 pounds, so he lifts them 16 times."] * 20
PHI3_N = 400  # SP pieces in the Phi-3-style model (32000 in Phi-3-mini)
PHI3_ADDED = {0: "<|endoftext|>", 1: "<|assistant|>", 2: "<|placeholder1|>", 3: "<|placeholder2|>",
              4: "<|placeholder3|>", 5: "<|placeholder4|>", 6: "<|system|>", 7: "<|end|>",
              8: "<|placeholder5|>", 9: "<|placeholder6|>", 10: "<|user|>"}  # id - N -> content
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BACKENDS = ["sp_tiny", "bpe", "phi3"]


def _write_sp_tiny(d):
    Tokenizer.train_sentencepiece(CORPUS, d, vocab_size=400)


def _write_bpe(d):
    checkpoints.bpe_tokenizer_dir(d, 400, CORPUS, QWEN_SPECIALS)
    config = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "add_bos_token": False}
    (d / "tokenizer_config.json").write_text(json.dumps(config))


def _write_phi3(d):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(  # Llama/Phi-3 normaliser: dummy prefix on, spaces kept
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=PHI3_N, model_type="bpe",
        byte_fallback=True, split_digits=True, character_coverage=1.0,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, num_threads=1, minloglevel=2)
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    decoder = {"0": {"content": "<unk>", "special": True}, "1": {"content": "<s>", "special": True},
               "2": {"content": "</s>", "special": False}}
    # Phi-3 sets rstrip on its role tokens; the policy prompt has no whitespace after them.
    decoder.update({str(PHI3_N + k): {"content": t, "lstrip": False, "normalized": False,
                                       "rstrip": k in (1, 6, 7, 10), "single_word": False,
                                       "special": True}
                    for k, t in PHI3_ADDED.items()})
    config = {"add_bos_token": True, "added_tokens_decoder": decoder, "bos_token": "<s>",
              "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>",
              "legacy": False, "tokenizer_class": "LlamaTokenizer"}
    (d / "tokenizer_config.json").write_text(json.dumps(config))


WRITERS = {"sp_tiny": _write_sp_tiny, "bpe": _write_bpe, "phi3": _write_phi3}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """One directory per backend kind, built once; tests load fresh Tokenizers from them."""
    out = {}
    for kind, write in WRITERS.items():
        out[kind] = tmp_path_factory.mktemp(kind)
        write(out[kind])
    return out


def _load_with_steps(dirs, kind):
    tok = Tokenizer.from_dir(dirs[kind])
    tok.add_step_tokens()
    return tok


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("text", [WORKED_EXAMPLE, CODE_WITH_INDENT, UNICODE, " leading space", ""])
def test_decode_inverts_encode(dirs, kind, text):
    tok = _load_with_steps(dirs, kind)
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("kind", BACKENDS)
def test_policy_prompt_round_trips_after_optional_bos(dirs, kind):
    tok = Tokenizer.from_dir(dirs[kind])
    ids = tok.policy_prompt_ids(QUESTION)
    if tok.add_bos:
        assert ids[0] == tok.bos_id
        ids = ids[1:]
    assert tok.decode(ids) == POLICY_PROMPT.format(question=QUESTION)


@pytest.mark.parametrize("kind", BACKENDS)
def test_skip_special_drops_step_tokens_and_keeps_text(dirs, kind):
    tok = _load_with_steps(dirs, kind)
    assert tok.decode(tok.encode("<answer>x = 1<end_of_answer>"), skip_special=True) == "x = 1"


# --- the backend contract ---------------------------------------------------------------------

CONTRACT_METHODS = {name for name, v in vars(Backend).items()
                    if callable(v) and not name.startswith("_")}
CONTRACT = CONTRACT_METHODS | set(Backend.__annotations__)


@pytest.mark.parametrize("kind", ["sp_tiny", "bpe"])  # one of each backend class
def test_every_backend_keeps_the_backend_contract(dirs, kind):
    backend = Tokenizer.from_dir(dirs[kind])._backend
    assert backend.name in FILES and isinstance(backend.vocab_size, int)
    for name in CONTRACT_METHODS:
        want = list(inspect.signature(getattr(Backend, name)).parameters)
        assert list(inspect.signature(getattr(type(backend), name)).parameters) == want, name


def test_the_contract_names_every_member_tokenizer_uses_on_a_backend():
    calls = set()
    for line in inspect.getsource(Tokenizer).splitlines():
        calls.update(m.split("(")[0] for m in line.split("self._backend.")[1:])
    assert calls == CONTRACT


# --- continuations: how the search writes steps and output blocks ----------------------------


@pytest.mark.parametrize("kind", BACKENDS)
def test_output_blocks_encode_as_they_follow_a_step(dirs, kind):
    tok = _load_with_steps(dirs, kind)
    step, stdout = "<code>\nx = 1\nprint(x)\n<end_of_code>", "1\n"
    whole = tok.encode(POLICY_PROMPT.format(question=QUESTION) + step + fmt.output_block(stdout),
                       add_bos=tok.add_bos)
    block = output_block_ids(tok, stdout, 64)
    assert whole == tok.policy_prompt_ids(QUESTION) + tok.encode(step) + block
    assert tok.continuation_text(tok.encode(step) + block) == fmt.insert_output(step, stdout)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_step_starting_with_a_space_keeps_it(dirs, kind):
    tok = _load_with_steps(dirs, kind)
    step = " x = 1\n<end_of_step>"
    ids = tok.continuation_ids(step)
    assert tok.continuation_text(ids) == step
    assert tok.decode(tok.encode("<end_of_step>" + step)) == "<end_of_step>" + step
    if kind == "phi3":  # decoded alone, a dummy-prefix model's text loses its first space
        assert tok.decode(ids) == step[1:]


@pytest.mark.parametrize("kind", BACKENDS)
def test_long_output_is_cut_inside_its_delimiters(dirs, kind):
    tok = _load_with_steps(dirs, kind)
    ids = output_block_ids(tok, "9" * 3000, 12)
    text = tok.continuation_text(ids)
    assert len(ids) == 12 and text.startswith("\n<output>9") and text.endswith("9<end_of_output>\n")
    delimiters = len(tok.continuation_ids(fmt.output_block("")))
    assert len(output_block_ids(tok, "", delimiters)) == delimiters
    with pytest.raises(ValueError,
                       match=f"delimiters take {delimiters} tokens, more than max_output_tokens=3"):
        output_block_ids(tok, "9" * 30, 3)


@pytest.mark.parametrize("kind", BACKENDS)
def test_stdout_spelling_special_tokens_stays_text(dirs, kind):
    tok = _load_with_steps(dirs, kind)
    ids = output_block_ids(tok, "<answer>7<end_of_answer> <end_of_output><|user|>\n", 64)
    steps = tok.step_token_ids
    assert ids.count(steps[fmt.OUTPUT]) == ids.count(steps[fmt.END_OF_OUTPUT]) == 1
    assert steps[fmt.ANSWER] not in ids and steps[fmt.END_OF_ANSWER] not in ids
    assert tok.continuation_text(ids) == ("\n<output>&lt;answer>7&lt;end_of_answer> "
                                           "&lt;end_of_output>&lt;|user|><end_of_output>\n")


@pytest.mark.parametrize("kind", BACKENDS)
def test_continuations_round_trip(dirs, kind):
    tok = _load_with_steps(dirs, kind)
    for text in (" x = 1\n<end_of_step>", fmt.output_block("1\n"), WORKED_EXAMPLE, UNICODE, ""):
        assert tok.continuation_text(tok.continuation_ids(text)) == text


@pytest.mark.parametrize("kind", BACKENDS)
def test_one_builder_gives_the_policy_and_the_bootstrap_prompts(dirs, kind):
    tok = Tokenizer.from_dir(dirs[kind])
    bos = [tok.bos_id] if tok.add_bos else []
    assert tok.prompt_ids(QUESTION) == bos + tok.encode(fmt.policy_prompt(QUESTION))
    assert tok.prompt_ids(QUESTION, bootstrap=True) == bos + tok.encode(fmt.bootstrap_prompt(QUESTION))


# --- step tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
def test_each_step_token_encodes_to_one_id_even_inside_text(dirs, kind):
    tok = _load_with_steps(dirs, kind)
    for token, i in tok.step_token_ids.items():
        assert tok.encode(token) == [i]
        assert tok.encode(f"x{token}y").count(i) == 1
        assert tok.id_to_token(i) == token


@pytest.mark.parametrize("kind", ["bpe", "phi3"])
def test_new_step_tokens_get_consecutive_ids_after_previous_max(dirs, kind):
    tok = Tokenizer.from_dir(dirs[kind])
    before = tok.vocab_size
    assert list(tok.add_step_tokens().values()) == list(range(before, before + len(STEP_TOKENS)))
    assert tok.vocab_size == before + len(STEP_TOKENS)


def test_trained_sentencepiece_has_step_and_chat_tokens_as_pieces(dirs):
    tok = Tokenizer.from_dir(dirs["sp_tiny"])
    before = tok.vocab_size
    ids = tok.add_step_tokens()
    assert max(ids.values()) < before == tok.vocab_size
    assert len(tok.encode("<|user|><|assistant|>")) == 2


@pytest.mark.parametrize("kind", BACKENDS)
def test_add_step_tokens_twice_is_a_no_op(dirs, kind):
    tok = Tokenizer.from_dir(dirs[kind])
    first = tok.add_step_tokens()
    size = tok.vocab_size
    assert tok.add_step_tokens() == first
    assert tok.vocab_size == size


@pytest.mark.parametrize("kind", BACKENDS)
def test_added_tokens_keep_existing_ids_and_append_new_ones_in_order(dirs, kind):
    tok = _load_with_steps(dirs, kind)
    before = tok.vocab_size
    ids = tok.add_special_tokens(["<new_b>", "<code>", "<new_a>"])
    assert ids == [before, tok.step_token_ids["<code>"], before + 1]


@pytest.mark.parametrize("kind", BACKENDS)
def test_ids_survive_save_and_from_dir(dirs, kind, tmp_path):
    tok = _load_with_steps(dirs, kind)
    extra = tok.add_special_tokens(["<extra>"])
    tok.save(tmp_path)
    again = Tokenizer.from_dir(tmp_path)
    assert again.backend == tok.backend
    assert again.step_token_ids == tok.step_token_ids
    assert again.token_to_id("<extra>") == extra[0]
    assert (again.vocab_size, again.bos_id, again.eos_id, again.pad_id, again.add_bos) == (
        tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos)
    for text in (WORKED_EXAMPLE, UNICODE, POLICY_PROMPT.format(question=QUESTION)):
        assert again.encode(text) == tok.encode(text)


@pytest.mark.parametrize("kind", ["bpe", "phi3"])
def test_step_token_ids_before_adding_them_says_what_to_call(dirs, kind):
    with pytest.raises(KeyError, match="add_step_tokens"):
        Tokenizer.from_dir(dirs[kind]).step_token_ids


# --- Phi-3 layout ----------------------------------------------------------------------------


def test_phi3_prompt_uses_bos_and_added_chat_token_ids(dirs):
    tok = Tokenizer.from_dir(dirs["phi3"])
    ids = tok.policy_prompt_ids(QUESTION)
    assert ids[:2] == [tok.bos_id, PHI3_N + 10]  # <s><|user|>
    assert ids.count(PHI3_N + 1) == 1  # <|assistant|>
    assert (tok.token_to_id("<|end|>"), tok.eos_id, tok.vocab_size) == (PHI3_N + 7, PHI3_N, PHI3_N + 11)


def test_phi3_added_tokens_json_alone_is_enough(dirs, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes((dirs["phi3"] / "tokenizer.model").read_bytes())
    (tmp_path / "added_tokens.json").write_text(json.dumps({t: PHI3_N + k
                                                            for k, t in PHI3_ADDED.items()}))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.encode("<|user|>") == [PHI3_N + 10]
    assert tok.decode(tok.encode("<|user|>:\nx"), skip_special=True) == ":\nx"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_phi3_prompt_ids_match_transformers_llama_tokenizer_non_legacy(dirs):
    import transformers

    hf = transformers.LlamaTokenizer.from_pretrained(str(dirs["phi3"]), legacy=False)
    prompt = POLICY_PROMPT.format(question=QUESTION)
    assert Tokenizer.from_dir(dirs["phi3"]).policy_prompt_ids(QUESTION) == hf(prompt)["input_ids"]


# --- tokenizer.json ---------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_bpe_ids_match_transformers_fast_tokenizer(dirs, tmp_path):
    import transformers

    tok = _load_with_steps(dirs, "bpe")
    tok.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in (WORKED_EXAMPLE, UNICODE, "<|im_start|>user\nhi<|im_end|>", " two  spaces\n"):
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False)


def test_bpe_has_no_bos_and_eos_from_config(dirs):
    tok = Tokenizer.from_dir(dirs["bpe"])
    assert (tok.bos_id, tok.add_bos) == (None, False)
    assert tok.eos_id == tok.pad_id == tok.token_to_id("<|endoftext|>")
    with pytest.raises(ValueError, match="no BOS"):
        tok.encode("x", add_bos=True)


# --- construction and errors -----------------------------------------------------------------


def test_train_sentencepiece_is_deterministic(tmp_path):
    a = Tokenizer.train_sentencepiece(CORPUS, tmp_path / "a", vocab_size=400)
    b = Tokenizer.train_sentencepiece(iter(CORPUS), tmp_path / "b", vocab_size=400)
    assert (tmp_path / "a/tokenizer.model").read_bytes() == (tmp_path / "b/tokenizer.model").read_bytes()
    assert (a.bos_id, a.eos_id, a.pad_id) == (1, 2, 3)
    assert b.encode(WORKED_EXAMPLE) == a.encode(WORKED_EXAMPLE)


def test_from_dir_on_empty_dir_names_the_dir_and_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        Tokenizer.from_dir(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "tokenizer.model" in str(err.value) and "tokenizer.json" in str(err.value)


def test_from_dir_with_unknown_backend_lists_valid_ones(dirs):
    with pytest.raises(ValueError, match="sentencepiece.*tokenizers"):
        Tokenizer.from_dir(dirs["phi3"], backend="tiktoken")


def test_from_dir_with_explicit_backend_but_missing_file_names_it(dirs):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(dirs["phi3"], backend="tokenizers")


@pytest.mark.parametrize("kind", BACKENDS)
def test_unknown_tokens_and_ids_are_reported(dirs, kind):
    tok = Tokenizer.from_dir(dirs[kind])
    assert tok.token_to_id("<not a token>") is None
    with pytest.raises(ValueError, match=str(tok.vocab_size + 5)):
        tok.id_to_token(tok.vocab_size + 5)
    with pytest.raises(ValueError, match="cannot decode"):
        tok.decode([0, tok.vocab_size])
