"""No checkpoint loader runs code: a crafted pickle is refused by every loader, unexecuted.

The crafted file is a dict with the keys each loader expects, one of whose values unpickles
by calling ``open(marker, "w")``. The positive control loads it with
``weights_only=False`` and sees the marker appear, so the payload really is an exploit; every
loader of the package must then refuse the same file with a clear error and leave no marker.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from augment.checkpoint import CheckpointError, read_checkpoint


class _Exploit:
    """Unpickles by creating ``marker``: stands for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _crafted(path: Path, marker: Path, **extra: object) -> Path:
    payload = {
        "state_dict": {"w": torch.zeros(2)},
        "config": _Exploit(marker),
        "version": 1,
        "kind": "flow",
        "model": {},
        "step": 0,
        "epoch": 0,
        **extra,
    }
    torch.save(payload, path)
    return path


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    return _crafted(tmp_path / "model.pt", marker), marker


def test_the_crafted_file_is_a_real_exploit(crafted: tuple[Path, Path]) -> None:
    path, marker = crafted
    torch.load(path, weights_only=False)  # what the old generator and baseline loaders did
    assert marker.exists()


def test_read_checkpoint_refuses_pickled_objects_unexecuted(crafted: tuple[Path, Path]) -> None:
    path, marker = crafted
    with pytest.raises(CheckpointError, match="refused without running"):
        read_checkpoint(path, "generator checkpoint")
    assert not marker.exists()


def _loaders():
    from augment.baselines.registry import load_baseline
    from augment.classifier.checkpoint import load_checkpoint as load_classifier_checkpoint
    from augment.classifier.checkpoint import load_classifier
    from augment.inpainting.model import load_checkpoint as load_generator_checkpoint
    from augment.inpainting.model import load_generator

    return {
        "classifier checkpoint": load_classifier_checkpoint,
        "classifier": load_classifier,
        "generator checkpoint": load_generator_checkpoint,
        "generator": load_generator,
        "baseline": load_baseline,
    }


@pytest.mark.parametrize("name", list(_loaders()))
def test_every_model_loader_refuses_a_crafted_checkpoint(name: str, crafted: tuple[Path, Path]) -> None:
    path, marker = crafted
    with pytest.raises(ValueError, match="refused without running"):
        _loaders()[name](path)
    assert not marker.exists(), f"{name} ran code from the checkpoint"


def test_baseline_kind_goes_through_the_safe_generator_loader(tmp_path: Path) -> None:
    from augment.inpainting.model import load_generator
    from augment.painter import load_painter
    from augment.quality.verifier import load_verifier

    marker = tmp_path / "pwned"
    path = _crafted(tmp_path / "g.pt", marker, kind="lsgan")
    for load in (load_generator, load_painter, load_verifier):
        with pytest.raises(ValueError, match="refused without running"):
            load(path)
    assert not marker.exists()


def test_one_format_check_for_every_kind() -> None:
    from augment.checkpoint import check_format
    from augment.findings import FINDINGS

    ok = {"kind": "classifier", "version": 2, "findings": list(FINDINGS)}
    assert check_format(ok, "c.pt", "classifier", 2, "retrain", FINDINGS) is ok
    assert check_format({"version": 2}, "old.pt", "flow", 2, "retrain")  # files from before the kind key
    with pytest.raises(CheckpointError, match="'verifier' checkpoint, not a classifier"):
        check_format({**ok, "kind": "verifier"}, "c.pt", "classifier", 2, "retrain")
    with pytest.raises(CheckpointError, match="format 3, newer than this code's 2; upgrade cxr-augment"):
        check_format({**ok, "version": 3}, "c.pt", "classifier", 2, "retrain")
    with pytest.raises(CheckpointError, match="format 1, older than this code's 2; retrain with x"):
        check_format({**ok, "version": 1}, "c.pt", "classifier", 2, "retrain with x")
    with pytest.raises(CheckpointError, match="other finding names"):
        check_format({**ok, "findings": ["Mass"]}, "c.pt", "classifier", 2, "retrain", FINDINGS)


def test_every_model_writes_its_kind(tmp_path: Path) -> None:
    from augment.baselines.registry import build_baseline, save_baseline
    from augment.classifier.checkpoint import save_checkpoint as save_classifier
    from augment.classifier.model import build_classifier
    from augment.config import BaselineConfig, ClassifierConfig, InpaintingConfig
    from augment.inpainting.model import build_model, save_checkpoint

    icfg = InpaintingConfig(crop_size=16, block_out_channels=[8, 16], layers_per_block=1, mid_attention=False)
    ccfg = ClassifierConfig(arch="efficientnet-b0", pretrained="none", image_size=32)
    written = {
        "flow": save_checkpoint(tmp_path / "f.pt", build_model(icfg), icfg),
        "classifier": save_classifier(tmp_path / "c.pt", build_classifier(ccfg, load_pretrained=False), ccfg),
        "vae": save_baseline(tmp_path / "v.pt", build_baseline("vae", BaselineConfig(latent_dim=4, base_channels=4), 16)),
    }
    for kind, path in written.items():
        payload = read_checkpoint(path, "checkpoint")
        assert payload["kind"] == kind and {"state_dict", "config", "version", "findings"} <= payload.keys()


@pytest.mark.parametrize("module", ["jobs.train_generator", "jobs.train_classifier"])
def test_training_state_resume_refuses_a_crafted_state(module: str, tmp_path: Path, monkeypatch) -> None:
    """The resume paths read Ray Train checkpoints and the out folder's state file safely."""
    import importlib

    import ray.train

    mod = importlib.import_module(module)
    marker = tmp_path / "pwned"
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    _crafted(ckpt_dir / mod.STATE_NAME, marker)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(ckpt_dir)))
    with pytest.raises(ValueError, match="refused without running"):
        if module == "jobs.train_generator":
            mod._load_state({"out_dir": str(tmp_path / "out"), "arch": "x"})
        else:
            mod._resume_state()
    assert not marker.exists()


def test_a_flow_checkpoint_from_before_the_one_device_rule_still_loads(tmp_path: Path) -> None:
    """Checkpoints written before resources.use_gpu became the one device key carry inpainting.device."""
    from augment.config import InpaintingConfig
    from augment.inpainting.model import build_model, save_checkpoint
    from augment.painter import load_painter

    cfg = InpaintingConfig(crop_size=16, block_out_channels=[8, 16], layers_per_block=1, mid_attention=False)
    path = save_checkpoint(tmp_path / "g.pt", build_model(cfg), cfg)
    old = torch.load(path, weights_only=True)
    old["config"]["device"] = "auto"
    del old["kind"]
    torch.save(old, tmp_path / "old.pt")
    assert load_painter(tmp_path / "old.pt").model.cfg == cfg


def test_plain_checkpoints_still_load(tmp_path: Path) -> None:
    """The safe reader accepts what the package writes: tensors, numbers, strings, lists, dicts."""
    from augment.config import InpaintingConfig
    from augment.inpainting.model import build_model, load_generator, save_checkpoint

    cfg = InpaintingConfig(crop_size=16, block_out_channels=[8, 16], layers_per_block=1, mid_attention=False)
    model = build_model(cfg)
    path = save_checkpoint(tmp_path / "g.pt", model, cfg, extra={"step": 3, "data": {"images": 5}})
    loaded = load_generator(path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_not_found_and_corrupt_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found; train one"):
        read_checkpoint(tmp_path / "missing.pt", "generator checkpoint", hint="train one with x")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable generator checkpoint"):
        read_checkpoint(bad, "generator checkpoint")
    plain = tmp_path / "plain.pt"
    buf = io.BytesIO()
    torch.save([1, 2], buf)
    plain.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="expected keys state_dict, config, version"):
        read_checkpoint(plain, "generator checkpoint")
