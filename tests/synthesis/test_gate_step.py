"""GateStep with the near-copy bank's index: it maps the index and reads no training image."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from augment.config import load_config
from shared_paths import REPO


@pytest.fixture
def gate_setup(make_nih_folder, tmp_path):
    from augment.classifier import build_classifier
    from augment.classifier.checkpoint import save_checkpoint
    from augment.data.io import read_image
    from augment.data.nih import load_index
    from augment.quality.bank_index import BankIndexSpec, build_bank_index

    rows = [(f"{k // 2:08d}_{k % 2:03d}.png", "No Finding", k // 2 + 1) for k in range(12)]
    root = make_nih_folder(rows, size=32)
    cfg = load_config(REPO / "configs" / "local.yaml", [
        f"output_dir={tmp_path}/runs", f"data.root={root}", "data.source=nih", "data.image_size=32",
        "classifier.arch=efficientnet-b0", "classifier.image_size=32", "quality.bank_image_size=16",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    ])
    torch.manual_seed(0)
    clf = save_checkpoint(tmp_path / "classifier.pt", build_classifier(cfg.classifier, load_pretrained=False), cfg.classifier)
    index = load_index(root)
    images = {r.image_index: read_image(index.path(r), 32) for r in index.records}
    spec = BankIndexSpec.from_config(cfg, epochs=20)
    build_bank_index(index, tmp_path / "bank", spec, progress=False)
    return cfg, str(clf), tmp_path / "bank", root, images, [r[0] for r in rows]


def test_gate_step_reads_no_training_image_and_flags_a_planted_copy(gate_setup, monkeypatch):
    import augment.synthesis.steps as steps
    import augment.data.io as io
    import augment.quality.bank_index as bank_index
    from augment.synthesis.steps import GateStep

    cfg, clf, bank, root, images, ids = gate_setup
    shutil.rmtree(root / "images")  # the training images are gone: the gate must not need them

    def no_reads(*a, **k):
        raise AssertionError("a gate actor read a training image")

    for mod in (io, steps, bank_index):
        monkeypatch.setattr(mod, "read_image", no_reads)
    monkeypatch.setattr(io, "read_batch", no_reads)
    step = GateStep(cfg, clf, bank)
    assert step.bank is not None and len(step.bank) == 12 and step.bank.feature_space == "autoencoder"

    yy, xx = np.mgrid[0:32, 0:32] / 32
    new = (0.5 + 0.3 * np.sin(12 * xx) * np.cos(9 * yy)).astype(np.float32)
    src = images[ids[0]]
    batch = {
        "item_id": np.array(["a", "b"]), "finding": np.array(["Nodule", "Nodule"]),
        "source": np.array([ids[0], ids[0]]), "status": np.array(["", ""], dtype=object),
        "image": np.stack([src, src]), "synthetic": np.stack([images[ids[6]], new]),
        "mask": np.ones((2, 32, 32), np.uint8),
    }
    out = step(batch)
    assert "pixel_near_copy" in out["reason"][0] and "embedding_near_copy" in out["reason"][0]
    assert not out["accepted"][0]
    assert "near_copy" not in out["reason"][1]


def test_gate_step_without_an_index_skips_the_near_copy_check(gate_setup):
    from augment.synthesis.steps import GateStep

    cfg, clf, *_ = gate_setup
    assert GateStep(cfg, clf, None).bank is None
    with pytest.raises(ValueError, match="not a near-copy bank index"):
        GateStep(cfg, clf, cfg.output_dir)
