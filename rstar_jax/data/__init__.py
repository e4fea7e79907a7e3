"""Problems in, training records out: problem sources, the synthetic generator, on-disk
records and SFT / PPM extraction from searched trees."""

from rstar_jax import _lazy

_EXPORTS = {
    **dict.fromkeys(("Problem", "problem_id"), "rstar_jax.data.problem"),
    **dict.fromkeys(("PPMPair", "SCHEMA_VERSION", "SFTExample"), "rstar_jax.data.records"),
}  # fmt: skip
__all__ = list(_EXPORTS)  # imported lazily, below

__getattr__, __dir__ = _lazy.attach(__name__, _EXPORTS)
