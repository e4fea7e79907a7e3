"""The main job: rStar-Math self-evolution rounds (RSTAR.md section 6).

    python launch/tpu_evolve.py --config=configs/tiny.py --workdir=runs/tiny
    python launch/tpu_evolve.py --config=configs/phi3.py --workdir=gs://bucket/run
    python launch/tpu_evolve.py --config=configs/phi3.py --workdir=/tmp/unused \
        --config.dry_run=True --config.dry_run_topology=v5p:4x4x4   # compile for a slice, on any machine

Run it again with the same --workdir to resume: finished stages are kept, a stopped search
keeps its finished chunks, training resumes from its checkpoints.
"""

import logging
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "Config file, e.g. configs/tiny.py[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where rounds, checkpoints and reports go.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None,
                                 "With a URL --workdir (gs://...): the local copy it is worked "
                                 "in (default ~/.cache/rstar_jax/workdirs/<scheme>/<path>).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from rstar_jax import evolve
    from rstar_jax.processes import ProcessFailed
    from rstar_jax.train import initialize

    initialize(_CONFIG.value.train.get("distributed"))  # joins the other hosts of a pod slice
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    if _CONFIG.value.get("dry_run", False):
        from rstar_jax.dry_run import DoesNotFit

        try:
            evolve.dry_run(_CONFIG.value)  # prints its tables
        except DoesNotFit as e:
            print(f"error: does not fit: {e}", file=sys.stderr)
            return 3
        return 0
    try:
        evolve.run(_CONFIG.value, _WORKDIR.value, cache_dir=_CACHE_DIR.value)
    except (evolve.ConfigError, ProcessFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {_WORKDIR.value.rstrip('/')}/report.md")
    return 0


if __name__ == "__main__":
    app.run(main)
