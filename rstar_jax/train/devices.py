"""Devices for training: joining a multi-host job and the mesh a config asks for."""

from __future__ import annotations

import glob
import logging
import math
import os
import urllib.request
from collections.abc import Mapping, Sequence

import jax

from rstar_jax.models import make_mesh

log = logging.getLogger(__name__)


_METADATA = "computeMetadata/v1/instance/attributes"


def _on_tpu_vm() -> bool:
    """A Cloud TPU VM: its chips are /dev/accel* (v2-v4, v5e) or VFIO devices (v5p, v6e)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def tpu_vm_workers(timeout_s: float = 2.0) -> int | None:
    """The hosts of this Cloud TPU VM's slice, from the metadata server
    (`worker-network-endpoints`, one entry a host), or None when no server answers (not on
    Google Cloud). GCE_METADATA_IP, as JAX reads it, points at another server."""
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
    request = urllib.request.Request(f"http://{host}/{_METADATA}/worker-network-endpoints",
                                     headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode()
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        log.info("no Cloud TPU metadata at %s (%s): one process", host, e)
        return None
    return len([w for w in text.split(",") if w.strip()])


def several_processes() -> bool:
    """Whether the environment describes a job of several processes: an explicit coordinator
    (JAX_COORDINATOR_ADDRESS, with JAX_NUM_PROCESSES and JAX_PROCESS_ID where no cluster
    detection finds them), a GKE TPU slice of several hosts (TPU_WORKER_HOSTNAMES or
    TPU_PROCESS_ADDRESSES), several slices (MEGASCALE_NUM_SLICES), or a Cloud TPU VM whose
    metadata lists several workers (a slice created with `gcloud compute tpus tpu-vm create`,
    which sets none of those variables). The metadata server is asked only on a TPU VM, or
    where GCE_METADATA_IP names one."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for var in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):
        hosts = [h for h in os.environ.get(var, "").split(",") if h.strip()]
        if hosts:
            return len(hosts) > 1
    if int(os.environ.get("MEGASCALE_NUM_SLICES", "1") or 1) > 1:
        return True
    if _on_tpu_vm() or os.environ.get("GCE_METADATA_IP"):
        return (tpu_vm_workers() or 1) > 1
    return False


def initialize(distributed: bool | None = None) -> bool:
    """Joins the other processes of a multi-host job (`jax.distributed.initialize`, which finds
    the coordinator itself on Cloud TPU); must run before anything touches a device. None
    decides from the environment (`several_processes`). Returns whether it joined."""
    if distributed is None:
        distributed = several_processes()
    if not distributed:
        return False
    # Cloud TPU, SLURM and the like describe the job themselves; elsewhere the environment says
    # how many processes there are and which one this is, beside JAX_COORDINATOR_ADDRESS.
    names = (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
    job = {key: int(os.environ[var]) for key, var in names if os.environ.get(var)}
    jax.distributed.initialize(**job)
    log.info("process %d of %d, %d local and %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def mesh_from_config(mesh: Mapping[str, int], devices: Sequence | None = None):
    """The (data, fsdp, tensor) mesh of a config's `mesh` block over `devices` (default every
    device of the job); -1 takes the remaining devices, and without one the mesh takes the
    first devices it needs."""
    unknown = set(mesh) - {"data", "fsdp", "tensor"}
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)} in the config; use data, fsdp, "
                         "tensor")
    shape = {k: int(v) for k, v in mesh.items()}
    devices = list(jax.devices() if devices is None else devices)
    if -1 not in shape.values():
        need = math.prod(shape.values())
        if need > len(devices):
            raise ValueError(f"mesh {shape} needs {need} devices; there are {len(devices)}")
        devices = devices[:need]
    return make_mesh(shape, devices)


def batch_shards(mesh) -> int:
    """The devices a training batch's rows are split over: the mesh's data x fsdp (1 without a
    mesh)."""
    return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def inference_mesh(mesh: Mapping[str, int], devices: Sequence | None = None):
    """The mesh a process searches and evaluates on (`config.inference_mesh`): over its own host's
    devices (default `jax.local_devices()`), since each process runs its own problems."""
    return mesh_from_config(mesh, jax.local_devices() if devices is None else devices)
