"""Ray, the engine `recon batch` and `recon run --workers` run on: an optional extra (`pip install
'recon[ray]'`), imported only by them, a one-line error naming the extra where it is missing; connected to a
cluster, or started on this machine with its CPUs."""

from __future__ import annotations

import logging
import os
from types import ModuleType

from recon.errors import ReconError

RAY_MISSING = "recon {what} runs on Ray, which is not installed here; install the extra: pip install 'recon[ray]'"


def import_ray(what: str) -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ReconError(RAY_MISSING.format(what=what)) from None
    return ray


def start_ray(ray: ModuleType, address: str | None) -> None:
    """Connect to the cluster at `address` (auto: the one this machine belongs to), or start Ray here with
    this machine's CPUs."""
    # Started here, Ray sends results (a window's prediction: tens of MB) in its replies instead of through its
    # shared-memory object store: every store page the driver reads stays in its resident memory until the
    # store wraps around (~0.8 GB more on a 300-frame drive), where a reply's buffer is freed and reused. A
    # cluster keeps its own settings: there the driver node's store pages count in the driver's memory.
    inline = {"max_direct_call_object_size": 1 << 30, "task_rpc_inlined_bytes_limit": 1 << 30}
    try:
        ray.init(
            address=address,
            num_cpus=None if address else os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.ERROR,  # not its notes on starting (a token made for this machine)
            log_to_driver=False,
            _system_config=None if address else inline,
        )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "Ray on this machine"
        raise ReconError(f"cannot start {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def check_resources(ray: ModuleType, cpus: float, gpus: float) -> None:
    """A run asking for more than the whole cluster has would wait forever: say so instead."""
    have = ray.cluster_resources()
    for flag, want, key in (("--cpus-per-run", cpus, "CPU"), ("--gpus-per-run", gpus, "GPU")):
        if want > have.get(key, 0):
            raise ReconError(f"{flag} {want:g} is more than the cluster has ({have.get(key, 0):g} {key}s)")
