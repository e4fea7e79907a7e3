"""Problems as a TFDS dataset: array_record shards that `tfds.data_source` and grain read with
random access, on local disk or GCS, without TensorFlow.

Configs of the `rstar_problems` builder: one per shipped benchmark (`sources.BENCHMARKS`, split
"test"), "synthetic" (split "train", `n` problems of `synthetic.generate` from `seed`), and any
number of file configs built from the user's problem files (`build_files`, split "train").
Everything is built from local files; nothing is downloaded.

    path = build("math500", data_dir)                   # -> data_dir/rstar_problems/math500/1.0.0
    problems = problems_source(path)                    # len(), problems[i] -> Problem
    loader = grain.MapDataset.source(problems).shuffle(seed=0).batch(32)

A problem's fields are stored as text features (answer "" with has_answer False when it has
none, metadata as JSON), in the order they were read (shuffling is off, so ids and indices
agree with the source).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

from rstar_jax.data import sources
from rstar_jax.data.problem import Problem

NAME = "rstar_problems"
VERSION = "1.0.0"


@functools.cache
def _tfds():
    import tensorflow_datasets as tfds  # slow to import: only when a dataset is built or read

    return tfds


@functools.cache
def _builder_class():
    tfds = _tfds()
    from rstar_jax.data import synthetic  # (sympy: slow to import)

    @dataclasses.dataclass
    class ProblemsConfig(tfds.core.BuilderConfig):
        kind: str = "benchmark"  # benchmark | synthetic | files
        n: int = 10_000
        seed: int = 0
        levels: tuple[int, ...] = synthetic.LEVELS
        paths: tuple[str, ...] = ()
        preset: str = "rstar"
        fields: tuple[tuple[str, str], ...] = ()

    class RstarProblems(tfds.core.GeneratorBasedBuilder):
        """Math problems for rstar_jax: shipped benchmarks, synthetic problems, user files."""

        VERSION = tfds.core.Version(VERSION)
        BUILDER_CONFIGS = [  # noqa: RUF012 (the TFDS convention)
            *(ProblemsConfig(name=b, description=f"the {b} test set shipped with rstar_jax")
              for b in sources.BENCHMARKS),
            ProblemsConfig(name="synthetic", kind="synthetic",
                           description="rstar_jax.data.synthetic problems"),
        ]

        def _info(self):
            text = tfds.features.Text()
            features = tfds.features.FeaturesDict({
                "id": text, "question": text, "answer": text,
                "has_answer": tfds.features.Scalar(dtype=np.bool_),
                "source": text, "metadata": text})
            # DatasetInfo directly: dataset_info_from_configs looks for metadata files beside the
            # module.
            return tfds.core.DatasetInfo(builder=self, description=self.builder_config.description,
                                         features=features, disable_shuffling=True)

        def _split_generators(self, dl_manager):
            c = self.builder_config
            if c.kind == "benchmark":
                return {"test": self._generate_examples(sources.load_benchmark(c.name))}
            if c.kind == "synthetic":
                return {"train": self._generate_examples(synthetic.generate(c.n, c.seed, c.levels))}
            problems = [p for path in c.paths
                        for p in sources.read_problems(path, preset=c.preset,
                                                       fields=dict(c.fields) or None)]
            return {"train": self._generate_examples(problems)}

        def _generate_examples(self, problems: Iterable[Problem]):
            seen = set()
            for p in problems:
                if p.id in seen:
                    raise ValueError(f"problem id {p.id!r} appears twice; TFDS keys must be "
                                     "unique: deduplicate the problems or give them distinct ids")
                seen.add(p.id)
                yield p.id, {"id": p.id, "question": p.question, "answer": p.answer or "",
                             "has_answer": p.answer is not None, "source": p.source,
                             "metadata": json.dumps(dict(p.metadata), sort_keys=True)}

    return RstarProblems, ProblemsConfig


def configs() -> list[str]:
    """Names of the built-in configs (file configs are made by `build_files`)."""
    builder, _ = _builder_class()
    return [c.name for c in builder.BUILDER_CONFIGS]


def _prepare(config, data_dir) -> pathlib.Path:
    builder_cls, _ = _builder_class()
    builder = builder_cls(config=config, data_dir=str(pathlib.Path(data_dir).expanduser()),
                          file_format="array_record")
    builder.download_and_prepare()  # a no-op when this version is already built there
    return pathlib.Path(builder.data_dir)


def build(config: str, data_dir: str | pathlib.Path, *, n: int | None = None,
          seed: int | None = None, levels: Sequence[int] | None = None) -> pathlib.Path:
    """Builds a built-in config (a benchmark name or "synthetic", with n / seed / levels) into
    `data_dir` and returns the dataset's directory."""
    builder_cls, config_cls = _builder_class()
    known = {c.name: c for c in builder_cls.BUILDER_CONFIGS}
    if config not in known:
        raise ValueError(f"unknown config {config!r}; choose one of {', '.join(known)}, or use "
                         "build_files")
    chosen = known[config]
    overrides = {k: v for k, v in (("n", n), ("seed", seed),
                                   ("levels", tuple(levels) if levels else None))
                 if v is not None}
    if overrides:
        if config != "synthetic":
            raise ValueError("n, seed and levels are options of the synthetic config, not "
                             f"{config!r}")
        # A different draw is a different dataset: name it after its options.
        options = {"n": chosen.n, "seed": chosen.seed, "levels": chosen.levels, **overrides}
        tag = f"n{options['n']}_seed{options['seed']}" + (
            "_levels" + "".join(map(str, options["levels"])) if "levels" in overrides else "")
        chosen = config_cls(name=f"synthetic_{tag}", kind="synthetic",
                            description=chosen.description, **options)
    return _prepare(chosen, data_dir)


def build_files(name: str, paths: Sequence[str | pathlib.Path], data_dir: str | pathlib.Path, *,
                preset: str = "rstar", fields: dict[str, str] | None = None) -> pathlib.Path:
    """Builds a config `name` from problem files (`sources.read_problems` with `preset` and
    `fields`) into `data_dir`; returns the dataset's directory."""
    builder_cls, config_cls = _builder_class()
    if name in {c.name for c in builder_cls.BUILDER_CONFIGS}:
        raise ValueError(f"{name!r} is a built-in config; give the file config another name")
    missing = [str(p) for p in paths if not pathlib.Path(p).is_file()]
    if not paths or missing:
        raise FileNotFoundError("build_files needs existing problem files; missing: "
                                f"{missing or 'no paths given'}")
    config = config_cls(name=name, kind="files", description=f"problems from {len(paths)} file(s)",
                        paths=tuple(str(pathlib.Path(p).resolve()) for p in paths), preset=preset,
                        fields=tuple(sorted((fields or {}).items())))
    return _prepare(config, data_dir)


class ProblemSource:
    """Random access to a built split: `len(source)`, `source[i]` -> Problem. It is a grain
    data source (`grain.MapDataset.source(source)`) as it is."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Problem:
        row = self._source[index]
        text = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in row.items()}
        return Problem(text["question"], text["answer"] if row["has_answer"] else None,
                       id=text["id"], source=text["source"], metadata=json.loads(text["metadata"]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def problems_source(dataset_dir: str | pathlib.Path, split: str | None = None) -> ProblemSource:
    """The problems of a built dataset directory (what `build` returns); split defaults to the
    only one it has."""
    tfds = _tfds()
    dataset_dir = pathlib.Path(dataset_dir)
    if not (dataset_dir / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{dataset_dir} is not a built dataset (no dataset_info.json); "
                                "pass the directory build() returned")
    builder = tfds.builder_from_directory(str(dataset_dir))
    splits = list(builder.info.splits)
    if split is None:
        if len(splits) != 1:
            raise ValueError(f"{dataset_dir} has splits {splits}; pass split=")
        split = splits[0]
    elif split not in splits:
        raise ValueError(f"{dataset_dir} has no split {split!r}; it has {splits}")
    return ProblemSource(builder.as_data_source(split=split))
