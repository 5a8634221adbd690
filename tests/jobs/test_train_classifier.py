"""The Ray Train job end to end on a tiny folder: one worker, a failure, a resume, MLflow."""

import json

import pytest

from augment.config import RunConfig
from augment.data.nih import load_index


def _cfg(tmp_path, **classifier):
    return RunConfig.model_validate(
        {
            "name": "test",
            "output_dir": str(tmp_path / "runs"),
            "classifier": {"arch": "efficientnet-b0", "image_size": 32, "batch_size": 4, "epochs": 2, **classifier},
            "resources": {"num_cpus": 2, "num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test-classifier"},
        }
    )


@pytest.mark.slow
@pytest.mark.integration
def test_ray_train_resumes_after_a_worker_failure_and_logs_to_mlflow(tmp_path, make_nih_folder):
    import mlflow

    from augment.classifier import load_classifier
    from jobs.train_classifier import train_classifier

    labels = ["Effusion", "No Finding", "Mass|Effusion", "No Finding", "Mass", "No Finding"]
    rows = [(f"{i:08d}_000.png", labels[i % 6], i) for i in range(12)]
    index = load_index(make_nih_folder(rows, size=32))
    train = index.subset(r.image_index for r in index.records[:8])
    val = index.subset(r.image_index for r in index.records[8:])
    cfg = _cfg(tmp_path)

    out = train_classifier(cfg, train, val, tmp_path / "clf", fail_after_epoch=1)

    assert out.resumed_from_epoch == 1  # the second attempt started from epoch 1's checkpoint
    assert [r.epoch for r in out.history] == [1, 2]
    # fit()'s wall time splits into start, setup, train and teardown, measured from the worker.
    assert set(out.fit_phases) == {"start", "setup", "train", "teardown"}
    assert all(v >= 0 for v in out.fit_phases.values())
    assert abs(sum(out.fit_phases.values()) - out.seconds) < 1e-6
    assert out.metrics.finding("Effusion").auc is not None and out.metrics.finding("Hernia").missing
    model = load_classifier(out.checkpoint_path)
    assert model.arch == "efficientnet-b0"
    for name in ("classifier.pt", "history.json", "loss_curve.png", "per_finding.csv", "per_finding.json"):
        assert (tmp_path / "clf" / name).is_file(), name

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["classifier.arch"] == "efficientnet-b0"
    steps = {m.step for m in client.get_metric_history(out.run_id, "loss_gap")}
    assert steps == {1, 2}
    assert "final_val_macro_auc" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"loss_curve.png", "per_finding.csv", "per_finding.json", "checkpoint"} <= arts
    table = json.loads((tmp_path / "clf" / "per_finding.json").read_text())
    assert len(table["per_finding"]) == 14 and "Hernia" in table["missing_findings"]
    # the logged model holds the checkpoint: services load it by MLflow URI
    again = load_classifier(f"runs:/{out.run_id}/model", tracking_uri=cfg.tracking.uri)
    assert all((a == b).all() for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_cli_reports_config_errors(capsys):
    from jobs.train_classifier import main

    assert main(["--config", "does-not-exist.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--set", "classifier.epoks=2"]) == 2
    assert "epoks" in capsys.readouterr().err
