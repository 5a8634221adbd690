"""Grad-CAM maps from a torchxrayvision DenseNet, when its weights file is on local disk.

torchxrayvision looks its weights up at ``~/.torchxrayvision/models_data/<file>`` (or
``cache_dir``) and downloads them when absent. This source never downloads: it checks the
file first and otherwise raises :class:`XRVWeightsMissing` saying where to put it. Images
are converted at this edge from [0, 1] to torchxrayvision's [-1024, 1024] at 224x224.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from augment.attention.base import AttentionSource, normalize_maps
from augment.attention.gradcam import Variant, cam_from_gradients
from augment.findings import ALIASES

__all__ = ["XRVSource", "XRVWeightsMissing", "xrv_weights_file"]


class XRVWeightsMissing(FileNotFoundError):
    """The torchxrayvision weights file is not on local disk; the message says where to put it."""


def import_xrv() -> Any:
    """The torchxrayvision module, imported without letting it silence warnings globally."""
    # torchxrayvision silences all warnings globally on import; keep our filters.
    with warnings.catch_warnings():
        import torchxrayvision as xrv
    return xrv


def xrv_weights_file(weights: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local path torchxrayvision reads ``weights`` from (whether or not it exists)."""
    xrv = import_xrv()
    if weights not in xrv.models.model_urls:
        names = sorted(k for k in xrv.models.model_urls if k.startswith("densenet"))
        raise ValueError(f"unknown torchxrayvision weights {weights!r}; DenseNet weights are {names}")
    name = os.path.basename(xrv.models.model_urls[weights]["weights_url"])
    folder = Path(cache_dir).expanduser() if cache_dir else Path(xrv.utils.get_cache_dir())
    return folder / name


class XRVSource(AttentionSource):
    """Grad-CAM on the last dense block (``features.norm5``) of a torchxrayvision DenseNet.

    Args:
        weights: a torchxrayvision DenseNet weights name, e.g. ``"densenet121-res224-nih"``.
        cache_dir: folder holding the weights file (default ``~/.torchxrayvision/models_data``).
        variant: ``"gradcam"`` or ``"gradcam++"``.
        model: an already built torchxrayvision DenseNet (then ``weights`` is not read).
        batch_size: images per backward pass.

    Raises:
        XRVWeightsMissing: the weights file is not there (nothing is downloaded).
    """

    name = "xrv"

    def __init__(
        self,
        weights: str = "densenet121-res224-nih",
        cache_dir: str | os.PathLike | None = None,
        variant: Variant = "gradcam",
        model: nn.Module | None = None,
        batch_size: int = 8,
    ) -> None:
        xrv = import_xrv()
        if model is None:
            path = xrv_weights_file(weights, cache_dir)
            if not path.is_file():
                url = xrv.models.model_urls[weights]["weights_url"]
                raise XRVWeightsMissing(
                    f"torchxrayvision weights {weights!r} not found at {path}; nothing is downloaded. "
                    f"On a machine with internet fetch {url}, copy it to {path} (or set "
                    "attention.xrv_cache_dir to its folder), or use attention.source: gradcam"
                )
            with warnings.catch_warnings():
                model = xrv.models.DenseNet(weights=weights, cache_dir=str(path.parent))
        if not hasattr(model, "features") or not hasattr(model, "classifier"):
            raise TypeError(f"expected a torchxrayvision DenseNet (features + classifier), got {type(model).__name__}")
        self.model = model.eval()
        self.targets = list(getattr(model, "targets", None) or xrv.datasets.default_pathologies)
        self.resolution = int(getattr(model, "input_resolution", 224))
        self.variant = variant
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"XRVSource({self.model!r}, variant={self.variant!r})"

    def _maps(self, image: torch.Tensor, finding: str, image_ids: list[str] | None) -> torch.Tensor:
        finding = ALIASES.get(finding, finding)
        if finding not in self.targets:
            raise ValueError(f"this torchxrayvision model does not predict {finding!r}; it predicts {[t for t in self.targets if t]}")
        idx = self.targets.index(finding)
        device = next(self.model.parameters()).device
        h, w = image.shape[-2:]
        r = self.resolution
        out = []
        for start in range(0, image.shape[0], self.batch_size):
            x = image[start : start + self.batch_size].to(device, torch.float32)
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
            x = (x * 2.0 - 1.0) * 1024.0  # torchxrayvision's input range
            with torch.enable_grad():
                x.requires_grad_(True)
                feats = self.model.features(x)
                pooled = F.adaptive_avg_pool2d(F.relu(feats), 1).flatten(1)
                logits = self.model.classifier(pooled)
                grads = torch.autograd.grad(logits[:, idx].sum(), feats)[0]
            cam = cam_from_gradients(feats.detach(), grads, self.variant)
            out.append(normalize_maps(F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)))
        return torch.cat(out).to(image.device)
