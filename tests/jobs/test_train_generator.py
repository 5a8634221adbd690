"""The generator's Ray Train job on a tiny phantom set: a worker failure, a resumed re-run, MLflow."""

import json

import pytest
import torch

from augment.config import PhantomConfig, RunConfig
from augment.data.nih import load_index


def _cfg(tmp_path, steps):
    return RunConfig.model_validate(
        {
            "name": "test",
            "output_dir": str(tmp_path / "runs"),
            "data": {"source": "phantom", "image_size": 32},
            "inpainting": {
                "crop_size": 16, "block_out_channels": [8, 16], "mid_attention": False, "bf16": False,
                "batch_size": 4, "train_steps": steps, "sample_every": 2, "steps": 2,
            },
            "resources": {"num_cpus": 2, "num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test-generator"},
        }
    )


@pytest.mark.slow
@pytest.mark.integration
def test_ray_train_generator_fails_resumes_and_logs(tmp_path):
    import mlflow
    import ray

    from augment.data.phantom import generate_phantom
    from augment.inpainting.model import load_generator
    from jobs.train_generator import STATE_NAME, train_generator

    root = generate_phantom(PhantomConfig(n_images=12, image_size=64, seed=2, healthy_fraction=0.3), tmp_path / "ph", progress=False)
    index = load_index(root)
    out = tmp_path / "gen"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never join a stray cluster
    try:
        first = train_generator(_cfg(tmp_path, 4), index, out, fail_after_step=3)
        assert first.resumed_from_step == 2  # the worker failed after step 3 and resumed from step 2's checkpoint
        assert len(first.losses) == 4 and first.checkpoint_path.is_file()
        second = train_generator(_cfg(tmp_path, 6), index, out)  # the same job, run again with more steps
    finally:
        ray.shutdown()
    assert second.resumed_from_step == 4 and len(second.losses) == 6
    assert second.losses[:4] == first.losses
    assert torch.load(out / STATE_NAME, weights_only=True)["step"] == 6
    model = load_generator(second.checkpoint_path)
    assert model.cfg.crop_size == 16
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == [f"step_{s:06d}.png" for s in (2, 4, 6)]
    assert json.loads((out / "losses.json").read_text()) == list(second.losses)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(second.run_id)
    assert run.data.tags["cxr.stage"] == "generator" and run.data.params["inpainting.train_steps"] == "6"
    history = client.get_metric_history(second.run_id, "loss")
    assert sorted(m.step for m in history) == [5, 6]
    arts = {a.path for a in client.list_artifacts(second.run_id)}
    assert {"loss_curve.png", "samples", "checkpoint", "config.yaml"} <= arts
    assert mlflow.pytorch.load_model(f"runs:/{second.run_id}/model") is not None
