r"""The code-augmented step format of rStar-Math (RSTAR.md section 2): tokens, prompts, steps.

Standard library only: worker processes that execute or grade steps import this module too.

A *response* is what the policy writes after the prompt. It is a sequence of *steps*, each the
text one tree node holds; joining the steps gives the response back exactly:

    <code>\n# Step 1: ...\ntotal = 2 * 20 * 12\n<end_of_step>              CODE
    \n\n# Step 2: ...\nreps = total / 30\n<end_of_step>                     CODE
    \n\n# Now print the final answer\nprint(reps)\n<end_of_code>            LAST_CODE
        \n<output>16.0<end_of_output>\n                                     (inserted by the executor)
    <answer>Terrell must lift them \boxed{16} times.<end_of_answer>        ANSWER

Where whitespace goes:
- A step ends right after its terminator (generation stops there); the whitespace the model
  writes next opens the following step. The PPM records store steps this way
  ("\n\n# Step 2 ...<end_of_step>").
- Exception: the `<output>...<end_of_output>` block after `<end_of_code>` is not generated, the
  executor inserts it (`insert_output`). It belongs to the last code step, together with the
  whitespace before and after it, so that step is exactly what its tree node holds and the answer
  step starts with `<answer>`, as the policy writes it.
- Only the first step opens with `<code>`; there is no `<code>` before later steps.

The program a node runs is the code of its ancestors' steps and its own, with `<code>`, the
terminators and output blocks removed (`assemble_program`); the example records' error line
numbers agree with this layout.
"""

from __future__ import annotations

import enum
import functools
import importlib.resources
import json
import re
from collections.abc import Iterable

# --- tokens -------------------------------------------------------------------------------------

CODE = "<code>"
END_OF_STEP = "<end_of_step>"
END_OF_CODE = "<end_of_code>"
OUTPUT = "<output>"
END_OF_OUTPUT = "<end_of_output>"
ANSWER = "<answer>"
END_OF_ANSWER = "<end_of_answer>"
# Added to the policy's vocabulary in this order; their ids must stay stable.
STEP_TOKENS = (CODE, END_OF_STEP, END_OF_CODE, OUTPUT, END_OF_OUTPUT, ANSWER, END_OF_ANSWER)
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
CHAT_TOKENS = (USER, ASSISTANT)

# Generation of one step stops at (and keeps) one of these.
STOP_TOKENS = (END_OF_STEP, END_OF_CODE, END_OF_ANSWER)
BOOTSTRAP_STOP_TOKENS = (*STOP_TOKENS, END_OF_OUTPUT)  # round 1 also stops at a written output

MAX_OUTPUT_CHARS = 1024  # stdout kept in an output block

# --- prompts ------------------------------------------------------------------------------------

# The zero-shot policy prompt (round 2 on, and test time); the response follows it directly.
POLICY_PROMPT = (f"{USER}:\n{{question}}\n"
                 f"{ASSISTANT}: Let's think step by step and solve the problem with code.")
_PROMPT_HEAD, _PROMPT_TAIL = POLICY_PROMPT.split("{question}")


def policy_prompt(question: str) -> str:
    """The policy prompt of `question`; the response follows it directly (see POLICY_PROMPT)."""
    return POLICY_PROMPT.format(question=question)


def is_policy_prompt(text: str) -> bool:
    """Whether `text` starts with the policy prompt (a question wrapped already)."""
    return text.startswith(_PROMPT_HEAD)


def split_policy_prompt(text: str) -> tuple[str, str]:
    """(question, response) of a text that starts with the policy prompt, as PPM records do.

    The prompt ends at the first assistant line. Raises ValueError if `text` does not start so.
    """
    end = text.find(_PROMPT_TAIL)
    if not text.startswith(_PROMPT_HEAD) or end < len(_PROMPT_HEAD):
        raise ValueError(f"text does not start with the policy prompt {POLICY_PROMPT!r}: "
                         f"{text[:80]!r}")
    return text[len(_PROMPT_HEAD):end], text[end + len(_PROMPT_TAIL):]


@functools.cache
def _asset(name: str):
    return json.loads((importlib.resources.files("rstar_jax") / "assets" / "rstar" / name)
                      .read_text(encoding="utf-8"))


def few_shot_examples() -> tuple[str, ...]:
    """The two worked examples of the bootstrap prompt:
    `Question: ...\\n<code>...<end_of_answer>`."""
    return tuple(_asset("few_shots.json"))


def bootstrap_prompt(question: str) -> str:
    """The round-1 prompt: instructions, both worked examples, then the question.

    Layout, with the pieces of assets/rstar/bootstrap_prompt.json and few_shots.json:

        {pot_format_instructions}\\n\\n{example 1}\\n\\n{example 2}\\n\\n
        Now! It's your turn.\\nQuestion: {question}\\n

    The trailing newline matches the examples, where `<code>` opens the line after the question,
    so the response starts with `<code>` as after the policy prompt.
    """
    parts = _asset("bootstrap_prompt.json")
    turn = parts["pot_suffix"].replace("{input}", question) + "\n"
    return "\n\n".join([parts["pot_format_instructions"], *few_shot_examples(), turn])


# --- steps --------------------------------------------------------------------------------------


class StepKind(enum.Enum):
    CODE = "code"  # code ending with <end_of_step>; the first step opens with <code>
    LAST_CODE = "last_code"  # code ending with <end_of_code>, maybe followed by its output block
    ANSWER = "answer"  # <answer>...<end_of_answer>
    INCOMPLETE = "incomplete"  # no terminator: generation hit max tokens or EOS
    MALFORMED = "malformed"  # text after the terminator, or a step token out of place

    @property
    def complete(self) -> bool:
        return self in (StepKind.CODE, StepKind.LAST_CODE, StepKind.ANSWER)


# A step's end: its terminator, and after <end_of_code> the output block with whitespace around it.
_OUTPUT_BLOCK = rf"\s*{re.escape(OUTPUT)}(?P<output>.*?){re.escape(END_OF_OUTPUT)}\s*"
_STEP_END = re.compile(rf"{re.escape(END_OF_STEP)}|{re.escape(END_OF_ANSWER)}"
                       rf"|{re.escape(END_OF_CODE)}(?:{_OUTPUT_BLOCK})?", re.DOTALL)
_CODE_START = re.compile(rf"\s*{re.escape(CODE)}")
_ANSWER_START = re.compile(rf"\s*{re.escape(ANSWER)}")


def split_steps(response: str) -> list[str]:
    """The steps of `response`, each ending with its terminator; `"".join` gives `response` back.

    A `<end_of_code>` step takes the output block after it (see the module docstring). Text after
    the last terminator, if any, is a last, incomplete step.
    """
    steps, start = [], 0
    for m in _STEP_END.finditer(response):
        steps.append(response[start:m.end()])
        start = m.end()
    if start < len(response):
        steps.append(response[start:])
    return steps


def _parts(step: str) -> tuple[str, str | None, re.Match | None]:
    """(text before the first terminator, that terminator, its match)."""
    m = _STEP_END.search(step)
    if m is None:
        return step, None, None
    return step[:m.start()], next(t for t in STOP_TOKENS if m.group().startswith(t)), m


def classify_step(step: str) -> StepKind:
    """What kind of step `step` is. A complete step is, exactly, one of

        [whitespace][<code>]code<end_of_step>
        [whitespace][<code>]code<end_of_code>[whitespace <output>stdout<end_of_output> whitespace]
        [whitespace]<answer>text<end_of_answer>

    with no other step token inside.
    """
    body, end, m = _parts(step)
    if end is None:
        return StepKind.INCOMPLETE
    if m.end() != len(step):
        return StepKind.MALFORMED
    start = _ANSWER_START if end == END_OF_ANSWER else _CODE_START
    opened = start.match(body)
    if end == END_OF_ANSWER and opened is None:
        return StepKind.MALFORMED
    inner = body[opened.end():] if opened else body
    if any(t in inner for t in STEP_TOKENS):
        return StepKind.MALFORMED
    return {END_OF_STEP: StepKind.CODE, END_OF_CODE: StepKind.LAST_CODE}.get(end, StepKind.ANSWER)


def step_code(step: str) -> str:
    """The Python code of one step: the text before its first terminator, without a leading
    `<code>`. Answer steps hold no code (""); an incomplete step's code is all its text."""
    body, end, _ = _parts(step)
    if end == END_OF_ANSWER or _ANSWER_START.match(body):
        return ""
    opened = _CODE_START.match(body)
    return body[opened.end():] if opened else body


def step_output(step: str) -> str | None:
    """The stdout in a last code step's output block, or None if it has none."""
    _, end, m = _parts(step)
    return m.group("output") if end == END_OF_CODE else None


def assemble_program(steps: Iterable[str] | str) -> str:
    """The program of a node: the code of its ancestors' steps and its own, in order.

    The codes are concatenated, as the terminators are simply removed; a code that does not end
    with a newline gets one, so the next step starts on a new line. A string is split first.
    """
    if isinstance(steps, str):
        steps = split_steps(steps)
    codes = [step_code(s) for s in steps]
    return "".join(c if not c or c.endswith("\n") else c + "\n" for c in codes)


def truncate_output(stdout: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """The first `limit` characters of `stdout`."""
    return stdout[:limit]


# Spellings that tokenizers turn into single special ids: the step and chat tokens, and the
# `<|...|>` family (Phi-3's and Qwen's end-of-text and role tokens).
_TOKEN_SPELLING = re.compile("|".join([*map(re.escape, (*STEP_TOKENS, *CHAT_TOKENS)),
                                       r"<\|[^<>|\s]*\|>"]))


def escape_tokens(text: str) -> str:
    """`text` with every spelling of a special token made plain: `<answer>` -> `&lt;answer>`.

    A program's stdout is data; if it printed `<answer>` or `<end_of_output>`, that would encode
    as the real token and end the output block or start an answer. Only exact spellings change.
    """
    return _TOKEN_SPELLING.sub(lambda m: "&lt;" + m.group()[1:], text)


def output_block(stdout: str) -> str:
    """The output block of a last code step: `"\\n<output>" + stdout + "<end_of_output>\\n"`, with
    stdout's trailing whitespace removed (`print` ends with a newline), special-token spellings
    escaped (`escape_tokens`) and the rest truncated to MAX_OUTPUT_CHARS, as the records have it."""
    return f"\n{OUTPUT}{truncate_output(escape_tokens(stdout.rstrip()))}{END_OF_OUTPUT}\n"


def insert_output(text: str, stdout: str) -> str:
    """`text` (a step or a response ending with `<end_of_code>`) followed by
    `output_block(stdout)`."""
    if not text.endswith(END_OF_CODE):
        raise ValueError(f"an output block follows {END_OF_CODE}, but the text ends with "
                         f"{text[-40:]!r}")
    return text + output_block(stdout)


# --- answers ------------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT = re.compile(r"\\text\s*\{")


def closing_brace(text: str, start: int) -> int | None:
    """Index of the `}` closing the group whose `{` is at start - 1, or None if it never closes;
    escaped braces (`\\{`, `\\}`) do not count."""
    depth, i = 1, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` (or `\fbox{...}`) in `text`, or None.

    Braces must balance (`\{` and `\}` do not count); if the last box is not closed, the answer
    is None even when an earlier box is complete. A `\text{...}` around the whole content is
    stripped, as is surrounding whitespace: `\boxed{\text{(B)}}` -> `(B)`.
    """
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    close = closing_brace(text, boxes[-1].end())
    if close is None:
        return None
    content = text[boxes[-1].end():close].strip()
    m = _TEXT.match(content)
    if m and closing_brace(content, m.end()) == len(content) - 1:
        content = content[m.end():-1].strip()
    return content


def extract_answer(text: str) -> str | None:
    """The final answer of an answer step or a whole response: the last box after the last
    `<answer>` (up to `<end_of_answer>`), or in all of `text` if it has no `<answer>`."""
    at = text.rfind(ANSWER)
    if at >= 0:
        text = text[at + len(ANSWER):].split(END_OF_ANSWER, 1)[0]
    return extract_boxed(text)
