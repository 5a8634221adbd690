"""Starting and joining Ray the same way in every job.

``init_ray(cfg)`` joins the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit`` and
inside KubeRay pods) or an explicit address; otherwise it starts a local Ray with
``resources.num_cpus`` CPUs, the dashboard on 127.0.0.1, and worker logs forwarded to the driver. It
returns whether this process started Ray, so the caller shuts down only what it started.
Ray 2.60 enables token authentication by default; a local ``ray.init()`` in the same
process needs nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

import ray

from augment.config import RunConfig

log = logging.getLogger(__name__)

__all__ = ["init_ray", "ray_session", "worker_setup"]


def init_ray(cfg: RunConfig, address: str | None = None, **kwargs: Any) -> bool:
    """Connect to or start Ray for ``cfg``; returns True when this call started a local Ray.

    Args:
        cfg: the run profile (``resources.num_cpus`` for a local start).
        address: a cluster address; default ``RAY_ADDRESS`` from the environment.
        kwargs: passed on to ``ray.init`` (e.g. ``runtime_env``).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray at %s", address)
        ray.init(address=address, log_to_driver=True, **kwargs)
        return False
    num_gpus = kwargs.pop("num_gpus", None)
    if num_gpus is None and not cfg.resources.use_gpu:
        num_gpus = 0
    # address="local": always a new instance. With no address ray.init would join any cluster
    # that `ray start` left on this machine (/tmp/ray/ray_current_cluster), someone else's included.
    ray.init(
        address="local",
        num_cpus=cfg.resources.num_cpus,
        num_gpus=num_gpus,
        # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner
        # polls (without it the driver log fills with "State API may be temporarily
        # unavailable"); bound to loopback.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=True,
        **kwargs,
    )
    log.info("started local Ray: %s", ray.cluster_resources())
    return True


@contextlib.contextmanager
def ray_session(cfg: RunConfig, address: str | None = None, **kwargs: Any) -> Iterator[bool]:
    """``init_ray`` as a context manager that shuts Ray down only when it started it."""
    started = init_ray(cfg, address, **kwargs)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()


def worker_setup(torch_threads: int | None) -> None:
    """Per-worker process settings: torch intra-op threads (None leaves torch's default)."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
