"""jobs.compare on a temporary SQLite MLflow store with two runs made here."""

import io

import pytest

from jobs.compare import main


def _png() -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (creating a SQLite store costs seconds); tests write under their own folders."""
    import mlflow

    tmp_path = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("cxr-test", artifact_location=(tmp_path / "artifacts").as_uri())
    plot = tmp_path / "loss_curve.png"
    plot.write_bytes(_png())
    for name, lr, auc in (("base", "0.001", 0.70), ("augmented", "0.0003", 0.78)):
        run = client.create_run(exp, run_name=name, tags={"cxr.stage": "classifier", "arm": name})
        rid = run.info.run_id
        for k, v in {"classifier.lr": lr, "classifier.epochs": "3", "data.image_size": "64"}.items():
            client.log_param(rid, k, v)
        client.log_metric(rid, "test_macro_auc", auc)
        client.log_metric(rid, "test_loss", 0.3)
        for f, d in (("Effusion", 0.05), ("Pleural_Thickening", -0.02), ("Mass", 0.0)):
            client.log_metric(rid, f"test_auc_{f}", auc + d)
            client.log_metric(rid, f"val_auc_{f}", auc + d - 0.01)
        client.log_artifact(rid, str(plot), "plots")
        client.set_terminated(rid)
    return uri, tmp_path


def test_compare_writes_markdown_and_html(store, tmp_path):
    uri, _ = store
    out = tmp_path / "report"
    assert main(["--tracking-uri", uri, "--experiment", "cxr-test", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    # the differing param is in the differences table, the equal ones listed once apart
    diff = md.split("## Config differences")[1].split("##")[0]
    assert "classifier.lr" in diff and "0.0003" in diff and "classifier.epochs" not in diff
    common = md.split("## Common config")[1].split("##")[0]
    assert "classifier.epochs" in common and "data.image_size" in common
    # a finding x run table per family
    table = md.split("## Per finding: test_auc")[1].split("##")[0]
    assert "| Effusion | 0.75 | 0.83 |" in table and "Pleural_Thickening" in table
    assert "## Per finding: val_auc" in md
    assert "test_macro_auc" in md.split("## Metrics")[1].split("##")[0]
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 3 and "data:image/png;base64," in html  # 2 run plots + charts
    assert (out / "images" / "metrics.png").is_file()
    assert not list(out.rglob("*.tmp"))


def test_compare_selects_by_tag_and_run_ids(store, tmp_path):
    uri, _ = store
    tmp = tmp_path
    assert main(["--tracking-uri", uri, "--tag", "arm=base", "--out", str(tmp / "r1"), "--no-plots"]) == 0
    assert "1 run(s)" in (tmp / "r1" / "report.md").read_text()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    ids = [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("cxr-test").experiment_id])]
    assert len(ids) == 2
    assert main(["--tracking-uri", uri, "--run-ids", ",".join(ids), "--out", str(tmp / "r2"), "--no-plots"]) == 0


def test_compare_errors_exit_2_with_a_message(store, tmp_path, capsys):
    uri, _ = store
    tmp = tmp_path
    assert main(["--tracking-uri", uri, "--experiment", "nope", "--out", str(tmp / "x")]) == 2
    err = capsys.readouterr().err
    assert "no experiment named 'nope'" in err and "cxr-test" in err
    assert main(["--tracking-uri", uri, "--experiment", "cxr-test", "--tag", "arm=none", "--out", str(tmp / "x")]) == 2
    assert "no runs match" in capsys.readouterr().err
    assert main(["--tracking-uri", f"sqlite:///{tmp / 'missing.db'}", "--experiment", "cxr-test", "--out", str(tmp / "x")]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp / "missing.db").exists() and not (tmp / "x").exists()
    assert main(["--tracking-uri", uri, "--out", str(tmp / "x")]) == 2
