"""Baselines by kind: build, save and load them (``{state_dict, config, version, kind, findings, extra}``).

``config`` = ``{"baseline": BaselineConfig, "crop_size", "context"}``. The kinds' classes live in
their own modules (:mod:`~augment.baselines.lsgan`, :mod:`~augment.baselines.vae`), which import
only :mod:`~augment.baselines.base`; this registry imports them, so nothing runs in a circle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from augment.baselines.base import BASELINE_CHECKPOINT_VERSION, BASELINE_KINDS, BaselineGenerator
from augment.baselines.lsgan import LSGAN
from augment.baselines.vae import GMVAE, ConditionalVAE
from augment.checkpoint import check_format, read_checkpoint, weights_of
from augment.config import BaselineConfig
from augment.data.io import atomic_torch_save
from augment.findings import FINDINGS

__all__ = ["BASELINE_KINDS", "BASELINE_CLASSES", "build_baseline", "save_baseline", "baseline_from_payload", "load_baseline"]

BASELINE_CLASSES: dict[str, type[BaselineGenerator]] = {"lsgan": LSGAN, "vae": ConditionalVAE, "gmvae": GMVAE}


def build_baseline(kind: str, cfg: BaselineConfig, crop_size: int, context: float = 0.5) -> BaselineGenerator:
    """A freshly initialised baseline of ``kind`` (``"lsgan"``, ``"vae"``, ``"gmvae"``).

    Raises:
        ValueError: unknown kind, unusable crop size.
    """
    if kind not in BASELINE_CLASSES:
        raise ValueError(f"unknown baseline kind {kind!r}; use one of {list(BASELINE_KINDS)}")
    return BASELINE_CLASSES[kind](cfg, crop_size, context)


def save_baseline(path: str | os.PathLike, model: BaselineGenerator, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write ``{state_dict, config, version, kind, findings, extra}``; folders are created."""
    if not isinstance(model, BaselineGenerator):
        raise TypeError(f"save_baseline needs a BaselineGenerator, got {type(model).__name__}")
    payload: dict[str, Any] = {
        "state_dict": weights_of(model),
        "config": model.checkpoint_config(),
        "version": BASELINE_CHECKPOINT_VERSION,
        "kind": model.kind,
        "findings": list(FINDINGS),
        "extra": extra or {},
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(payload, p)


def baseline_from_payload(payload: dict[str, Any], source: str | os.PathLike = "<checkpoint>") -> BaselineGenerator:
    """Rebuild a baseline from a loaded checkpoint dict, in eval mode on CPU.

    Raises:
        ValueError: not a baseline checkpoint, another version, other findings.
    """
    if not isinstance(payload, dict) or not {"state_dict", "config", "version", "kind"} <= payload.keys():
        raise ValueError(f"{source} is not a baseline checkpoint: expected keys state_dict, config, version, kind")
    kind = payload["kind"]
    if kind not in BASELINE_KINDS:
        raise ValueError(f"{source} has kind {kind!r}; baseline kinds are {list(BASELINE_KINDS)}")
    check_format(payload, source, kind, BASELINE_CHECKPOINT_VERSION,
                 f"retrain with python -m jobs.train_generator --generator {kind}", FINDINGS)
    c = payload["config"]
    model = build_baseline(kind, BaselineConfig.model_validate(c["baseline"]), int(c["crop_size"]), float(c.get("context", 0.5)))
    model.load_state_dict({k: v.cpu() for k, v in payload["state_dict"].items()})
    return model.eval()


def load_baseline(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> BaselineGenerator:
    """Read a baseline checkpoint written by :func:`save_baseline`, in eval mode on ``map_location``.

    Raises:
        ValueError: missing or unreadable file, not a baseline checkpoint.
    """
    p = Path(path)
    payload = read_checkpoint(p, "baseline checkpoint", required=("state_dict", "config", "version", "kind"),
                              hint="train one with python -m jobs.train_generator --generator vae")
    return baseline_from_payload(payload, p).to(map_location).eval()
