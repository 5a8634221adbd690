"""jobs.longtail: the test and ceiling sets rendered apart, clear errors, and the benchmark end to end on a tiny set."""

import json

import pytest

from augment.config import RunConfig
from augment.data import DataError
from jobs.longtail import _pools, extra_counts, main, render_ceiling_set, render_test_set, run_longtail


def _cfg(tmp_path, **longtail):
    return RunConfig.model_validate(
        {
            "name": "test",
            "output_dir": str(tmp_path / "runs"),
            "data": {"source": "phantom", "image_size": 32, "phantom": {
                "n_images": 60, "image_size": 64, "seed": 3, "healthy_fraction": 0.3,
                "prevalence": {"Effusion": 0.5, "Cardiomegaly": 0.5, "Mass": 0.2, "Nodule": 0.2}}},
            "classifier": {"arch": "efficientnet-b0", "image_size": 32, "batch_size": 8, "epochs": 1},
            "augment": {"findings": ["Mass", "Nodule"], "target_count": 12},
            "longtail": {"seeds": 1, "arms": ["base", "oversample"], "n_boot": 50,
                         "test": {"n_images": 40, "seed": 5, "patient_id_offset": 1000, "healthy_fraction": 0.2,
                                  "prevalence": {"Mass": 0.5, "Nodule": 0.5, "Effusion": 0.3}}, **longtail},
            "resources": {"num_cpus": 2, "num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test-longtail"},
        }
    )


def test_test_and_ceiling_sets_are_other_patients_with_the_rare_findings(tmp_path):
    from augment.data import prepare_data

    cfg = _cfg(tmp_path)
    index, split = prepare_data(cfg)
    # the plan's count: augment.target_count minus the real positives, as a generator is asked for
    extra = extra_counts(cfg, split.train)
    assert extra == {f: max(0, 12 - len(split.train.with_finding(f))) for f in ("Mass", "Nodule")}
    assert extra_counts(cfg.model_copy(update={"longtail": cfg.longtail.model_copy(update={"extra_per_finding": 3})}),
                        split.train) == {"Mass": 3, "Nodule": 3}
    test, ceiling = render_test_set(cfg), render_ceiling_set(cfg, {"Mass": 4, "Nodule": 2})
    train_patients = {r.patient_id for r in index.records}
    assert not train_patients & {r.patient_id for r in test.records}
    assert not train_patients & {r.patient_id for r in ceiling.records}
    assert not {r.patient_id for r in test.records} & {r.patient_id for r in ceiling.records}
    assert test.counts()["Mass"] > 0 and test.counts()["Nodule"] > 0
    # the asked-for real positives of each rare finding, and nothing else
    assert ceiling.counts()["Mass"] == 4 and ceiling.counts()["Nodule"] == 2 and len(ceiling) == 6
    assert render_test_set(cfg).records == test.records  # rendered once, read again


def test_bad_arms_and_pools_are_refused_clearly(tmp_path, capsys):
    with pytest.raises(ValueError, match="lists an arm twice"):
        _cfg(tmp_path, arms=["base", "base"])
    with pytest.raises(ValueError, match="base"):
        run_longtail(_cfg(tmp_path, arms=["oversample"]))
    with pytest.raises(ValueError, match="ARM=DIR"):
        _pools(["vae"])
    with pytest.raises(ValueError, match="unknown arm"):
        run_longtail(_cfg(tmp_path), {"diffusion": "x"})
    with pytest.raises(ValueError, match="--pool vae=DIR"):
        run_longtail(_cfg(tmp_path, arms=["base", "vae"]))
    (tmp_path / "not-a-pool" / "images").mkdir(parents=True)  # no pool.json: not written by jobs.augment
    with pytest.raises(DataError, match="not a jobs.augment pool"):
        run_longtail(_cfg(tmp_path, arms=["base", "vae"]), {"vae": str(tmp_path / "not-a-pool")})
    assert main(["--config", "configs/longtail.yaml", "--pool", "lsgan"]) == 2
    assert "ARM=DIR" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_two_arms_one_seed_end_to_end_with_the_table_and_a_resume(tmp_path, monkeypatch):
    import mlflow

    cfg = _cfg(tmp_path)
    report = run_longtail(cfg, out_dir=tmp_path / "out")
    assert report["arms"] == ["base", "oversample"] and report["seeds"] == 1
    base, over = report["cells"]["base"][0], report["cells"]["oversample"][0]
    assert over["train_images"] == base["train_images"] + sum(report["extra_per_finding"].values()) > base["train_images"]
    rows = {(r["arm"], r["key"]): r for r in report["table"]}
    assert set(rows) == {(a, k) for a in ("base", "oversample") for k in ("Mass", "Nodule", "rare macro")}
    assert rows[("oversample", "rare macro")]["delta"] is not None
    assert rows[("oversample", "rare macro")]["delta_low"] is None  # one seed: no interval over seeds, not invented
    saved = json.loads((tmp_path / "out" / "longtail.json").read_text())
    assert saved["table"] == report["table"] and (tmp_path / "out" / "longtail.png").is_file()
    run = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri).get_run(report["mlflow_run_id"])
    assert "longtail.oversample.rare_macro.delta" in run.data.metrics

    # A re-run finds both cells finished (with their test predictions) and trains nothing.
    import jobs.train_classifier

    monkeypatch.setattr(jobs.train_classifier, "train_classifier", lambda *a, **k: pytest.fail("retrained a finished cell"))
    again = run_longtail(cfg, out_dir=tmp_path / "out")
    assert again["table"] == report["table"]

    # A gated pool that accepted nothing (LSGAN at a small budget did that here): the arm is the base
    # classifier, said so in the report, and nothing is trained for it.
    empty = tmp_path / "lsgan-pool"
    (empty / "images").mkdir(parents=True)
    (empty / "pool.json").write_text('{"generator": "x"}')
    lcfg = cfg.model_copy(update={"longtail": cfg.longtail.model_copy(update={"arms": ["lsgan", "base"]})})
    gated = run_longtail(lcfg, {"lsgan": str(empty)}, out_dir=tmp_path / "out")
    assert gated["empty_pools"] == ["lsgan"] and gated["pool_images"]["lsgan"] == {"Mass": 0, "Nodule": 0}
    assert gated["cells"]["lsgan"][0]["same_as"] == "base"
    rows = {(r["arm"], r["key"]): r for r in gated["table"]}
    assert rows[("lsgan", "rare macro")]["delta"] == 0 and rows[("lsgan", "Mass")]["auc"] == rows[("base", "Mass")]["auc"]
