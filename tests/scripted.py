"""Deterministic stand-ins for the model parts of the search, for tests: a character-level
tokenizer, a policy whose steps come from a rule `(question, response, sample) -> step text`, rules
(random-looking but stable, or from a table), and a PPM scorer hashing the text it scores."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rstar_jax.steps import format as fmt

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL = (*fmt.STEP_TOKENS, *fmt.CHAT_TOKENS)  # ids 3, 4, ... in this order
FIRST_SPECIAL_ID = 3
CHAR_OFFSET = 16  # id of character c: CHAR_OFFSET + ord(c)

_BY_LENGTH = sorted(SPECIAL, key=len, reverse=True)  # encode matches the longest first
_SPECIAL_IDS = {t: FIRST_SPECIAL_ID + i for i, t in enumerate(SPECIAL)}

Rule = Callable[[str, str, int], str]


class CharTokenizer:
    """One id per character (16 + ord(c), ASCII only), one per step or chat token (3..11);
    0 is padding, 2 EOS, 1 an unused BOS. Pad, BOS and EOS decode to nothing."""

    add_bos = False
    bos_id = None
    eos_id = EOS_ID
    pad_id = PAD_ID
    vocab_size = CHAR_OFFSET + 128

    @property
    def step_token_ids(self) -> dict[str, int]:
        return {t: _SPECIAL_IDS[t] for t in fmt.STEP_TOKENS}

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids of `text`; a written step or chat token is its one id (longest match first)."""
        if add_bos:
            raise ValueError("CharTokenizer has no BOS token")
        out, i = [], 0
        while i < len(text):
            if text[i] == "<":
                token = next((t for t in _BY_LENGTH if text.startswith(t, i)), None)
                if token is not None:
                    out.append(_SPECIAL_IDS[token])
                    i += len(token)
                    continue
            if ord(text[i]) >= 128:
                raise ValueError(f"CharTokenizer encodes ASCII only, got {text[i]!r} at {i} in "
                                 f"{text[:60]!r}")
            out.append(CHAR_OFFSET + ord(text[i]))
            i += 1
        return out

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of `ids`; `skip_special` drops the step and chat tokens."""
        out = []
        for i in (int(x) for x in ids):
            if i in (PAD_ID, BOS_ID, EOS_ID):
                continue
            if FIRST_SPECIAL_ID <= i < FIRST_SPECIAL_ID + len(SPECIAL):
                if not skip_special:
                    out.append(SPECIAL[i - FIRST_SPECIAL_ID])
            elif CHAR_OFFSET <= i < self.vocab_size:
                out.append(chr(i - CHAR_OFFSET))
            else:
                raise ValueError(f"id {i} is not a token of CharTokenizer")
        return "".join(out)

    def prompt_ids(self, question: str, bootstrap: bool = False) -> list[int]:
        if bootstrap:
            return self.encode(fmt.bootstrap_prompt(question))
        return self.encode(fmt.policy_prompt(question))

    def policy_prompt_ids(self, question: str) -> list[int]:
        return self.prompt_ids(question)

    def continuation_ids(self, text: str) -> list[int]:
        """No dummy prefix here: text encodes the same wherever it stands."""
        return self.encode(text)

    def continuation_text(self, ids) -> str:
        return self.decode(ids)


def split_prompt(text: str) -> tuple[str, str]:
    """(question, response) of a policy or bootstrap prompt followed by a response. In a
    bootstrap prompt the question is taken to end at the first newline after `Question: `."""
    try:
        return fmt.split_policy_prompt(text)
    except ValueError:
        head = fmt.bootstrap_prompt("\0").split("\0")[0]
        if not text.startswith(head):
            raise
        question, _, response = text[len(head):].partition("\n")
        return question, response


class ScriptedPolicy:
    """A `Policy` whose sample s of a prompt is `rule(question, response, s)`, encoded, cut after
    its first stop id and to `max_new_tokens`. Seeds are recorded in `calls`; with `seeded`,
    sample s of a prompt with seed x is `rule(..., x * 64 + s)`, so samples follow the seeds as
    a model's do.

    stop_ids defaults to the ids of STOP_TOKENS and EOS.
    """

    def __init__(self, rule: Rule, tokenizer: CharTokenizer, max_new_tokens: int,
                 stop_ids: Sequence[int] | None = None, *, seeded: bool = False):
        if stop_ids is None:
            ids = tokenizer.step_token_ids
            stop_ids = [ids[t] for t in fmt.STOP_TOKENS] + [tokenizer.eos_id]
        self.rule, self.tokenizer, self.max_new_tokens = rule, tokenizer, max_new_tokens
        self.stop_ids = frozenset(stop_ids)
        self.seeded = seeded
        self.calls: list[tuple[list[list[int]], list[int]]] = []  # (prompts, seeds) per call

    def step_ids(self, question: str, response: str, s: int) -> list[int]:
        ids = self.tokenizer.encode(self.rule(question, response, s))
        stop = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        if stop is not None:
            ids = ids[:stop + 1]
        return ids[:self.max_new_tokens]

    def sample(self, prompts, num_samples, seeds):
        prompts = [[int(t) for t in p] for p in prompts]
        seeds = [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        self.calls.append((prompts, seeds))
        rows = []
        for p, seed in zip(prompts, seeds):
            question, response = split_prompt(self.tokenizer.decode(p))
            first = seed * 64 if self.seeded else 0
            rows += [self.step_ids(question, response, first + s) for s in range(num_samples)]
        tokens = np.full((len(rows), max([1, *map(len, rows)])), self.tokenizer.pad_id, np.int32)
        for i, row in enumerate(rows):
            tokens[i, :len(row)] = row
        return tokens, np.array([len(r) for r in rows], np.int32)


def stable_hash(*parts) -> int:
    """A 64-bit hash of the parts' str() that is the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8],
                          "little")


def random_rule(seed: int, answer: str, wrong: str = "-987") -> Rule:
    """A rule writing a stable pseudo-random mix of steps: valid code, failing code (exception,
    syntax error), last code (prints x when a step of the response assigned it, else a literal),
    answers (`answer`, `wrong`, no box), incomplete and malformed steps. Few variants per state,
    so samples of one expansion often repeat; after an output block mostly answers.

    Only valid code steps assign x, so `print(x)` runs whenever the response has one."""
    right_step = f"{fmt.ANSWER}The answer is \\boxed{{{answer}}}{fmt.END_OF_ANSWER}"
    wrong_step = f"{fmt.ANSWER}The answer is \\boxed{{{wrong}}}{fmt.END_OF_ANSWER}"
    unboxed_step = f"{fmt.ANSWER}I cannot tell.{fmt.END_OF_ANSWER}"

    def rule(question: str, response: str, s: int) -> str:
        h = stable_hash(seed, question, response, s)
        pick, value = h % 32, (h >> 8) % 3
        first = "" if response else fmt.CODE

        def code(body: str, end: str = fmt.END_OF_STEP) -> str:
            return f"{first}\n{body}\n{end}"

        last = "print(x)" if "\nx = " in response else f"print({6 * (value + 5)})"
        if response.endswith(f"{fmt.END_OF_OUTPUT}\n"):
            steps = [right_step] * 5 + [wrong_step] * 2 + [unboxed_step, code(f"x = {value}")]
            return steps[pick % len(steps)]
        if pick < 10:
            return code(f"# step\nx = {value + 7}")
        if pick < 12:
            return code(f"x = {len(response) % 5}")
        if pick < 14:
            return code("raise ValueError('no')")
        if pick < 15:
            return code("z = 1/0")
        if pick < 16:
            return code("q = (")
        if pick < 21:
            return code(last, fmt.END_OF_CODE)
        if pick < 24:
            return right_step
        if pick < 26:
            return wrong_step
        if pick < 27:
            return unboxed_step
        if pick < 30:
            return f"{first}\ny = {'9' * 400}"  # no terminator: incomplete
        return code(f"w = 1{fmt.OUTPUT}")  # a step token inside the code: malformed

    return rule


DEFAULT_STEP = f"{fmt.ANSWER}The answer is \\boxed{{0}}{fmt.END_OF_ANSWER}"


def table_rule(table: Mapping[str, Sequence[str]], default: str | Rule = DEFAULT_STEP) -> Rule:
    """A rule from {response so far: [step of sample 0, 1, ...]}; a response not in the table, or
    a sample past the end of its list, gets `default` (a step, or a rule to ask)."""

    def rule(question: str, response: str, s: int) -> str:
        steps = table.get(response, ())
        if s < len(steps):
            return steps[s]
        return default(question, response, s) if callable(default) else default

    return rule


class ScriptedScorer:
    """A `Scorer`: the value of a sequence is `fn(decoded text)`, by default a multiple of 1/8 in
    [-1, 1] from a stable hash of the text (so float32 sums of a few are exact). Calls are
    recorded in `calls` (the sequences, as lists)."""

    def __init__(self, fn: Callable[[str], float] | None = None,
                 tokenizer: CharTokenizer | None = None):
        self.fn = fn or (lambda text: (stable_hash(text) % 17 - 8) / 8)
        self.tokenizer = tokenizer or CharTokenizer()
        self.calls: list[list[list[int]]] = []

    def score(self, sequences) -> np.ndarray:
        sequences = [[int(t) for t in s] for s in sequences]
        self.calls.append(sequences)
        return np.array([self.fn(self.tokenizer.decode(s)) for s in sequences], np.float32)
