"""Classifier checkpoints: ``{kind, state_dict, config, version, findings}`` on disk and in MLflow.

A checkpoint is a ``torch.save`` file holding the weights, the :class:`ClassifierConfig`
that rebuilds the network, and the format version (plus the finding names and the
package version, checked on load). Services and later stages load a local path or an
MLflow URI (``runs:/<run id>/model``, ``models:/<name>/<version>``, ...) with
:func:`load_classifier`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from torch import nn

from augment import __version__
from augment.checkpoint import CheckpointError, check_format, read_checkpoint, unwrap, weights_of
from augment.classifier.model import Classifier, build_classifier
from augment.data.io import atomic_torch_save
from augment.config import ClassifierConfig
from augment.findings import FINDINGS

__all__ = ["CHECKPOINT_VERSION", "CHECKPOINT_NAME", "CheckpointError", "unwrap", "save_checkpoint", "load_checkpoint", "load_classifier"]

CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "classifier.pt"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: ClassifierConfig, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write ``{state_dict, config, version, ...}`` (temp file in the same folder, then rename).

    Args:
        path: the target file (``classifier.pt`` by convention); folders are created.
        model: the classifier, possibly wrapped by DDP; weights are saved on the CPU.
        cfg: the config that rebuilds it.
        extra: more JSON-like entries (metrics, epoch), stored under ``"extra"``.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "kind": "classifier",
        "state_dict": weights_of(model),
        "config": cfg.model_dump(mode="json"),
        "version": CHECKPOINT_VERSION,
        "findings": list(FINDINGS),
        "augment_version": __version__,
        "extra": extra or {},
    }
    return atomic_torch_save(payload, p)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint file; returns its dict with ``config`` as a :class:`ClassifierConfig`."""
    p = Path(path)
    ckpt = read_checkpoint(p, "classifier checkpoint", map_location=map_location,
                           hint="train one with `python -m jobs.train_classifier`")
    check_format(ckpt, p, "classifier", CHECKPOINT_VERSION, "retrain with `python -m jobs.train_classifier`", FINDINGS)
    ckpt = dict(ckpt)
    ckpt["config"] = ClassifierConfig.model_validate(ckpt["config"])
    return ckpt


def _resolve(path_or_uri: str | os.PathLike, tracking_uri: str | None) -> Path:
    from augment.tracking import local_checkpoint

    try:
        return local_checkpoint(path_or_uri, (CHECKPOINT_NAME,), tracking_uri)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def load_classifier(
    path_or_uri: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    tracking_uri: str | None = None,
) -> Classifier:
    """Rebuild a classifier from a checkpoint file, a folder holding one, or an MLflow URI.

    The model comes back in ``eval()`` mode. ``pretrained: imagenet`` configs do not need
    the ImageNet file here: the weights come from the checkpoint.
    """
    ckpt = load_checkpoint(_resolve(path_or_uri, tracking_uri), map_location=map_location)
    model = build_classifier(ckpt["config"], load_pretrained=False)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path_or_uri}: weights do not fit {ckpt['config'].arch}: {exc}") from None
    return model.to(map_location).eval()
