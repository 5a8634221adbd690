"""Starting and joining Ray the same way in every job.

``init_ray(cfg)`` joins the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit`` and
inside KubeRay pods) or an explicit address; otherwise it starts a local Ray with
``resources.num_cpus`` CPUs, the dashboard on 127.0.0.1, and worker logs forwarded to the driver. It
returns whether this process started Ray, so the caller shuts down only what it started
(:func:`shutdown_ray`). Ray 2.60 enables token authentication by default; a local
``ray.init()`` in the same process needs nothing more.

The job pins its own instance: ``RAY_ADDRESS`` is set to the GCS address of the instance it
started or joined, in this process and (for a local start, where the address is chosen
before the start) in every Ray worker's environment. Ray helpers that find "the" cluster
on their own (Ray Train's placement-group cleaner, the state API) then connect to it even
when another Ray instance runs on the same machine; without it they fail with
``ConnectionError: Found multiple active Ray instances``. :func:`shutdown_ray` restores
the variable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from typing import Any, Callable, Iterator

import ray

from augment.config import RunConfig

log = logging.getLogger(__name__)

__all__ = ["fit_torch_trainer", "init_ray", "ray_session", "set_train_poll_interval", "shutdown_ray", "worker_setup"]

_ADDRESS_ENV = "RAY_ADDRESS"
_GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # read by Ray's head node when it starts its GCS
_pinned: dict[str, str | None] = {}  # RAY_ADDRESS value this module set -> the value before


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _pin(address: str) -> None:
    """Set ``RAY_ADDRESS`` to ``address``, remembering the value to restore."""
    before = os.environ.get(_ADDRESS_ENV)
    if before == address:
        return
    _pinned.setdefault(address, before)
    os.environ[_ADDRESS_ENV] = address


def _unpin() -> None:
    """Restore ``RAY_ADDRESS`` when it still holds a value this module pinned."""
    now = os.environ.get(_ADDRESS_ENV)
    if now is None or now not in _pinned:
        _pinned.clear()
        return
    before = _pinned.pop(now)
    _pinned.clear()
    if before is None:
        os.environ.pop(_ADDRESS_ENV, None)
    else:
        os.environ[_ADDRESS_ENV] = before


def pinned_address() -> str | None:
    """The ``RAY_ADDRESS`` this module pinned, if it is still in force."""
    now = os.environ.get(_ADDRESS_ENV)
    return now if now in _pinned else None


def init_ray(cfg: RunConfig, address: str | None = None, **kwargs: Any) -> bool:
    """Connect to or start Ray for ``cfg``; returns True when this call started a local Ray.

    Args:
        cfg: the run profile (``resources.num_cpus`` for a local start).
        address: a cluster address; default ``RAY_ADDRESS`` from the environment.
        kwargs: passed on to ``ray.init`` (e.g. ``runtime_env``).
    """
    if ray.is_initialized():
        return False
    if pinned_address():
        _unpin()  # left by a Ray this process started or joined and shut down without shutdown_ray
    address = address or os.environ.get(_ADDRESS_ENV)
    if address:
        log.info("joining Ray at %s", address)
        ray.init(address=address, log_to_driver=True, **kwargs)
        if not address.startswith("ray://"):  # a Ray Client session has no local GCS address
            _pin(ray.get_runtime_context().gcs_address)
        return False
    num_gpus = kwargs.pop("num_gpus", None)
    if num_gpus is None and not cfg.resources.use_gpu:
        num_gpus = 0
    # The GCS port is chosen here so that its address is known before the start: the Ray
    # processes this call starts (raylet, workers) inherit RAY_ADDRESS from this one, and
    # the job's runtime_env names it as well.
    port = _free_port()
    gcs_address = f"{ray.util.get_node_ip_address()}:{port}"
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), _ADDRESS_ENV: gcs_address}
    port_before = os.environ.get(_GCS_PORT_ENV)
    os.environ[_GCS_PORT_ENV] = str(port)
    _pin(gcs_address)
    try:
        # address="local": always a new instance (RAY_ADDRESS is not read). With no address
        # ray.init would join any cluster that `ray start` left on this machine
        # (/tmp/ray/ray_current_cluster), someone else's included.
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
            runtime_env=runtime_env,
            **kwargs,
        )
    except BaseException:
        _unpin()
        raise
    finally:
        if port_before is None:
            os.environ.pop(_GCS_PORT_ENV, None)
        else:
            os.environ[_GCS_PORT_ENV] = port_before
    actual = ray.get_runtime_context().gcs_address
    if actual != gcs_address:  # not expected; keep this process on the instance it has
        log.warning("Ray's GCS is at %s, not at the %s chosen for it; RAY_ADDRESS follows it here", actual, gcs_address)
        _unpin()
        _pin(actual)
    log.info("started local Ray at %s (RAY_ADDRESS pinned): %s", actual, ray.cluster_resources())
    return True


def shutdown_ray(started: bool) -> None:
    """Shut Ray down and restore ``RAY_ADDRESS`` when this process started it (``started``
    is what :func:`init_ray` returned); a joined or outer session is left as it is."""
    if started:
        ray.shutdown()
        _unpin()


@contextlib.contextmanager
def ray_session(cfg: RunConfig, address: str | None = None, **kwargs: Any) -> Iterator[bool]:
    """``init_ray`` as a context manager that shuts Ray down only when it started it."""
    started = init_ray(cfg, address, **kwargs)
    try:
        yield started
    finally:
        shutdown_ray(started)


def worker_setup(torch_threads: int | None) -> None:
    """Per-worker process settings: torch intra-op threads (None leaves torch's default)."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)


_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
_poll_we_set: dict[str, str] = {}


def set_train_poll_interval(seconds: float) -> str:
    """Set Ray Train's controller poll interval for the next ``fit()``; returns the value in force.

    Ray Train reads ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` at ``fit()`` and hands it to its
    controller. A value the user exported wins over ``seconds``; one this function set earlier
    does not.
    """
    if os.environ.get(_POLL_ENV) in (None, _poll_we_set.get(_POLL_ENV)):
        os.environ[_POLL_ENV] = _poll_we_set[_POLL_ENV] = str(seconds)
    return os.environ[_POLL_ENV]


def fit_torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    cfg: RunConfig,
    *,
    name: str,
    storage_path: str,
    max_failures: int,
) -> tuple[Any, float, float]:
    """Run ``loop`` under Ray Train's ``TorchTrainer`` with ``cfg.resources``.

    Returns ``(result, seconds, started_at)``: Ray Train's result, the wall time of ``fit()``
    and its start as a Unix time (to set against times the workers report).

    Workers, CPUs and GPUs per worker come from ``resources``; a failed worker group restarts
    up to ``max_failures`` times from the last reported checkpoint (two are kept under
    ``storage_path/name``). Ray is joined or started as by :func:`ray_session`. ``seconds``
    covers Ray Train's controller and worker start-up, the loop, and the teardown. The
    controller polls its workers every ``resources.train_poll_interval_s`` (or what the user
    set in ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``), since every state change of a run waits for
    the next poll.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    res = cfg.resources
    set_train_poll_interval(res.train_poll_interval_s)
    scaling = ray.train.ScalingConfig(
        num_workers=res.num_workers,
        use_gpu=res.use_gpu,
        resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": 1} if res.use_gpu else {})},
    )
    run_config = ray.train.RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
    )
    with ray_session(cfg):
        trainer = TorchTrainer(loop, train_loop_config=loop_config, scaling_config=scaling, run_config=run_config)
        started_at = time.time()
        t0 = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint (error: {result.error}); see the worker logs")
    return result, seconds, started_at
