"""Ray Train's poll interval: the config's value, unless the user exported one."""

import pytest

from jobs import ray_utils


def test_poll_interval_from_config_and_user_value_wins(monkeypatch):
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    monkeypatch.setattr(ray_utils, "_poll_we_set", {})
    assert ray_utils.set_train_poll_interval(0.5) == "0.5"
    # A later job with another config replaces the value this module set...
    assert ray_utils.set_train_poll_interval(1.0) == "1.0"
    # ...but never one the user exported.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    assert ray_utils.set_train_poll_interval(0.5) == "3"


def test_unpin_restores_the_users_address(monkeypatch):
    """Once the pinned Ray is gone, RAY_ADDRESS is what the user had set again."""
    import os

    import ray

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:1")
    monkeypatch.setattr(ray_utils, "_pinned", {})
    ray_utils._pin("10.0.0.9:2")
    assert ray_utils.pinned_address() == "10.0.0.9:2"
    ray_utils._unpin()
    assert os.environ["RAY_ADDRESS"] == "10.0.0.9:1"  # the user's value is back
    assert ray_utils.pinned_address() is None and not ray.is_initialized()


@pytest.mark.integration
@pytest.mark.slow
def test_started_ray_pins_its_address_for_its_workers(monkeypatch):
    """With a second Ray instance on the machine, workers of the job's own instance still find it.

    Ray helpers that look the cluster up by themselves (Ray Train's placement-group cleaner
    calls the state API with no address) fail with "Found multiple active Ray instances"
    unless RAY_ADDRESS names one; the control call without it shows that they would.
    """
    import os
    import subprocess
    import sys

    import ray

    from augment.config import RunConfig

    if ray.is_initialized():
        pytest.skip("needs a process without Ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    other = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys; ray.init(address='local', num_cpus=1, include_dashboard=False); "
         "print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert other.stdout.readline().strip() == "up"
        cfg = RunConfig.model_validate({"resources": {"num_cpus": 1}})
        started = ray_utils.init_ray(cfg)
        try:
            assert started
            gcs = ray.get_runtime_context().gcs_address
            assert os.environ["RAY_ADDRESS"] == gcs

            @ray.remote(num_cpus=0)
            def probe() -> tuple[str | None, str]:
                from ray.util.state import list_nodes

                try:
                    return os.environ.get("RAY_ADDRESS"), f"nodes {len(list_nodes())}"
                except ConnectionError as exc:
                    return os.environ.get("RAY_ADDRESS"), str(exc)

            assert ray.get(probe.remote()) == (gcs, "nodes 1")
            env, msg = ray.get(probe.options(runtime_env={"env_vars": {"RAY_ADDRESS": ""}}).remote())
            assert "multiple active Ray instances" in msg  # without the pin
        finally:
            ray_utils.shutdown_ray(started)
        assert "RAY_ADDRESS" not in os.environ and not ray.is_initialized()
    finally:
        other.stdin.close()
        other.wait(timeout=60)
