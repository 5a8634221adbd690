"""Grad-CAM and Grad-CAM++ finding maps from the classifier's last convolutional block.

Grad-CAM (Selvaraju et al. 2017) weights each feature channel A_k of a convolutional layer by
the spatial mean of d(logit)/dA_k and keeps the positive part of the weighted sum;
Grad-CAM++ (Chattopadhay et al. 2018) weights the positive gradients per location, which
separates several instances of a finding better. Maps are upsampled to the image and
scaled by their maximum, so 1 is the strongest evidence in that image and an image without
positive evidence gets an all-zero map.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from augment.attention.base import AttentionSource, normalize_maps
from augment.findings import finding_index

__all__ = ["GradCAMSource", "cam_from_gradients", "FeatureModel"]

Variant = Literal["gradcam", "gradcam++"]


class FeatureModel(Protocol):
    """A classifier that returns its logits together with a convolutional feature map."""

    image_size: int

    def forward_features(self, x: torch.Tensor, layer: str = "head") -> tuple[torch.Tensor, torch.Tensor]: ...


def cam_from_gradients(activations: torch.Tensor, gradients: torch.Tensor, variant: Variant = "gradcam") -> torch.Tensor:
    """Class activation map from a layer's activations and the score's gradients.

    Args:
        activations: (B, C, h, w) feature map A.
        gradients: (B, C, h, w) d(score)/dA.
        variant: ``"gradcam"`` (channel weights = mean gradient) or ``"gradcam++"``.

    Returns:
        (B, 1, h, w) non-negative maps (not yet normalised).
    """
    if activations.shape != gradients.shape or activations.ndim != 4:
        raise ValueError(f"activations {tuple(activations.shape)} and gradients {tuple(gradients.shape)} must be equal 4-D shapes")
    if variant == "gradcam":
        weights = gradients.mean(dim=(2, 3), keepdim=True)
    elif variant == "gradcam++":
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        sum_a = activations.sum(dim=(2, 3), keepdim=True)
        denom = 2.0 * g2 + sum_a * g3
        alpha = torch.where(gradients != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g2))
        weights = (alpha * F.relu(gradients)).sum(dim=(2, 3), keepdim=True)
    else:
        raise ValueError(f"variant must be 'gradcam' or 'gradcam++', got {variant!r}")
    return F.relu((weights * activations).sum(dim=1, keepdim=True))


class GradCAMSource(AttentionSource):
    """Grad-CAM maps of a :class:`~augment.classifier.model.Classifier`.

    Args:
        model: a classifier with ``forward_features`` (the EfficientNet classifier).
        variant: ``"gradcam"`` or ``"gradcam++"``.
        layer: ``"head"``, the last convolutional block (stride 32: a 4x4 grid at 128 px), or
            ``"stride16"``, the last block before it (twice the resolution).
        batch_size: images per backward pass.

    Images are resized to the classifier's ``image_size`` for the forward pass and the map
    is upsampled back to the input's size. The model is used in eval mode; its parameter
    gradients are never touched.
    """

    name = "gradcam"

    def __init__(self, model: nn.Module, variant: Variant = "gradcam", layer: str = "head", batch_size: int = 16) -> None:
        if not hasattr(model, "forward_features"):
            raise TypeError(
                f"Grad-CAM needs a classifier with forward_features(x, layer) -> (logits, features); "
                f"got {type(model).__name__}; load one with augment.classifier.load_classifier"
            )
        if variant not in ("gradcam", "gradcam++"):
            raise ValueError(f"variant must be 'gradcam' or 'gradcam++', got {variant!r}")
        if layer not in ("head", "stride16"):
            raise ValueError(f"layer must be 'head' or 'stride16', got {layer!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.variant = variant
        self.layer = layer
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"GradCAMSource(variant={self.variant!r}, layer={self.layer!r})"

    def _maps(self, image: torch.Tensor, finding: str, image_ids: list[str] | None) -> torch.Tensor:
        idx = finding_index(finding)
        model = self.model
        device = next(model.parameters()).device
        size = int(getattr(model, "image_size", image.shape[-1]))
        h, w = image.shape[-2:]
        was_training = model.training
        model.eval()
        out = []
        try:
            for start in range(0, image.shape[0], self.batch_size):
                x = image[start : start + self.batch_size].to(device, torch.float32)
                if (h, w) != (size, size):
                    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                with torch.enable_grad():
                    x.requires_grad_(True)  # so the features need a gradient even for a frozen model
                    logits, feats = model.forward_features(x, self.layer)
                    grads = torch.autograd.grad(logits[:, idx].sum(), feats)[0]
                cam = cam_from_gradients(feats.detach().float(), grads.float(), self.variant)
                cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
                out.append(normalize_maps(F.relu(cam)))
        finally:
            model.train(was_training)
        return torch.cat(out).to(image.device)
