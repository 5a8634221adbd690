"""The augment job's input quality filter and its dry run.

The filter runs before planning: a planted bad source is never planned, a planted bad
reference never enters the bank's index, and the counts land in the active MLflow run.
The dry run plans from the Data_Entry table alone, without Ray, models or images.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from augment.config import load_config
from shared_paths import REPO


def _cfg(root: Path, *extra: str):
    return load_config(
        REPO / "configs" / "local.yaml",
        [
            f"output_dir={root}/runs",
            "data.image_size=64",
            "data.phantom.n_images=80",
            "data.phantom.image_size=64",
            "classifier.arch=efficientnet-b0",
            "classifier.image_size=64",
            "inpainting.crop_size=32",
            "inpainting.block_out_channels=[16, 32]",
            "inpainting.steps=2",
            "augment.findings=[Cardiomegaly, Effusion]",
            "augment.target_count=100",
            "augment.max_per_finding=2",
            f"augment.output={root}/pool",
            "augment.batch_size=2",
            "augment.references_per_finding=4",
            "registration.iterations=3",
            "registration.pyramid_levels=1",
            "attention.source=bbox",
            "input_filter.min_population=10",
            f"tracking.uri=sqlite:///{root}/mlflow.db",
            *extra,
        ],
    )


@pytest.fixture
def planted(tmp_path):
    """Phantom training split with one inverted healthy source and one blank Cardiomegaly reference."""
    from augment.data import prepare_data
    from augment.data.io import read_image, write_png

    cfg = _cfg(tmp_path)
    _, split = prepare_data(cfg)
    train = split.train
    src = train.healthy()[0]
    ref = train.with_finding("Cardiomegaly")[0]
    write_png(train.path(src), 1.0 - read_image(train.path(src)))
    write_png(train.path(ref), np.full((64, 64), 0.4, np.float32))
    return cfg, train, src.image_index, ref.image_index


@pytest.mark.integration
def test_filter_drops_planted_inputs_and_logs_counts_to_mlflow(planted, tmp_path):
    import mlflow

    from augment import tracking
    from augment.synthesis.plan import plan_augmentation
    from jobs.augment import filter_inputs

    cfg, train, bad_src, bad_ref = planted
    tracking.configure(cfg.tracking, "input-filter-test")
    with mlflow.start_run() as run:
        plan_index, ref_index, res = filter_inputs(cfg, train)
    assert res.reason(bad_src) == "inverted" and res.reason(bad_ref) == "blank"
    assert bad_src not in {r.image_index for r in plan_index.records}
    assert bad_src in {r.image_index for r in ref_index.records}  # a source drop leaves references alone
    assert bad_ref not in {r.image_index for r in ref_index.records}
    assert plan_index.counts()["Cardiomegaly"] == train.counts()["Cardiomegaly"]  # real positives still count
    plan = plan_augmentation(plan_index, ["Cardiomegaly", "Effusion"], 100, 40, 0, generator="g")
    assert plan and bad_src not in {i.source for i in plan}

    got = mlflow.get_run(run.info.run_id)
    m = got.data.metrics
    assert m["input_filter.dropped"] == len(res.dropped) >= 2
    assert m["input_filter.dropped.inverted"] >= 1 and m["input_filter.dropped.blank"] >= 1
    assert m["input_filter.sources_dropped"] >= 1 and m["input_filter.references_dropped"] >= 1
    assert m["input_filter.kept"] + m["input_filter.dropped"] == m["input_filter.scored"]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "input_filter")}
    assert {"input_filter/dropped.json", "input_filter/dropped.png"} <= arts
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="input_filter/dropped.json",
                                                dst_path=str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text())["dropped"][bad_src][0] == "inverted"


@pytest.mark.integration
@pytest.mark.slow
def test_run_augment_never_paints_into_a_dropped_source(planted):
    import mlflow
    import torch

    from augment import tracking
    from augment.classifier import build_classifier
    from augment.classifier.checkpoint import save_checkpoint as save_clf
    from augment.inpainting import build_model
    from augment.inpainting import save_checkpoint as save_gen
    from jobs.augment import run_augment

    cfg, train, bad_src, bad_ref = planted
    root = Path(cfg.output_dir)
    torch.manual_seed(0)
    clf = save_clf(root / "classifier.pt", build_classifier(cfg.classifier, load_pretrained=False), cfg.classifier)
    gen = save_gen(root / "generator.pt", build_model(cfg.inpainting), cfg.inpainting)
    tracking.configure(cfg.tracking, "input-filter-job")
    with mlflow.start_run() as run:
        res = run_augment(cfg, train, str(clf), str(gen), use_ray=False)
    assert res.planned == 4 and res.input_filter["dropped"] >= 2
    rows = (Path(cfg.augment.output) / "provenance.csv").read_text()
    assert bad_src not in rows and bad_ref not in rows
    assert mlflow.get_run(run.info.run_id).data.metrics["input_filter.dropped.inverted"] >= 1
    # switched off: nothing is scored, the plan may use every source
    off = run_augment(cfg.model_copy(update={"input_filter": cfg.input_filter.model_copy(update={"enabled": False})}),
                      train, str(clf), str(gen), use_ray=False)
    assert off.input_filter == {}


def _write_csv(out: Path, rows: int) -> Path:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "make_nih_scale_csv.py"), "--out", str(out), "--rows", str(rows)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def test_dry_run_prints_the_plan_without_ray_models_or_images(tmp_path):
    from augment.synthesis.dry_run import CPU_SECONDS_PER_ITEM, dry_run
    from augment.data.splits import split_index

    folder = _write_csv(tmp_path / "nih", 3000)
    assert not (folder / "images").exists()
    args = ["--config", str(REPO / "configs" / "cluster-gpu.yaml"), "--dry-run", "--data-entry", str(folder),
            "--set", "augment.target_count=300", "--set", "augment.max_per_finding=200",
            "--per-item-seconds-gpu", "0.5", "--gpu-workers", "4"]
    code = ("import sys, jobs.augment as a; rc = a.main(sys.argv[1:]); "
            "print('RAY_LOADED', 'ray' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "RAY_LOADED False" in out
    assert "DRY RUN" in out and "input quality filter is skipped" in out

    # the same plan computed here, line by line
    cfg = load_config(REPO / "configs" / "cluster-gpu.yaml", ["augment.target_count=300", "augment.max_per_finding=200"])
    d = dry_run(cfg, folder, gpu_seconds_per_item=0.5, gpu_workers=4)
    assert d.rows == 3000
    s = cfg.data.split
    from augment.synthesis.dry_run import read_table

    train = split_index(read_table(folder)[0], s.val_fraction, s.test_fraction, s.seed, s.use_official_lists).train
    counts = train.counts()
    total = 0
    for f in cfg.augment.findings:
        want = max(0, min(200, 300 - counts[f]))
        total += want
        assert d.findings[f] == (counts[f], want, min(cfg.augment.references_per_finding, counts[f]))
        line = next(ln for ln in out.splitlines() if ln.startswith(f + " "))
        assert line.split()[1:] == [str(counts[f]), str(want), str(d.findings[f][2])]
    assert total > 0 and d.items == total
    assert f"expected items: {total} " in out
    assert f"{total} x {CPU_SECONDS_PER_ITEM:.3f} s" in out and "measured" in out
    assert f"{total} x 0.500 s / 4 worker(s)" in out and "not measured here" in out
    assert d.gpu_hours == pytest.approx(total * 0.5 / 4 / 3600)


def test_dry_run_bad_input_and_the_old_command_line(tmp_path):
    from jobs.augment import main

    assert main(["--dry-run", "--set", "data.source=nih", "--set", f"data.root={tmp_path / 'none'}"]) == 2
    folder = _write_csv(tmp_path / "nih", 200)
    assert main(["--dry-run", "--data-entry", str(folder), "--gpu-workers", "0"]) == 2
    assert main(["--dry-run", "--data-entry", str(folder), "--per-item-seconds", "-1"]) == 2
    with pytest.raises(SystemExit) as exc:  # without --dry-run the checkpoints are still required
        main(["--generator", "g.pt"])
    assert exc.value.code == 2
