"""Problems from the one string a config names them by: a shipped benchmark, the synthetic
generator, a problem file or a built TFDS dataset. Above both `sources` (benchmarks, files) and
`tfds_builder` (which builds datasets from them)."""

from __future__ import annotations

import pathlib

from rstar_jax.data import sources, tfds_builder
from rstar_jax.data.problem import Problem


def load_problems(spec: str) -> list[Problem]:
    """Problems from one string, as configs name them:

    - a benchmark name: "math500", "gsm8k", ... (`sources.BENCHMARKS`);
    - "synthetic" with options: "synthetic:n=1000,seed=3,levels=12" (levels as digits);
    - a problem file, with `read_problems` options after "?": "data/numina.parquet?preset=numina";
    - a built TFDS dataset directory (`tfds_builder.build`), optionally "dir?split=train".
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a problem source is a non-empty string, got {spec!r}")
    if spec in sources.BENCHMARK_FILES:
        return sources.load_benchmark(spec)
    synthetic_spec = spec == "synthetic" or spec.startswith("synthetic:")
    head, _, options = spec.partition(":" if synthetic_spec else "?")
    items = [item for item in options.split(",") if item]
    if any("=" not in item for item in items):
        raise ValueError(f"{spec!r}: options are name=value pairs separated by commas")
    pairs = dict(item.split("=", 1) for item in items)
    if head == "synthetic":
        # (sympy: slow to import, and only this source needs it)
        from rstar_jax.data import synthetic

        unknown = set(pairs) - {"n", "seed", "levels"}
        if unknown:
            raise ValueError(f"{spec!r}: unknown synthetic options {sorted(unknown)}; use n, seed, "
                             "levels")
        levels = tuple(int(c) for c in pairs.get("levels", "")) or synthetic.LEVELS
        return synthetic.generate(int(pairs.get("n", 1000)), int(pairs.get("seed", 0)), levels)
    path = pathlib.Path(head).expanduser()
    if path.is_dir():
        return list(tfds_builder.problems_source(path, pairs.get("split")))
    if path.is_file():
        unknown = set(pairs) - {"preset", "source"}
        if unknown:
            raise ValueError(f"{spec!r}: unknown file options {sorted(unknown)}; use preset, "
                             "source")
        return sources.read_problems(path, **pairs)
    raise ValueError(f"{spec!r} is neither a benchmark ({', '.join(sources.BENCHMARKS)}), "
                     "'synthetic[:options]', an existing problem file nor a built TFDS dataset "
                     "directory")
