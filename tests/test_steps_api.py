"""The public entry points of the step layer, exactly as DESIGN.md shows them."""

import subprocess
import sys

from rstar_jax import CodeExecutor, extract_boxed, is_equivalent


def test_design_examples():
    with CodeExecutor(num_workers=2, timeout_s=5.0, memory_mb=1024) as ex:
        (result,) = ex.run(["x = 3\nprint(x * 7)"])
    assert (result.ok, result.stdout, result.error) == (True, "21\n", "")
    assert extract_boxed(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert is_equivalent(r"\frac{1}{2}", "0.5") is True
    assert is_equivalent(r"\frac{1}{2}", "0.25") is False


def test_the_step_layer_does_not_import_jax():
    # Host-side processes (executor parents, graders) should not pay for or start JAX.
    code = ("import sys, rstar_jax.steps\nfrom rstar_jax import CodeExecutor, is_equivalent\n"
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"


def test_the_format_alone_does_not_import_the_grader():
    # The tokenizer uses the format; it should not pay for sympy and math-verify.
    code = "import sys, rstar_jax.tokenizer\nprint('sympy' in sys.modules, 'math_verify' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False False\n"
