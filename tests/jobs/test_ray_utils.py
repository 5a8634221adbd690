"""Ray Train's poll interval: the config's value, unless the user exported one."""

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
