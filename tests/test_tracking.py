import pytest

from augment.config import load_config
from augment.tracking import git_commit, metrics_to_mlflow, start_run, ui_command


@pytest.mark.integration
def test_parent_and_child_runs_in_sqlite(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["tracking.uri=sqlite:///track/mlflow.db", "name=unit"])
    with start_run(cfg, "pipeline", data_fingerprint="abc123") as parent:
        pid = parent.info.run_id
        with start_run(cfg, "classifier", parent_run_id=pid) as child:
            metrics_to_mlflow({"auc": 0.75, "missing": None, "nan": float("nan")}, step=0)
            cid = child.info.run_id
    assert (tmp_path / "track" / "mlflow.db").is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/track/mlflow.db")
    exp = client.get_experiment_by_name("cxr-augment/unit")
    assert exp is not None
    p, c = client.get_run(pid), client.get_run(cid)
    assert c.data.tags["mlflow.parentRunId"] == pid
    assert p.data.tags["data.fingerprint"] == "abc123"
    assert p.data.tags["cxr.stage"] == "pipeline" and c.data.tags["cxr.stage"] == "classifier"
    assert "mlflow.source.git.commit" in p.data.tags
    assert p.data.params["classifier.epochs"] == "10"
    assert c.data.metrics == {"auc": 0.75}  # None and NaN are not logged as numbers
    assert p.info.status == c.info.status == "FINISHED"
    assert "sqlite:///" in ui_command(cfg.tracking) and str(tmp_path) in ui_command(cfg.tracking)


@pytest.mark.integration
def test_failed_stage_is_marked_failed(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["tracking.uri=sqlite:///mlflow.db", "name=unit"])
    with pytest.raises(RuntimeError):
        with start_run(cfg, "generator") as run:
            rid = run.info.run_id
            raise RuntimeError("boom")
    assert mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(rid).info.status == "FAILED"


def test_git_commit_env_override(monkeypatch):
    monkeypatch.setenv("CXR_GIT_COMMIT", "deadbeef")
    assert git_commit() == "deadbeef"


@pytest.mark.integration
def test_metric_log_batches_skips_missing_values_and_never_raises(tmp_path, caplog):
    mlflow = pytest.importorskip("mlflow")
    from augment.tracking import MetricLog

    off = MetricLog(None)
    off.add({"loss": 1.0}, 0)
    off.flush()
    off.artifact(tmp_path / "nothing.png")
    assert not off.enabled
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("metric-log")).info.run_id
    ml = MetricLog(run_id, uri, every=3)
    ml.add({"loss": 0.5, "gap": None, "auc": float("nan")}, 1)
    ml.add({"loss": 0.4}, 2)
    assert client.get_metric_history(run_id, "loss") == []  # two values queued: under every=3, not sent
    ml.add({"loss": 0.3}, 3)  # the third: one batch goes out
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 0.5), (2, 0.4), (3, 0.3)]
    assert set(client.get_run(run_id).data.metrics) == {"loss"}  # None and NaN are not numbers
    (tmp_path / "grid.png").write_bytes(b"png")
    ml.artifact(tmp_path / "grid.png", artifact_path="samples")
    assert [f.path for f in client.list_artifacts(run_id, "samples")] == ["samples/grid.png"]
    gone = MetricLog("0" * 32, uri, every=1)  # a run that does not exist: a warning, training goes on
    gone.add({"loss": 1.0}, 0)
    assert "could not log metrics" in caplog.text
