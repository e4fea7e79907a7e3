"""Problems in, training records out: problem sources, the synthetic generator, on-disk
records and SFT / PPM extraction from searched trees."""

from rstar_jax import _lazy

_EXPORTS = {
    **dict.fromkeys(("Problem", "problem_id"), "rstar_jax.data.problem"),
    **dict.fromkeys(("OutcomeExample", "PPMPair", "SCHEMA_VERSION", "SFTExample"),
                    "rstar_jax.data.records"),
    **dict.fromkeys(("BENCHMARKS", "load_benchmark", "read_problems"), "rstar_jax.data.sources"),
    "load_problems": "rstar_jax.data.load",
    "SearchTree": "rstar_jax.data.tree",
    **dict.fromkeys(("ExtractConfig", "ExtractStats", "extract", "extract_ppm", "extract_sft",
                     "trajectories"),
                    "rstar_jax.data.extract"),
    **dict.fromkeys(("FAMILIES", "LEVELS", "generate"), "rstar_jax.data.synthetic"),
    **dict.fromkeys(("RecordWriter", "count_records", "import_rstar_ppm", "import_rstar_sft",
                     "pending", "read_records", "write_records", "written_problem_ids"),
                    "rstar_jax.data.records"),
    **dict.fromkeys(("ProblemSource", "build", "build_files", "problems_source"),
                    "rstar_jax.data.tfds_builder"),
    **dict.fromkeys(("decontaminate", "deduplicate", "normalize_question"), "rstar_jax.data.dedup"),
}  # fmt: skip
__all__ = list(_EXPORTS)  # imported lazily, below

__getattr__, __dir__ = _lazy.attach(__name__, _EXPORTS)
