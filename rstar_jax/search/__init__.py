"""Batched MCTS over fixed-size tree arrays (tree.py) and the host driver that runs it
(driver.py)."""

from rstar_jax import _lazy

_EXPORTS = {
    **dict.fromkeys(("Mode", "SearchConfig"), "rstar_jax.search.config"),
    **dict.fromkeys(("EnginePolicy", "SearchStats", "run_search"), "rstar_jax.search.driver"),
    "Problem": "rstar_jax.data.problem",
    "SearchTree": "rstar_jax.data.tree",
    "Tree": "rstar_jax.search.tree",
}  # fmt: skip
__all__ = list(_EXPORTS)  # imported lazily, below

__getattr__, __dir__ = _lazy.attach(__name__, _EXPORTS)
