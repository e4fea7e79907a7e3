r"""Specification of rstar_jax.steps.format: tokens, prompts, steps, programs, answers.

The example records in rstar_jax/assets/rstar are the ground truth for the layout: the two
bootstrap worked examples, the policy SFT responses and the PPM pairs (whose `prompt + pos`
is the policy prompt followed by a response).
"""

import contextlib
import importlib.resources
import io
import json

import pytest

from rstar_jax import tokenizer
from rstar_jax.steps import format as fmt
from rstar_jax.steps.format import StepKind

ASSETS = importlib.resources.files("rstar_jax") / "assets" / "rstar"


def _load(name):
    return json.loads((ASSETS / name).read_text(encoding="utf-8"))


FEW_SHOTS = _load("few_shots.json")
SFT = _load("sft_data_examples.json")
PPM = _load("rm_data_examples.json")
QUESTION = "If $f(x) = {x}^2$, what is $f(3)$?"  # braces must survive the templates


def _few_shot_response(example):
    return example[example.index(fmt.CODE):]


# Every text the records hold, by where it comes from.
FEW_SHOT_RESPONSES = [_few_shot_response(e) for e in FEW_SHOTS]
SFT_RESPONSES = [r["response"] for r in SFT]
PPM_TEXTS = [r[k] for r in PPM for k in ("prompt", "pos", "neg")]
PPM_RESPONSES = [fmt.split_policy_prompt(r["prompt"] + r[k])[1] for r in PPM
                 for k in ("pos", "neg")]
ALL_TEXTS = [*FEW_SHOTS, *FEW_SHOT_RESPONSES, *SFT_RESPONSES, *PPM_TEXTS, *PPM_RESPONSES]
# Responses that run to an answer step; the one PPM negative that does not is tested on its own.
FINISHED = [*FEW_SHOT_RESPONSES, *SFT_RESPONSES,
            *(r for r in PPM_RESPONSES if fmt.END_OF_ANSWER in r)]
PPM_ERROR_NEG = fmt.split_policy_prompt(PPM[0]["prompt"] + PPM[0]["neg"])[1]
PPM_STEP_PAIRS = [r for r in PPM if r["prompt"].endswith(fmt.END_OF_STEP)]


def _kinds(response):
    return [fmt.classify_step(s) for s in fmt.split_steps(response)]


# --- tokens and prompts -------------------------------------------------------------------------


def test_tokens_are_the_seven_step_tokens_and_the_tokenizer_uses_them():
    assert fmt.STEP_TOKENS == ("<code>", "<end_of_step>", "<end_of_code>", "<output>",
                               "<end_of_output>", "<answer>", "<end_of_answer>")
    assert fmt.CHAT_TOKENS == ("<|user|>", "<|assistant|>")
    assert fmt.STOP_TOKENS == ("<end_of_step>", "<end_of_code>", "<end_of_answer>")
    assert fmt.BOOTSTRAP_STOP_TOKENS == (*fmt.STOP_TOKENS, "<end_of_output>")
    assert tokenizer.STEP_TOKENS is fmt.STEP_TOKENS
    assert tokenizer.CHAT_TOKENS is fmt.CHAT_TOKENS
    assert tokenizer.POLICY_PROMPT is fmt.POLICY_PROMPT


def test_policy_prompt_is_the_exact_template_and_matches_the_shipped_one():
    expected = ("<|user|>:\n" + QUESTION
                + "\n<|assistant|>: Let's think step by step and solve the problem with code.")
    assert fmt.policy_prompt(QUESTION) == expected
    shipped = _load("policy_prompt.json")["pot_suffix"]
    assert fmt.policy_prompt(QUESTION) == shipped.replace("{input}", QUESTION)


def test_split_policy_prompt_inverts_policy_prompt():
    response = "<code>\nx = 1\n<end_of_step>"
    assert fmt.split_policy_prompt(fmt.policy_prompt(QUESTION) + response) == (QUESTION, response)
    assert fmt.split_policy_prompt(fmt.policy_prompt("q")) == ("q", "")
    with pytest.raises(ValueError, match="policy prompt"):
        fmt.split_policy_prompt("Question: q\n<code>\nx = 1\n<end_of_step>")


@pytest.mark.parametrize("record", PPM, ids=range(len(PPM)))
def test_ppm_prompts_are_policy_prompts_followed_by_the_pair(record):
    for side in ("pos", "neg"):
        question, response = fmt.split_policy_prompt(record["prompt"] + record[side])
        assert fmt.policy_prompt(question) + response == record["prompt"] + record[side]
        assert response.startswith(fmt.CODE)


def test_bootstrap_prompt_has_instructions_both_examples_and_ends_with_the_question():
    parts = _load("bootstrap_prompt.json")
    prompt = fmt.bootstrap_prompt(QUESTION)
    assert fmt.few_shot_examples() == tuple(FEW_SHOTS)
    assert prompt.startswith(parts["pot_format_instructions"] + "\n\n" + FEW_SHOTS[0] + "\n\n")
    assert prompt.index(FEW_SHOTS[0]) < prompt.index(FEW_SHOTS[1])
    assert prompt.endswith(FEW_SHOTS[1] + "\n\nNow! It's your turn.\nQuestion: " + QUESTION + "\n")
    assert prompt.count(QUESTION) == 1


# --- splitting ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ALL_TEXTS)
def test_split_then_join_gives_the_text_back(text):
    steps = fmt.split_steps(text)
    assert "".join(steps) == text
    assert all(steps)


def test_worked_example_splits_into_the_steps_a_tree_holds():
    steps = fmt.split_steps(SFT_RESPONSES[0])
    assert steps[0].startswith("<code>\n# Step 1") and steps[0].endswith("<end_of_step>")
    assert steps[1].startswith("\n\n# Step 2")  # whitespace after a terminator opens the next step
    assert steps[2].endswith("print(4)\n<end_of_code>\n<output>4<end_of_output>\n")
    assert steps[3] == r"<answer>The value of y is \boxed{4}.<end_of_answer>"


def test_output_block_and_the_whitespace_around_it_stay_with_the_last_code_step():
    answer = "<answer>A<end_of_answer>"
    for between in ("", "\n", " ", "\n\n"):
        steps = fmt.split_steps(f"print(1)\n<end_of_code>\n<output>1<end_of_output>{between}{answer}")
        assert steps == [f"print(1)\n<end_of_code>\n<output>1<end_of_output>{between}", answer]
    # Without an output block, whitespace after <end_of_code> belongs to the next step.
    steps = fmt.split_steps(f"print(1)\n<end_of_code>\n{answer}")
    assert steps == ["print(1)\n<end_of_code>", "\n" + answer]


@pytest.mark.parametrize("record", PPM_STEP_PAIRS, ids=range(len(PPM_STEP_PAIRS)))
def test_ppm_step_pairs_are_single_steps_after_complete_prefix_steps(record):
    _, prefix = fmt.split_policy_prompt(record["prompt"])
    assert set(_kinds(prefix)) == {StepKind.CODE}
    for side in ("pos", "neg"):
        assert fmt.split_steps(record[side]) == [record[side]]
        assert fmt.classify_step(record[side]) is StepKind.CODE


def test_text_after_the_last_terminator_is_a_last_incomplete_step():
    steps = fmt.split_steps("<code>\nx = 1\n<end_of_step>\n\ny = x +")
    assert steps == ["<code>\nx = 1\n<end_of_step>", "\n\ny = x +"]
    assert fmt.classify_step(steps[-1]) is StepKind.INCOMPLETE
    assert fmt.split_steps("") == []


def test_a_terminator_printed_inside_an_output_block_does_not_split_it():
    step = "print(s)\n<end_of_code>\n<output>a<end_of_step>b<end_of_output>\n"
    assert fmt.split_steps(step + "<answer>b<end_of_answer>") == [step, "<answer>b<end_of_answer>"]


# --- classifying --------------------------------------------------------------------------------


@pytest.mark.parametrize("response", FINISHED)
def test_finished_responses_are_code_steps_then_last_code_then_answer(response):
    kinds = _kinds(response)
    assert kinds[-2:] == [StepKind.LAST_CODE, StepKind.ANSWER]
    assert set(kinds[:-2]) <= {StepKind.CODE}


def test_step_counts_of_known_records():
    assert [len(fmt.split_steps(r)) for r in FEW_SHOT_RESPONSES] == [5, 5]
    assert [len(fmt.split_steps(r)) for r in SFT_RESPONSES] == [4, 5, 3, 5, 8, 6, 5, 4]


def test_error_trajectory_ends_with_an_empty_last_code_step_holding_the_error():
    kinds = _kinds(PPM_ERROR_NEG)
    assert kinds == [StepKind.CODE] * 3 + [StepKind.LAST_CODE]
    last = fmt.split_steps(PPM_ERROR_NEG)[-1]
    assert fmt.step_code(last) == ""
    assert fmt.step_output(last).startswith("IndentationError")


@pytest.mark.parametrize(("step", "kind"), [
    ("<code>\nx = 1\n<end_of_step>", StepKind.CODE),
    ("\n\n# Step 2\ny = 2\n<end_of_step>", StepKind.CODE),
    ("\n\nprint(x)\n<end_of_code>", StepKind.LAST_CODE),
    ("print(x)\n<end_of_code>\n<output>1<end_of_output>\n", StepKind.LAST_CODE),
    ("<answer>It is \\boxed{1}.<end_of_answer>", StepKind.ANSWER),
    ("\n<answer>It is \\boxed{1}.\n<end_of_answer>", StepKind.ANSWER),
    ("", StepKind.INCOMPLETE),
    ("\n\n# Step 3: a long step that hit max tokens\nz = ", StepKind.INCOMPLETE),
    ("<answer>It is \\boxed{1", StepKind.INCOMPLETE),
    ("print(x)\n<output>1<end_of_output>", StepKind.INCOMPLETE),  # bootstrap wrote its own output
    ("x = 1\n<end_of_step>\ny = 2", StepKind.MALFORMED),  # text after the terminator
    ("x = 1\n<end_of_step><end_of_step>", StepKind.MALFORMED),
    ("print(x)\n<end_of_code>\n<output>1<end_of_output>\nmore", StepKind.MALFORMED),
    ("It is \\boxed{1}.<end_of_answer>", StepKind.MALFORMED),  # no <answer>
    ("x = 1\n<answer>It is 1<end_of_answer>", StepKind.MALFORMED),
    ("<answer>It is 1<answer>2<end_of_answer>", StepKind.MALFORMED),
    ("x = 1\n<code>\ny = 2\n<end_of_step>", StepKind.MALFORMED),  # <code> opens only the response
    ("<answer>x<end_of_step>", StepKind.MALFORMED),
])
def test_classify_step(step, kind):
    assert fmt.classify_step(step) is kind
    assert kind.complete == (kind in (StepKind.CODE, StepKind.LAST_CODE, StepKind.ANSWER))


# --- code and programs --------------------------------------------------------------------------


def test_step_code_drops_code_tag_terminator_and_output_block():
    steps = fmt.split_steps(FEW_SHOT_RESPONSES[0])
    assert fmt.step_code(steps[0]) == (
        "\n# Step 1: Calculate the total weight lifted with two 20-pound weights\n"
        "total_weight_20 = 2 * 20 * 12\n")
    assert fmt.step_code(steps[3]) == "\n\n# Now print the final answer\nprint(reps_needed)\n"
    assert fmt.step_code(steps[4]) == ""
    assert fmt.step_code("\n\ny = x +") == "\n\ny = x +"
    assert fmt.step_code("<answer>It is") == ""


@pytest.mark.parametrize("response", [*FINISHED, PPM_ERROR_NEG])
def test_no_step_code_keeps_a_step_token(response):
    codes = [fmt.step_code(s) for s in fmt.split_steps(response)]
    assert not any(t in c for c in codes for t in fmt.STEP_TOKENS)


@pytest.mark.parametrize("response", FINISHED)
def test_assembled_programs_compile_at_every_node(response):
    steps = fmt.split_steps(response)
    for depth in range(1, len(steps) + 1):
        compile(fmt.assemble_program(steps[:depth]), "<program>", "exec")
    assert fmt.assemble_program(response) == fmt.assemble_program(steps)


def test_error_trajectory_program_fails_where_its_recorded_output_says():
    # Recorded: "IndentationError: unexpected indent (<unknown>, line 20)".
    with pytest.raises(IndentationError) as err:
        compile(fmt.assemble_program(PPM_ERROR_NEG), "<unknown>", "exec")
    assert err.value.lineno == 20
    assert f"line {err.value.lineno})" in fmt.step_output(fmt.split_steps(PPM_ERROR_NEG)[-1])


def test_steps_without_final_newline_still_start_on_new_lines():
    program = fmt.assemble_program(["<code>x = 1<end_of_step>", "y = x + 1<end_of_step>",
                                    "print(y)<end_of_code>"])
    assert program == "x = 1\ny = x + 1\nprint(y)\n"


@pytest.mark.parametrize("response", FEW_SHOT_RESPONSES, ids=["weights", "sympy"])
def test_few_shot_programs_print_their_recorded_output(response):
    steps = fmt.split_steps(response)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(fmt.assemble_program(steps), "<program>", "exec"), {})  # noqa: S102
    assert out.getvalue().split() == fmt.step_output(steps[-2]).split()


# --- output blocks ------------------------------------------------------------------------------


def test_insert_output_layout():
    step = "\n\nprint(x)\n<end_of_code>"
    assert fmt.insert_output(step, "16.0\n") == step + "\n<output>16.0<end_of_output>\n"
    with pytest.raises(ValueError, match="<end_of_code>"):
        fmt.insert_output("x = 1\n<end_of_step>", "1\n")


@pytest.mark.parametrize("response", SFT_RESPONSES)
def test_insert_output_rebuilds_the_last_code_step_of_sft_records(response):
    last = fmt.split_steps(response)[-2]
    generated = last[:last.index(fmt.END_OF_CODE) + len(fmt.END_OF_CODE)]
    assert fmt.insert_output(generated, fmt.step_output(last) + "\n") == last


def test_output_is_truncated_to_1024_characters():
    assert fmt.MAX_OUTPUT_CHARS == 1024
    assert fmt.truncate_output("abc", 2) == "ab"
    assert fmt.truncate_output("abc") == "abc"
    step = fmt.insert_output("print(s)\n<end_of_code>", "x" * 3000 + "\n")
    assert fmt.step_output(step) == "x" * 1024
    assert fmt.classify_step(step) is StepKind.LAST_CODE


def test_a_tree_path_built_step_by_step_round_trips():
    path = ["<code>\nx = 1\n<end_of_step>", fmt.insert_output("\n\nprint(x)\n<end_of_code>", "1\n"),
            "<answer>So \\boxed{1}.<end_of_answer>"]
    assert fmt.split_steps("".join(path)) == path
    assert _kinds("".join(path)) == [StepKind.CODE, StepKind.LAST_CODE, StepKind.ANSWER]


# --- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{\frac{\sqrt{2}}{3}}", r"\frac{\sqrt{2}}{3}"),
    (r"first \boxed{1}, then \boxed{2}", "2"),
    (r"\boxed{\frac{1}{2}", None),
    (r"\boxed{1} and \boxed{2", None),  # the last box decides
    (r"\boxed{\text{(B)}}", "(B)"),
    (r"\boxed{ \text{No} }", "No"),
    (r"\boxed{\text{A} or \text{B}}", r"\text{A} or \text{B}"),
    (r"\boxed{x}\text{ cm}", "x"),
    ("no box here", None),
    ("", None),
    (r"the answer is \boxed", None),
    (r"the answer is \boxed{", None),
    (r"\boxed {5}", "5"),
    (r"\fbox{7}", "7"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),
    (r"\boxed{\{1, \frac{1}{2}\}}", r"\{1, \frac{1}{2}\}"),
    (r"\boxed{a\\}", "a\\\\"),
    (r"\boxed{\left\{ x \mid x > 0 \right.}", r"\left\{ x \mid x > 0 \right."),  # one-sided brace
    (r"\boxed{\}}", r"\}"),
    (r"\boxed{}", ""),
    (r"\boxedx{5}", None),
])
def test_extract_boxed(text, expected):
    assert fmt.extract_boxed(text) == expected


def test_extract_answer_of_records():
    assert [fmt.extract_answer(r) for r in SFT_RESPONSES] == [
        "4", r"[0, \arcsin(\frac{\sqrt{2}}{3})]", "30", "1210", "84000", "-160", "No", "120"]
    assert [fmt.extract_answer(r) for r in FEW_SHOT_RESPONSES] == ["16", r"\frac{20}{3}"]
    assert fmt.extract_answer(fmt.split_steps(FEW_SHOT_RESPONSES[0])[-1]) == "16"
    assert fmt.extract_answer(PPM[2]["neg"]) == "76"  # two boxes: the last one
    assert fmt.extract_answer(PPM_ERROR_NEG) is None


def test_extract_answer_reads_only_the_answer_step_when_there_is_one():
    response = ("<code>\n# maybe \\boxed{7}\nprint(7)\n<end_of_code>\n<output>7<end_of_output>\n"
                "<answer>seven<end_of_answer>")
    assert fmt.extract_answer(response) is None
    assert fmt.extract_answer(response.replace("seven", "\\boxed{8}")) == "8"
    assert fmt.extract_answer("It is \\boxed{3}.") == "3"
