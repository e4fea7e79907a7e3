"""The code-augmented step format, the sandboxed executor pool, answer extraction and grading.

Nothing here imports JAX: the host-side parts of search use it alongside the device code.
"""

from rstar_jax.steps.executor import CodeExecutor, ExecResult
from rstar_jax.steps.format import (
    STEP_TOKENS,
    STOP_TOKENS,
    StepKind,
    assemble_program,
    bootstrap_prompt,
    classify_step,
    extract_answer,
    extract_boxed,
    insert_output,
    policy_prompt,
    split_steps,
    step_code,
)
from rstar_jax.steps.grading import is_equivalent, is_equivalent_batch, normalize_answer

__all__ = [
    "STEP_TOKENS",
    "STOP_TOKENS",
    "CodeExecutor",
    "ExecResult",
    "StepKind",
    "assemble_program",
    "bootstrap_prompt",
    "classify_step",
    "extract_answer",
    "extract_boxed",
    "insert_output",
    "is_equivalent",
    "is_equivalent_batch",
    "normalize_answer",
    "policy_prompt",
    "split_steps",
    "step_code",
]
