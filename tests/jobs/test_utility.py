"""jobs.utility: which synthetic images an arm may use, and the experiment end to end on a tiny phantom set."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from augment.config import RunConfig
from jobs.utility import latest_pool, main, synthetic_for


def _cfg(tmp_path, **utility):
    return RunConfig.model_validate(
        {
            "name": "test",
            "output_dir": str(tmp_path / "runs"),
            "data": {"source": "phantom", "image_size": 32, "phantom": {"n_images": 60, "image_size": 64, "seed": 3}},
            "classifier": {"arch": "efficientnet-b0", "image_size": 32, "batch_size": 8, "epochs": 1},
            "utility": {"seeds": 2, "fractions": [1.0], **utility},
            "resources": {"num_cpus": 2, "num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test-utility"},
        }
    )


def test_subset_mode_keeps_only_images_made_from_kept_real_images(make_nih_folder):
    from augment.data.nih import load_index

    pool = load_index(make_nih_folder([("s1.png", "Mass", 1), ("s2.png", "Mass", 2), ("s3.png", "Nodule", 3)], name="pool"))
    prov = {
        "s1.png": SimpleNamespace(source="a.png", reference="b.png"),
        "s2.png": SimpleNamespace(source="a.png", reference="z.png"),  # reference dropped with the fraction
        "s3.png": SimpleNamespace(source="y.png", reference="b.png"),  # source dropped
    }
    kept = {"a.png", "b.png"}
    assert [r.image_index for r in synthetic_for(pool, prov, kept, "strict").records] == ["s1.png"]
    assert [r.image_index for r in synthetic_for(pool, prov, kept, "subset").records] == ["s1.png", "s2.png"]
    assert len(synthetic_for(pool, prov, kept, "all")) == 3


def test_config_errors_and_missing_pool_are_clear(tmp_path, capsys):
    with pytest.raises(ValueError, match="fractions must be in"):
        _cfg(tmp_path, fractions=[0.0, 1.0])
    with pytest.raises(FileNotFoundError, match="run the pipeline first"):
        latest_pool(_cfg(tmp_path))
    assert main(["--config", "configs/local.yaml", "--set", "utility.fractions=[2.0]"]) == 2
    assert "fractions must be in" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_utility_trains_both_arms_per_seed_reports_intervals_and_resumes(tmp_path, monkeypatch):
    import mlflow

    from augment.synthesis.pool import PoolWriter, ProvenanceRow
    from augment.data import prepare_data
    from augment.data.io import read_image
    from jobs.utility import run_utility

    cfg = _cfg(tmp_path)
    _, split = prepare_data(cfg)
    healthy = split.train.healthy()
    refs = split.train.with_finding("Cardiomegaly")
    pool = tmp_path / "pool"
    writer = PoolWriter(str(pool))
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(6):
        src, ref = healthy[i % len(healthy)], refs[i % len(refs)]
        mask = ((yy - 40) ** 2 + (xx - 32) ** 2 < 100).astype(np.float32)
        img = np.where(mask > 0, 0.8, read_image(split.train.path(src), 64))
        name = f"syn_cardiomegaly_{i:05d}_{src.image_index}"
        writer.write_item(ProvenanceRow(
            item_id=f"Cardiomegaly-{i:05d}", image=name, finding="Cardiomegaly", source=src.image_index,
            source_patient=src.patient_id, reference=ref.image_index, mask=name, mask_area=float(mask.mean()),
            prob_before=0.1, prob_after=0.7, accepted=True, reason="ok", registration_ncc=0.9, generator_run="t", seed=i,
        ), img, mask)
    writer.finalize()

    monkeypatch.chdir(tmp_path)  # a relative pool path: the Ray workers run in other folders
    report = run_utility(cfg, "pool", tmp_path / "out")
    part = report["fractions"]["1"]
    assert [c["seed"] for c in part["cells"]] == [0, 1]
    for c in part["cells"]:
        assert c["synthetic_images"] == 6 and c["real_images"] == len(split.train)
        assert c["augmented"]["train_images"] == c["base"]["train_images"] + 6
    # seeds differ: two different base models
    assert part["cells"][0]["base"]["values"] != part["cells"][1]["base"]["values"]
    rows = {(r["key"], r["arm"]): r for r in part["aggregate"]}
    macro = rows[("macro", "delta")]
    assert macro["n_seeds"] == 2 and macro["low"] <= macro["mean"] <= macro["high"]
    saved = json.loads((tmp_path / "out" / "utility.json").read_text())
    assert saved["fractions"]["1"]["aggregate"] == part["aggregate"]
    assert (tmp_path / "out" / "utility-fraction-1.png").is_file()
    # base cells sit apart from the pool's, to be shared with the next pool compared
    assert Path(report["base_cells"]).parent == tmp_path / "runs" / "utility"
    assert (Path(report["base_cells"]) / "fraction-1" / "seed-0" / "scores.json").is_file()
    run = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri).get_run(report["mlflow_run_id"])
    assert "utility.f1.macro.delta.mean" in run.data.metrics

    # A re-run finds every cell finished and trains nothing.
    import jobs.train_classifier

    monkeypatch.setattr(jobs.train_classifier, "train_classifier", lambda *a, **k: pytest.fail("retrained a finished cell"))
    again = run_utility(cfg, "pool", tmp_path / "out")
    assert again["fractions"]["1"]["aggregate"] == part["aggregate"]


def test_printed_intervals_stay_inside_the_metrics_range():
    from jobs.utility import interval_text

    wide = {"mean": 0.785, "low": 0.323, "high": 1.247}
    assert interval_text(wide, "Cardiomegaly", "base") == "0.785 [0.323, 1.000]"
    assert interval_text({"mean": 0.1, "low": -1.4, "high": 1.6}, "macro", "delta") == "+0.100 [-1.000, +1.000]"
    assert interval_text({"mean": 0.7, "low": None, "high": None}, "macro", "base") == "0.700"
    assert interval_text(None, "macro", "base") == "n/a"
