"""The code-augmented step format, the sandboxed executor pool, answer extraction and grading.

Nothing here imports JAX, and names are imported on first use: the format alone (which the
tokenizer uses) does not pull in sympy and math-verify.
"""

from rstar_jax import _lazy

_EXPORTS = {
    **dict.fromkeys(("CodeExecutor", "ExecResult"), "rstar_jax.steps.executor"),
    **dict.fromkeys(("is_equivalent", "is_equivalent_batch", "normalize_answer"),
                    "rstar_jax.steps.grading"),
    **dict.fromkeys(("STEP_TOKENS", "STOP_TOKENS", "StepKind", "assemble_program",
                     "bootstrap_prompt", "classify_step", "extract_answer", "extract_boxed",
                     "insert_output", "policy_prompt", "split_steps", "step_code"),
                    "rstar_jax.steps.format"),
}  # fmt: skip
__all__ = list(_EXPORTS)  # imported lazily, below

__getattr__, __dir__ = _lazy.attach(__name__, _EXPORTS)
