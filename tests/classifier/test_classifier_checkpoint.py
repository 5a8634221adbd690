"""Checkpoint round trip and error messages; predict_proba."""

import pytest
import torch

from augment.classifier import CheckpointError, build_classifier, load_checkpoint, load_classifier, predict_proba, save_checkpoint
from augment.config import ClassifierConfig

torch.set_num_threads(1)


def _trained_ish_model():
    cfg = ClassifierConfig(arch="efficientnet-b0", image_size=32)
    torch.manual_seed(0)
    model = build_classifier(cfg)
    model.train()
    with torch.no_grad():  # move the batch-norm running statistics off their initial values
        model(torch.rand(8, 1, 32, 32))
    return model.eval(), cfg


def test_round_trip_gives_identical_outputs(tmp_path):
    model, cfg = _trained_ish_model()
    path = save_checkpoint(tmp_path / "sub" / "classifier.pt", model, cfg, extra={"epoch": 3})
    assert [p.name for p in path.parent.iterdir()] == ["classifier.pt"]  # no temp file left
    x = torch.rand(3, 1, 32, 32)
    loaded = load_classifier(path)
    assert not loaded.training
    assert torch.equal(predict_proba(model, x), predict_proba(loaded, x))
    assert torch.equal(load_classifier(tmp_path / "sub")(x), model(x))  # a folder holding it works too
    ckpt = load_checkpoint(path)
    assert ckpt["version"] == 1 and ckpt["config"] == cfg and ckpt["extra"] == {"epoch": 3}


def test_bad_checkpoints_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_classifier(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_classifier(tmp_path / "junk.pt")
    model, cfg = _trained_ish_model()
    path = save_checkpoint(tmp_path / "new.pt", model, cfg)
    ckpt = torch.load(path, weights_only=True)
    ckpt["version"] = 99
    torch.save(ckpt, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_classifier(tmp_path / "future.pt")


def test_predict_proba_checks_the_image_convention():
    model, _ = _trained_ish_model()
    p = predict_proba(model, torch.rand(5, 1, 32, 32), batch_size=2)
    assert p.shape == (5, 14) and p.min() >= 0 and p.max() <= 1
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        predict_proba(model, torch.rand(5, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predict_proba(model, torch.rand(2, 1, 32, 32) * 255)
