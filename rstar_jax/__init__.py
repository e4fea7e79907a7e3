"""rstar_jax: rStar-Math self-evolved deep thinking in JAX.

Names are imported on first use, so host-side code (`rstar_jax.steps`: executor, grading) runs
without importing JAX.

The packages are layered, lowest first; a module imports from its own package or a lower
layer only, never from a sibling in its layer, and no import (module level or inside a
function) closes a cycle. rstar_jax/_layers.py states the layers and tests/test_layers.py
holds the code to them:

    _checks, _files, processes, workdir (shared helpers)
    steps (format, executor, grading)
    data (problems, records, searched trees), tokenizer
    models
    engine
    search | train
    evaluate
    report, dry_run
    evolve
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
