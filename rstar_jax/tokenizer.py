"""One tokenizer interface over SentencePiece (Phi-3, tiny models) and tokenizer.json (Qwen2.5).

rStar-Math adds seven step tokens to the policy's vocabulary (RSTAR.md section 2). Their ids end
up in embedding tables, stop-token lists and saved trees, so they must be stable: appended right
after the current largest id, saved with the tokenizer, and restored to the same ids.

Two backends, one behaviour, both held to the `Backend` protocol by `Tokenizer`:
- `sentencepiece`: a `tokenizer.model` plus, as Hugging Face lays it out, added tokens kept
  *outside* the SP model in `tokenizer_config.json` (`added_tokens_decoder`) or
  `added_tokens.json`. Phi-3 keeps `<|endoftext|>`, `<|assistant|>`, `<|user|>`... there, with ids
  beyond the SP pieces. Text is split on the added tokens, the pieces between are encoded by SP,
  and the added ids are spliced in.
- `tokenizers`: a Hugging Face `tokenizer.json`; added tokens use the library's own machinery.

Added tokens match exactly: `lstrip`/`rstrip` flags in tokenizer_config.json are ignored, so text
round-trips (HF would also swallow whitespace beside such tokens; the policy prompt has none
there, so the ids agree). A literal "▁" in text becomes a space, as in every SP tokenizer.
"""

from __future__ import annotations

import io
import itertools
import json
import pathlib
import re
from collections.abc import Iterable
from typing import Protocol

import sentencepiece as spm
import tokenizers
from sentencepiece import sentencepiece_model_pb2

# The step and chat tokens and the prompt texts live with the step format (POLICY_PROMPT is
# re-exported here).
from rstar_jax.steps import format as fmt
from rstar_jax.steps.format import CHAT_TOKENS, POLICY_PROMPT, STEP_TOKENS

BACKENDS = {"sentencepiece": "tokenizer.model", "tokenizers": "tokenizer.json"}


def backend_of(path: str | pathlib.Path) -> str | None:
    """The backend whose file directory `path` holds (`tokenizer.model` first, as Phi-3 ships
    both), or None when it holds no tokenizer."""
    return next((b for b, f in BACKENDS.items() if (pathlib.Path(path) / f).is_file()), None)


def listing(path: pathlib.Path) -> list[str] | str:
    """What a directory holds, for an error message that says which files were found."""
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else "no such directory"


CONFIG_FILE = "tokenizer_config.json"


class Backend(Protocol):
    """What `Tokenizer` needs of a tokenizer library, and all it may use of one.

    `Tokenizer` does the rest on top of these: BOS, the bos/eos/pad names, checking ids before
    `decode`, prompts and continuations. A backend keeps its own quirks (SentencePiece's dummy
    prefix, splitting text on added tokens) inside these methods.
    """

    name: str  # a key of BACKENDS: the file `save` writes and `Tokenizer.from_dir` reads
    # Max id + 1, added tokens included: ids index embedding rows, and may have gaps. Kept up to
    # date by `add`: `Tokenizer.decode` reads it for every id.
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Ids of `text` as the start of a sequence; no BOS or EOS is added.

        Each added token written in `text` becomes its one id; the text between added tokens is
        encoded by the model. Text after an added token continues the sequence: a Llama-style
        SentencePiece model puts its dummy-prefix space before the text's first segment only.
        `Tokenizer.continuation_ids` relies on this. (`tokenizers` follows its tokenizer.json: a
        legacy Metaspace `prepend_scheme="always"` puts a space after every added token.)
        """

    def decode(self, ids: list[int], skip_special: bool) -> str:
        """Text of `ids`, every one of them a token (`Tokenizer.decode` checks them first).

        `skip_special` drops BOS/EOS/pad and the tokens added as special. Text at the start of the
        sequence (after BOS) loses the dummy-prefix space `encode` put there, so text round-trips
        (but for a literal "▁", which SentencePiece reads as a space).
        """

    def token_to_id(self, token: str) -> int | None:
        """The id of `token` as one vocabulary entry (a model piece or an added token), or None."""

    def id_to_token(self, i: int) -> str | None:
        """The vocabulary entry of id `i` (a piece as the model writes it, e.g. "▁the"), or None
        when no token has this id."""

    def add(self, tokens: list[str]) -> None:
        """Makes each of `tokens` a special added token: one the vocabulary has keeps its id, the
        others get consecutive ids after the largest, in order; adding again changes nothing."""

    def save(self, out_dir: pathlib.Path) -> dict:
        """Writes the backend's file (BACKENDS[name]) into `out_dir` and returns what it needs in
        tokenizer_config.json to come back with the same id for every token."""


class _SentencePiece:
    """A SentencePiece model plus added tokens (content -> id) that live outside it.

    Dummy prefix: Llama-style models (Phi-3) set `add_dummy_prefix`, so SP encodes "x" as "▁x"
    and its decoder drops that space again. Applied to every segment between added tokens it
    would invent a space after each of them. We follow HF's `LlamaTokenizer(legacy=False)`
    (Metaspace `prepend_scheme="first"`): only the text's first segment gets the prefix, so
    `<|user|>:` encodes as [<|user|>, ":"]. Later segments are encoded, and everything is
    decoded, with a copy of the model whose dummy prefix is off; decode strips the prefix space
    by hand from text that starts the sequence (after BOS), as SP's own decoder does.
    A legacy `tokenizer.json` (as some Phi-3 snapshots ship for `AutoTokenizer`) puts a "▁"
    after each added token instead, so its ids can differ from ours by that one token.
    """

    name = "sentencepiece"

    def __init__(self, proto: bytes, added: dict[str, int], special: set[int]):
        self.proto = proto
        self.sp_start = spm.SentencePieceProcessor(model_proto=proto)
        model = sentencepiece_model_pb2.ModelProto.FromString(proto)
        self.dummy_prefix = model.normalizer_spec.add_dummy_prefix
        model.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
        self.added, self.special = dict(added), set(special)
        self._reindex()

    def _reindex(self) -> None:
        self.by_id = {i: t for t, i in self.added.items()}
        # Longest first, so "<end_of_code>" is never cut at a shorter added token.
        alternatives = sorted(self.added, key=len, reverse=True)
        self.pattern = None
        if alternatives:
            self.pattern = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        self.vocab_size = max([self.sp.get_piece_size() - 1, *self.added.values()]) + 1

    def encode(self, text: str) -> list[int]:
        # Even indices of the split are text, odd ones are added tokens. Control tokens (<s>)
        # do not end the text start, so decode can treat BOS as transparent too.
        parts = self.pattern.split(text) if self.pattern else [text]
        ids, at_start = [], True
        for k, part in enumerate(parts):
            if k % 2:
                ids.append(self.added[part])
                at_start = at_start and self.is_control(ids[-1])
            elif part:
                ids += (self.sp_start if at_start else self.sp).encode(part)
                at_start = False
        return ids

    def is_control(self, i: int) -> bool:
        return i < self.sp.get_piece_size() and self.sp.is_control(i)

    def is_piece(self, i: int) -> bool:
        """Whether SP decodes `i` as text (not an added token, not BOS/EOS/pad)."""
        return i not in self.by_id and not self.is_control(i)

    def decode(self, ids: list[int], skip_special: bool) -> str:
        out, at_start = [], True
        for is_text, group in itertools.groupby(ids, key=self.is_piece):
            group = list(group)
            if is_text:
                text = self.sp.decode(group)
                if at_start and self.dummy_prefix and text.startswith(" "):
                    text = text[1:]
                out.append(text)
            else:
                out += [self.by_id.get(i) or self.sp.id_to_piece(i) for i in group
                        if not (skip_special and (self.is_control(i) or i in self.special))]
            at_start = at_start and not is_text and all(map(self.is_control, group))
        return "".join(out)

    def token_to_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        i = self.sp.piece_to_id(token)
        return None if self.sp.is_unknown(i) and token != self.sp.id_to_piece(i) else i

    def id_to_token(self, i: int) -> str | None:
        if i in self.by_id:
            return self.by_id[i]
        return self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else None

    def add(self, tokens: list[str]) -> None:
        for token in tokens:
            i = self.token_to_id(token)
            self.added[token] = self.vocab_size if i is None else i
            self.vocab_size = max(self.vocab_size, self.added[token] + 1)
            self.special.add(self.added[token])
        self._reindex()

    def save(self, out_dir: pathlib.Path) -> dict:
        (out_dir / "tokenizer.model").write_bytes(self.proto)
        decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": i in self.special}
                   for i, t in sorted(self.by_id.items())}
        return {"added_tokens_decoder": decoder, "unk_token": self.sp.id_to_piece(self.sp.unk_id())}


class _HFTokenizers:
    """A Hugging Face `tokenizers.Tokenizer`; added tokens are the library's own."""

    name = "tokenizers"

    def __init__(self, tok: tokenizers.Tokenizer):
        self.tok = tok
        self._count()

    def _count(self) -> None:
        # Max id + 1, not the number of entries: ids index embedding rows.
        self.vocab_size = max(self.tok.get_vocab(with_added_tokens=True).values()) + 1

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def add(self, tokens: list[str]) -> None:
        # The library reuses ids of tokens it knows and appends the others after the max id.
        self.tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                                     for t in tokens])
        self._count()

    def save(self, out_dir: pathlib.Path) -> dict:
        self.tok.save(str(out_dir / "tokenizer.json"))
        return {}


class Tokenizer:
    """Text <-> ids for the policy and PPM, with the rStar step tokens as single, stable ids.

    Build one with `from_dir` (a Hugging Face tokenizer directory) or `train_sentencepiece`
    (tiny models for tests and local runs). `add_bos` says whether this model's prompts start
    with BOS (`add_bos_token` in tokenizer_config.json; default: yes for SentencePiece models
    that have a BOS piece, as Llama and Phi-3 do; no for tokenizer.json, as Qwen2.5).
    """

    def __init__(self, backend: Backend, *, bos_token: str | None,
                 eos_token: str | None, pad_token: str | None, add_bos: bool):
        self._backend = backend
        self._names = {"bos": bos_token, "eos": eos_token, "pad": pad_token}
        self.bos_id, self.eos_id, self.pad_id = (self._special_id(k) for k in self._names)
        self.add_bos = add_bos and self.bos_id is not None

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | pathlib.Path, backend: str | None = None) -> Tokenizer:
        """Loads `tokenizer.model` (preferred, as Phi-3 ships both) or `tokenizer.json` from
        `path`."""
        path = pathlib.Path(path)
        if backend is None:
            backend = backend_of(path)
            if backend is None:
                raise FileNotFoundError(
                    f"tokenizer dir {path} has none of {list(BACKENDS.values())} (found: "
                    f"{listing(path)}); "
                    "expected a Hugging Face tokenizer directory or one written by Tokenizer.save")
        if backend not in BACKENDS:
            raise ValueError(f"unknown tokenizer backend {backend!r}; valid: {sorted(BACKENDS)}")
        if not (path / BACKENDS[backend]).is_file():
            raise FileNotFoundError(f"tokenizer dir {path} has no {BACKENDS[backend]}, "
                                    f"which the {backend!r} backend needs")
        config = _read_json(path / CONFIG_FILE)
        if backend == "tokenizers":
            impl = _HFTokenizers(tokenizers.Tokenizer.from_file(str(path / "tokenizer.json")))
            names = {f"{k}_token": _name(config, f"{k}_token", None) for k in ("bos", "eos", "pad")}
            return cls(impl, **names, add_bos=config.get("add_bos_token", False))
        added, special = _added_tokens(config, _read_json(path / "added_tokens.json"), path)
        proto = (path / "tokenizer.model").read_bytes()
        return cls._from_sentencepiece(proto, added, special, config)

    @classmethod
    def _from_sentencepiece(cls, proto: bytes, added: dict[str, int], special: set[int],
                            config: dict) -> Tokenizer:
        impl = _SentencePiece(proto, added, special)
        sp = impl.sp
        defaults = {"bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()}  # -1: none
        names = {f"{k}_token": _name(config, f"{k}_token", sp.id_to_piece(i) if i >= 0 else None)
                 for k, i in defaults.items()}
        return cls(impl, **names, add_bos=config.get("add_bos_token", True))

    @classmethod
    def train_sentencepiece(cls, texts: Iterable[str], out_dir: str | pathlib.Path,
                            vocab_size: int = 512,
                            user_defined_symbols: Iterable[str] = ()) -> Tokenizer:
        """Trains a tiny BPE SentencePiece model in-process and writes `out_dir/tokenizer.model`.

        Byte fallback makes any unicode round-trip; digits are split like Llama's. Step and chat
        tokens are user-defined symbols, so they are single pieces. Identity normalisation and
        no dummy prefix keep spaces and newlines exactly, which code steps need. `vocab_size` is
        an upper bound: a corpus too small for it yields fewer pieces instead of an error.
        Single-threaded, so the same texts give the same model.
        """
        symbols = list(dict.fromkeys((*STEP_TOKENS, *CHAT_TOKENS, *user_defined_symbols)))
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, split_digits=True, character_coverage=1.0,
            normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            user_defined_symbols=symbols, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            hard_vocab_limit=False, max_sentence_length=1 << 20, num_threads=1, minloglevel=2)
        out_dir = pathlib.Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tokenizer.model").write_bytes(buf.getvalue())
        return cls._from_sentencepiece(buf.getvalue(), {}, set(), {})

    def save(self, out_dir: str | pathlib.Path) -> None:
        """Writes what `from_dir` needs to rebuild this tokenizer with the same id for every
        token."""
        out_dir = pathlib.Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = self._backend.save(out_dir)
        config.update({f"{k}_token": v for k, v in self._names.items()}, add_bos_token=self.add_bos)
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    # --- text <-> ids -------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def vocab_size(self) -> int:
        """Number of ids including added tokens (max id + 1); embedding tables need at least
        this."""
        return self._backend.vocab_size

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids of `text`; added and special tokens written in the text map to their single id."""
        if add_bos and self.bos_id is None:
            raise ValueError("encode(add_bos=True) but this tokenizer has no BOS token; "
                             "pass add_bos=False or set bos_token in tokenizer_config.json")
        return [self.bos_id] * add_bos + self._backend.encode(text)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids` (any iterable of ints, e.g. an int32[L] array).

        `skip_special` drops BOS/EOS/pad and tokens added as special (the step tokens among them).
        With a Llama-style SP model, ids that start with text (after BOS) lose one leading space,
        as in SP's and HF's decoders: encode put it there. Decode a continuation together with
        the ids before it, or accept that.
        """
        ids = [int(i) for i in ids]
        size = self.vocab_size
        bad = [i for i in ids if not 0 <= i < size or self._backend.id_to_token(i) is None]
        if bad:
            raise ValueError(f"cannot decode ids {bad[:8]}: not tokens of this tokenizer "
                             f"(vocab_size={self.vocab_size}); mask logits of unused embedding "
                             "rows")
        return self._backend.decode(ids, skip_special)

    def token_to_id(self, token: str) -> int | None:
        """The id of `token` as a single vocabulary entry, or None if it is not one."""
        return self._backend.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        token = self._backend.id_to_token(int(i)) if 0 <= i < self.vocab_size else None
        if token is None:
            raise ValueError(f"id {i} is not a token of this tokenizer "
                             f"(vocab_size={self.vocab_size})")
        return token

    # --- prompts and continuations -----------------------------------------------------------

    def prompt_ids(self, question: str, bootstrap: bool = False) -> list[int]:
        """The policy's prompt for `question`, with BOS if the model uses one (RSTAR.md section 2):
        the zero-shot policy prompt (round 2 on, test time, training), or with `bootstrap` the
        round-1 prompt (instructions and two worked examples). Every prompt's ids come from here.
        """
        if bootstrap:
            text = fmt.bootstrap_prompt(question)
        else:
            text = fmt.policy_prompt(question)
        return self.encode(text, add_bos=self.add_bos)

    def policy_prompt_ids(self, question: str) -> list[int]:
        """The zero-shot policy prompt's ids: `prompt_ids(question)`."""
        return self.prompt_ids(question)

    def continuation_ids(self, text: str) -> list[int]:
        """Ids of `text` as it continues a sequence, not as the start of one.

        Llama-style SentencePiece models (Phi-3) put a dummy-prefix space before the first word
        of a text; a step or output block after the prompt must not get it. Text after an added
        token encodes as a continuation (`Backend.encode`), so `text` is encoded behind
        `<end_of_code>` and that id dropped, whatever the backend.
        """
        anchor = self._end_of_code()
        ids = self.encode(fmt.END_OF_CODE + text)
        if not ids or ids[0] != anchor:
            raise ValueError(f"the tokenizer does not encode {fmt.END_OF_CODE!r} as its single id "
                             f"{anchor}; got {ids[:4]} for {fmt.END_OF_CODE + text[:20]!r}")
        return ids[1:]

    def continuation_text(self, ids: Iterable[int]) -> str:
        """Text of `ids` as they continue a sequence: a step decoded alone would lose its leading
        space with a dummy-prefix tokenizer (see `continuation_ids`)."""
        text = self.decode([self._end_of_code(), *ids])
        if not text.startswith(fmt.END_OF_CODE):
            raise ValueError(f"the tokenizer does not decode its {fmt.END_OF_CODE!r} id as that "
                             f"text; got {text[:40]!r}")
        return text[len(fmt.END_OF_CODE):]

    def _end_of_code(self) -> int:
        """The id continuations are encoded behind (without building every step token's id)."""
        i = self.token_to_id(fmt.END_OF_CODE)
        return self.step_token_ids[fmt.END_OF_CODE] if i is None else i  # (None: says what to do)

    # --- added tokens -------------------------------------------------------------------------

    def add_special_tokens(self, tokens: Iterable[str]) -> list[int]:
        """Makes each token a single special id and returns the ids, in the order given.

        A token the vocabulary already has keeps its id; the others get consecutive ids after the
        current max id, so adding the same tokens again changes nothing.
        """
        tokens = list(tokens)
        bad = [t for t in tokens if not isinstance(t, str) or not t]
        if bad:
            raise ValueError(f"special tokens must be non-empty strings; got {bad!r}")
        self._backend.add(tokens)
        return [self._backend.token_to_id(t) for t in tokens]

    def add_step_tokens(self) -> dict[str, int]:
        """Adds the seven rStar step tokens (idempotent) and returns token -> id."""
        return dict(zip(STEP_TOKENS, self.add_special_tokens(STEP_TOKENS)))

    @property
    def step_token_ids(self) -> dict[str, int]:
        """token -> id of the seven step tokens; they must already be single tokens."""
        ids = {t: self.token_to_id(t) for t in STEP_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise KeyError(
                f"step tokens {missing} are not in this {self.backend} tokenizer (a checkpoint as "
                "downloaded from the hub has none): convert the checkpoint first with `python "
                "launch/convert_checkpoint.py --source=DIR --out=NEW_DIR` and use NEW_DIR "
                "(launch/tpu_evolve.py converts config.model.checkpoint itself on first use), or "
                "in code call rstar_jax.models.vocab.add_step_tokens(model, tokenizer), which also "
                "gives the model rows for them")
        return ids

    def _special_id(self, kind: str) -> int | None:
        """The id of the bos/eos/pad token named in the config (or by the SP model), or None."""
        name = self._names[kind]
        if name is None:
            return None
        i = self.token_to_id(name)
        if i is None:
            raise ValueError(f"{kind}_token {name!r} is not a token of this tokenizer; "
                             f"fix {kind}_token in {CONFIG_FILE}")
        return i


def _read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _name(config: dict, key: str, default: str | None) -> str | None:
    """A special token's text from tokenizer_config.json: a string, {"content": ...}, or null."""
    if key not in config:
        return default
    value = config[key]
    return value["content"] if isinstance(value, dict) else value


def _added_tokens(config: dict, added_json: dict,
                  path: pathlib.Path) -> tuple[dict[str, int], set[int]]:
    """Added tokens (content -> id) and the special ones' ids, from both HF files.

    added_tokens.json carries no `special` flag; its tokens are role/control tokens in practice
    (Phi-3), so they count as special unless added_tokens_decoder says otherwise.
    """
    decoder = config.get("added_tokens_decoder", {})
    added = {entry["content"]: int(i) for i, entry in decoder.items()}
    special = {int(i) for i, entry in decoder.items() if entry.get("special", True)}
    for token, i in added_json.items():
        if added.setdefault(token, i) != i:
            raise ValueError(f"tokenizer dir {path}: {token!r} has id {added[token]} in "
                             f"{CONFIG_FILE} but {i} in added_tokens.json; fix one of them")
        if str(i) not in decoder:
            special.add(i)
    return added, special
