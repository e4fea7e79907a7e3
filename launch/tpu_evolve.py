"""The main job: rStar-Math self-evolution rounds (RSTAR.md section 6).

    python launch/tpu_evolve.py --config=configs/tiny.py --workdir=runs/tiny
    python launch/tpu_evolve.py --config=configs/phi3.py --workdir=gs://bucket/run
"""

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where rounds, checkpoints and reports go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    config = _CONFIG.value
    print(f"config {config.model.preset} loaded; workdir {_WORKDIR.value}")
    print("not built yet: the self-evolution rounds are still being implemented; nothing was run.",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    app.run(main)
