"""rstar_jax: rStar-Math self-evolved deep thinking in JAX.

Names are imported on first use, so host-side code (`rstar_jax.steps`: executor, grading) runs
without importing JAX.
"""

import importlib

_EXPORTS = {
    "CausalLM": "rstar_jax.models",
    "ModelConfig": "rstar_jax.models",
    "from_pretrained": "rstar_jax.models",
    "save_pretrained": "rstar_jax.models",
    "CodeExecutor": "rstar_jax.steps.executor",
    "ExecResult": "rstar_jax.steps.executor",
    "extract_boxed": "rstar_jax.steps.format",
    "is_equivalent": "rstar_jax.steps.grading",
}
__all__ = list(_EXPORTS)  # imported lazily, below


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rstar_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
