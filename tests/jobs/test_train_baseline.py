"""``python -m jobs.train_generator --generator vae|lsgan|gmvae`` on a tiny phantom set: checkpoint and MLflow run."""

import json

import pytest
import torch

from augment.baselines import ConditionalVAE

TINY = [
    "data.image_size=32", "data.phantom.n_images=24", "data.phantom.n_patients=12", "data.phantom.image_size=64",
    "inpainting.crop_size=16", "baseline.batch_size=4", "baseline.base_channels=8", "baseline.latent_dim=8",
    "resources.torch_threads=1",
]


def _sets(tmp_path, *extra):
    out = []
    for kv in [f"output_dir={tmp_path / 'runs'}", f"data.root={tmp_path / 'phantom'}", *TINY, *extra]:
        out += ["--set", kv]
    return out


@pytest.mark.slow
def test_cli_trains_a_vae_writes_its_checkpoint_and_one_mlflow_run(tmp_path, capsys):
    import mlflow

    from augment.painter import load_painter
    from jobs.train_generator import main

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--generator", "vae", *_sets(tmp_path, "baseline.train_steps=3", "tracking.experiment=test-baselines"), "--tracking-uri", db]
    assert main(args) == 0
    out = tmp_path / "runs" / "generator-vae"
    ckpt = out / "generator.pt"
    assert ckpt.is_file() and not (tmp_path / "runs" / "generator").exists()  # the flow model's folder is left alone
    model = load_painter(ckpt).model
    assert isinstance(model, ConditionalVAE) and model.crop_size == 16
    assert torch.load(ckpt, weights_only=True)["extra"]["step"] == 3
    history = json.loads((out / "losses.json").read_text())
    assert set(history) == {"loss", "recon", "kl"} and len(history["loss"]) == 3
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["crops_step_000003.png", "step_000003.png"]

    client = mlflow.MlflowClient(tracking_uri=db)
    (run,) = client.search_runs([client.get_experiment_by_name("test-baselines").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["cxr.stage"] == "generator-vae" and run.data.tags["cxr.generator"] == "vae"
    assert run.data.params["baseline.train_steps"] == "3" and run.data.params["generator"] == "vae"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, "kl")) == 3
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "samples", "loss_curve.png", "losses.json", "config.yaml"} <= arts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")} == {"checkpoint/generator.pt"}
    mlflow.set_tracking_uri(db)
    logged = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert isinstance(logged, ConditionalVAE)


@pytest.mark.slow
def test_lsgan_without_tracking_and_the_summary(tmp_path, capsys):
    from jobs.train_generator import main

    args = ["--generator", "lsgan", *_sets(tmp_path, "baseline.train_steps=2", "baseline.sample_every=1", "tracking.enabled=false")]
    assert main(args) == 0
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{\n"):])
    out = tmp_path / "runs" / "generator-lsgan"
    assert summary["generator"] == "lsgan" and summary["checkpoint"] == str(out / "generator.pt")
    assert summary["mlflow_run_id"] is None and summary["steps"] == 2
    assert torch.load(out / "generator.pt", weights_only=True)["kind"] == "lsgan"
    names = sorted(p.name for p in (out / "samples").glob("step_*.png"))
    assert names == ["step_000001.png", "step_000002.png"]  # every sample_every steps, and at the end
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_generator_is_a_usage_error(capsys):
    from jobs.train_generator import main

    with pytest.raises(SystemExit) as exc:
        main(["--generator", "diffusion"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
