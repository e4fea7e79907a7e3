"""Runs the smoke evolution as a job of several JAX processes on this machine, as on a pod.

Each process is `launch/tpu_evolve.py` with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID set (what a cluster without Cloud TPU or SLURM detection passes), one CPU
device each, so training shards over processes, search chunks are split between them and the
stages meet at barriers. It then checks the report against a one-process run on as many
devices, which searches the same chunks with the same seeds:

    python scripts/multiprocess_smoke.py --processes=4 --delay=60 --workdir=/tmp/mp

(--delay starts the last process that many seconds after the others: a slow host, which the
others wait for at every barrier.)

Too slow for the test suite (two evolutions on two cores); run it after changing
rstar_jax/processes.py or how rstar_jax/evolve/ coordinates processes.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
_PROCESSES = flags.DEFINE_integer("processes", 2, "JAX processes.")
_DELAY = flags.DEFINE_float("delay", 0.0, "Seconds the last process starts after the others.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/multiprocess_smoke",
                               "Work directories go under here (emptied).")


def _launch(workdir: pathlib.Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "launch" / "tpu_evolve.py"), "--config=configs/tiny.py:smoke",
           f"--workdir={workdir}"]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env})


def _report(workdir: pathlib.Path) -> list[dict]:
    return [row | {"minutes": 0} for row in json.loads((workdir / "report.json").read_text())]


def main(argv):
    del argv
    n = _PROCESSES.value
    base = pathlib.Path(_WORKDIR.value)
    shutil.rmtree(base, ignore_errors=True)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    begin = time.time()
    jobs = []
    for i in range(n):
        if i == n - 1 and _DELAY.value:
            time.sleep(_DELAY.value)
        jobs.append(_launch(base / "processes", {
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": str(n),
            "JAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}))
    codes = [job.wait() for job in jobs]
    print(f"{n} processes: exit codes {codes} in {time.time() - begin:.0f} s", flush=True)
    if any(codes):
        return 1
    begin = time.time()
    one = _launch(base / "one", {"JAX_PLATFORMS": "cpu",
                                 "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"})
    if one.wait():
        return 1
    print(f"1 process, {n} devices: {time.time() - begin:.0f} s", flush=True)
    several, single = _report(base / "processes"), _report(base / "one")
    for a, b in zip(several, single):
        same = "same" if a == b else "differs: " + ", ".join(k for k in a if a[k] != b.get(k))
        print(f"round {a['round']}: {same}")
    return 0 if several == single else 1


if __name__ == "__main__":
    app.run(main)
