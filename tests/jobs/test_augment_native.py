"""The augmentation job writes its pool at the sources' resolution (issue 19): phantoms of
128 px, a working size of 64, tiny untrained models, the plain loop."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from augment.config import load_config
from augment.data import prepare_data
from shared_paths import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_job_pool_has_the_sources_size_and_equals_them_outside_the_mask(tmp_path):
    import torch

    from augment.classifier import build_classifier
    from augment.classifier.checkpoint import save_checkpoint as save_clf
    from augment.data.io import read_raw
    from augment.data.nih import DATA_ENTRY_HEADER
    from augment.inpainting import build_model
    from augment.inpainting import save_checkpoint as save_gen
    from jobs.augment import run_augment

    pool = tmp_path / "pool"
    cfg = load_config(REPO / "configs" / "local.yaml", [
        f"output_dir={tmp_path}/runs", "data.image_size=64", "data.phantom.n_images=40", "data.phantom.image_size=128",
        "classifier.arch=efficientnet-b0", "classifier.image_size=64", "inpainting.crop_size=32",
        "inpainting.block_out_channels=[16, 32]", "inpainting.steps=2", "augment.findings=[Cardiomegaly, Effusion]",
        "augment.target_count=40", "augment.max_per_finding=2", f"augment.output={pool}", "augment.batch_size=2",
        "registration.iterations=5", "registration.pyramid_levels=1", "quality.margin=0.0",
        "resources.torch_threads=1", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    ])
    torch.manual_seed(0)
    clf = save_clf(tmp_path / "classifier.pt", build_classifier(cfg.classifier, load_pretrained=False), cfg.classifier)
    gen = save_gen(tmp_path / "generator.pt", build_model(cfg.inpainting), cfg.inpainting)
    _, split = prepare_data(cfg)
    res = run_augment(cfg, split.train, str(clf), str(gen), generator_run="g", use_ray=False)
    assert res.processed == 4

    rows = list(csv.DictReader(open(pool / "provenance.csv")))
    yy, xx = np.mgrid[-4:5, -4:5]
    disc = yy**2 + xx**2 <= 16
    painted = 0
    for r in rows:
        folder = "images" if r["accepted"] == "True" else "rejected"
        img = read_raw(pool / folder / r["image"])
        src = read_raw(split.train.path(r["source"]))
        mask = read_raw(pool / "masks" / r["mask"]).pixels > 127
        assert src.pixels.shape == (128, 128)
        assert img.pixels.shape == mask.shape == (128, 128) and img.bits == src.bits == 8  # not the working 64
        assert (r["width"], r["height"], r["bits"], r["resolution"]) == ("128", "128", "8", "native")
        out = ~binary_dilation(mask, disc)
        assert np.array_equal(img.pixels[out], src.pixels[out])
        painted += int(mask.any() and not np.array_equal(img.pixels, src.pixels))
    assert painted >= 1  # at least one item really changed its source inside the mask
    accepted = {r["image"]: r for r in rows if r["accepted"] == "True"}
    entries = list(csv.DictReader(open(pool / "Data_Entry_2017.csv")))
    assert entries and {e["Image Index"] for e in entries} == set(accepted)  # margin 0: the seeded models accept
    recs = {r.image_index: r for r in split.train.records}
    for e in entries:
        src = recs[accepted[e["Image Index"]]["source"]]
        assert [e[c] for c in DATA_ENTRY_HEADER[7:]] == [str(src.width), str(src.height), str(src.spacing_x),
                                                          str(src.spacing_y)]
        assert e["OriginalImage[Width"] == "128"
