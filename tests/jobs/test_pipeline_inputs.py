"""Bad inputs fail before Ray (or MLflow, or any stage) starts, naming the key and the fix."""

from __future__ import annotations

import time

import pytest

from augment.config import ConfigError, load_config
from shared_paths import REPO

LOCAL = str(REPO / "configs" / "local.yaml")


@pytest.fixture
def no_ray():
    import ray

    if ray.is_initialized():
        pytest.skip("needs a process without Ray")
    yield
    assert not ray.is_initialized(), "Ray was started for a run that should have failed before it"


def test_missing_data_folder_fails_before_ray(tmp_path, no_ray):
    from jobs.pipeline import run_pipeline

    cfg = load_config(None, ["data.source=nih", f"data.root={tmp_path / 'nope'}", f"output_dir={tmp_path / 'runs'}",
                             f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"data\.root: folder .*nope' not found; set data\.root"):
        run_pipeline(cfg)
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_pipeline_cli_reports_bad_inputs(tmp_path, capsys, no_ray):
    from jobs.pipeline import main

    assert main(["--config", LOCAL, "--set", "data.source=nih", "--set", f"data.root={tmp_path / 'nope'}",
                 "--set", f"output_dir={tmp_path / 'runs'}"]) == 2
    assert "data.root: folder" in capsys.readouterr().err
    assert main(["--config", LOCAL, "--set", "data.split.seed=-1"]) == 2
    assert "data.split.seed: Input should be greater than or equal to 0 (got -1)" in capsys.readouterr().err


def test_augment_cli_checks_checkpoints_first(tmp_path, capsys, no_ray):
    from jobs.augment import main

    (tmp_path / "classifier.pt").write_bytes(b"x")
    rc = main(["--config", LOCAL, "--set", f"output_dir={tmp_path / 'runs'}",
               "--classifier", str(tmp_path / "classifier.pt"), "--generator", str(tmp_path / "missing.pt")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--generator: checkpoint" in err and "missing.pt" in err and "--classifier" not in err
    assert not (tmp_path / "runs").exists()  # not even the phantom data was made


def test_until_takes_only_augment(tmp_path, no_ray):
    from jobs.pipeline import run_pipeline

    cfg = load_config(LOCAL, [f"output_dir={tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    with pytest.raises(ConfigError, match="--until takes 'augment'"):
        run_pipeline(cfg, until="compare")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_until_augment_stops_with_the_pool_and_publishes_the_models(tmp_path):
    from jobs.pipeline import run_pipeline

    out = tmp_path / "runs"
    cfg = load_config(LOCAL, [
        f"output_dir={out}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "name=until",
        "data.phantom.n_images=60", "data.phantom.image_size=64", "data.image_size=64",
        "classifier.image_size=64", "classifier.epochs=1", "classifier.batch_size=16",
        "inpainting.crop_size=32", "inpainting.block_out_channels=[16, 32]", "inpainting.train_steps=4",
        "inpainting.sample_every=1000", "inpainting.steps=2", "verifier.epochs=1",
        "augment.findings=[Cardiomegaly]", "augment.target_count=100", "augment.max_per_finding=2",
        f"augment.output={out}/pool", "augment.batch_size=2", "registration.iterations=5", "registration.pyramid_levels=1",
    ])
    res = run_pipeline(cfg, until="augment")
    assert "augment" in res and "classifier_augmented" not in res and "compare" not in res
    assert res["seconds"] > 0 and "augment" in res["stage_seconds"]
    for f in ("classifier/classifier.pt", "generator/generator.pt"):
        assert (out / f).is_file()
    stages = {p.name.split("-")[0] for p in (out / "stages").glob("*/result.json") for p in [p.parent]}
    assert "augment" in stages and "compare" not in stages
