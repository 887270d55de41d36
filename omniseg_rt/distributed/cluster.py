"""Connecting to Ray: ``local`` starts a private cluster on this machine, anything else is the
address of a running one (``ray://host:10001`` or ``host:6379``)."""

from __future__ import annotations

import logging
import os

from omniseg_rt._optional import require

log = logging.getLogger(__name__)


def ray_module():
    """``ray``, or a MissingDependencyError naming the pip install that fixes it."""
    return require("ray", "segment on a Ray cluster (--ray)")


def connect(address: str, num_cpus: int | None = None):
    """Initialise Ray; returns the module. ``local``: a new cluster of ``num_cpus`` CPUs (default:
    this machine's), no dashboard, no token files; otherwise join the cluster at ``address``."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    if address == "local":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster: no token in ~/.ray
        cpus = num_cpus or os.cpu_count() or 1
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        log.info("started a local Ray cluster with %d CPUs", cpus)
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        log.info("joined the Ray cluster at %s", address)
    return ray
