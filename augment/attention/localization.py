"""How well attention maps find a known lesion: mask IoU and the pointing game."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mask_iou", "pointing_hits"]


def mask_iou(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Intersection over union per image of two (B, 1, H, W) masks (bool or {0, 1}).

    Returns:
        (B,) float; NaN where both masks are empty (undefined, not a perfect score).
    """
    if pred.shape != true.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and true {tuple(true.shape)} must have the same shape")
    p = pred.flatten(1).bool()
    t = true.flatten(1).bool()
    inter = (p & t).sum(1).float()
    union = (p | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))


def pointing_hits(maps: torch.Tensor, true: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Pointing game (Zhang et al. 2016): does each map's maximum fall on the true region?

    Args:
        maps: (B, 1, H, W) attention maps.
        true: (B, 1, H, W) true masks (e.g. NIH boxes).
        tolerance: pixels the true region is grown by (the original uses 15 px at 224).

    Returns:
        (B,) bool; an all-zero map (no evidence) is a miss.
    """
    if maps.shape != true.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and true {tuple(true.shape)} must have the same shape")
    t = true.float()
    if tolerance > 0:
        t = F.max_pool2d(t, kernel_size=2 * tolerance + 1, stride=1, padding=tolerance)
    flat = maps.flatten(1)
    arg = flat.argmax(dim=1)
    hit = t.flatten(1).gather(1, arg[:, None])[:, 0] > 0
    return hit & (flat.amax(dim=1) > 0)
