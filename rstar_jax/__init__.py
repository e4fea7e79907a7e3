"""rstar_jax: rStar-Math self-evolved deep thinking in JAX.

Names are imported on first use, so host-side code (`rstar_jax.steps`: executor, grading) runs
without importing JAX.
"""

from rstar_jax import _lazy

_EXPORTS = {
    "CausalLM": "rstar_jax.models",
    "ModelConfig": "rstar_jax.models",
    "from_pretrained": "rstar_jax.models",
    "save_pretrained": "rstar_jax.models",
    "Engine": "rstar_jax.engine",
    "GenerationResult": "rstar_jax.engine",
    "generate": "rstar_jax.engine",
    "CodeExecutor": "rstar_jax.steps.executor",
    "ExecResult": "rstar_jax.steps.executor",
    "extract_boxed": "rstar_jax.steps.format",
    "is_equivalent": "rstar_jax.steps.grading",
}
__all__ = list(_EXPORTS)  # imported lazily, below

__getattr__, __dir__ = _lazy.attach(__name__, _EXPORTS)
