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
