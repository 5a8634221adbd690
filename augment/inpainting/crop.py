"""Crops around the mask, so that the cost grows with the lesion and not with the image.

Each image of a batch gets one square box around its mask's bounding box: the box side is
the mask's larger side times ``1 + 2 * context``, at least ``crop_size`` pixels (so a small
lesion is inpainted at the image's own resolution, never upsampled) and at most the image.
Every box is resampled to ``crop_size`` (one batch for the network, whatever the boxes'
sizes), inpainted, resampled back and pasted into the masked pixels only. The crop's
position in the full image is passed to the network as two coordinate maps.

On a 256x256 image a 20-pixel nodule costs one 64x64 pass per step instead of a 256x256
pass (16x fewer pixels); on a 1024x1024 image, 256x fewer. Masks wider than ``crop_size /
(1 + 2 context)`` pixels are downsampled and lose detail when pasted back.

``region="full"`` skips cropping: the whole image at its own size (the comparison point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["CropBox", "mask_boxes", "full_boxes", "crop", "crop_mask", "coord_maps", "paste"]


@dataclass(frozen=True)
class CropBox:
    """A square box in full-image pixels: rows ``top:top+size``, columns ``left:left+size``."""

    top: int
    left: int
    size: int


def _check_mask(mask: torch.Tensor) -> None:
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape (B, 1, H, W), got {tuple(mask.shape)}")


def mask_boxes(
    mask: torch.Tensor,
    crop_size: int,
    context: float = 0.5,
    jitter: torch.Tensor | None = None,
) -> list[CropBox]:
    """One square box per image around its mask.

    Args:
        mask: (B, 1, H, W); nonzero = repaint. An empty mask gets the whole image's
            largest centred square.
        crop_size: the model's resolution; boxes are at least this large (or the image).
        context: margin on each side, as a fraction of the mask's larger side.
        jitter: optional (B, 3) values in [0, 1] (training): a random extra margin (up to
            doubling the box) and a random shift that keeps the mask inside the box.

    Returns:
        B boxes inside the image.
    """
    _check_mask(mask)
    b, _, h, w = mask.shape
    limit = min(h, w)
    boxes: list[CropBox] = []
    any_rows = (mask > 0.5).any(dim=3)[:, 0]  # (B, H)
    any_cols = (mask > 0.5).any(dim=2)[:, 0]  # (B, W)
    for i in range(b):
        rows = torch.nonzero(any_rows[i]).flatten()
        cols = torch.nonzero(any_cols[i]).flatten()
        if rows.numel() == 0:
            boxes.append(CropBox((h - limit) // 2, (w - limit) // 2, limit))
            continue
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
        x0, x1 = int(cols[0]), int(cols[-1]) + 1
        extent = max(y1 - y0, x1 - x0)
        side = extent * (1.0 + 2.0 * context)
        if jitter is not None:
            side *= 1.0 + float(jitter[i, 0])
        side = int(min(limit, max(crop_size, round(side))))
        side = max(side, min(limit, extent))
        if jitter is not None:
            slack_y, slack_x = side - (y1 - y0), side - (x1 - x0)
            top = y0 - int(round(float(jitter[i, 1]) * max(slack_y, 0)))
            left = x0 - int(round(float(jitter[i, 2]) * max(slack_x, 0)))
        else:
            top = (y0 + y1) // 2 - side // 2
            left = (x0 + x1) // 2 - side // 2
        top = min(max(top, 0), h - side)
        left = min(max(left, 0), w - side)
        boxes.append(CropBox(top, left, side))
    return boxes


def full_boxes(shape: torch.Size | tuple[int, ...]) -> list[CropBox]:
    """Boxes covering each whole (square) image: ``region="full"``."""
    b, _, h, w = shape
    if h != w:
        raise ValueError(f'region="full" needs square images, got {h}x{w}; use region="crop"')
    return [CropBox(0, 0, h)] * b


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def crop(x: torch.Tensor, boxes: list[CropBox], size: int) -> torch.Tensor:
    """Cut each box out of ``x`` (B, C, H, W) and resample it to (B, C, size, size) (bilinear, antialiased)."""
    if len(boxes) != x.shape[0]:
        raise ValueError(f"got {len(boxes)} boxes for a batch of {x.shape[0]}")
    return torch.cat([_resize(x[i : i + 1, :, b.top : b.top + b.size, b.left : b.left + b.size], size) for i, b in enumerate(boxes)])


def crop_mask(mask: torch.Tensor, boxes: list[CropBox], size: int) -> torch.Tensor:
    """Crop binary masks to (B, 1, size, size) in {0, 1}.

    A crop pixel is masked when any full-resolution pixel under it is (area pooling > 0).
    When the box is resampled, the mask is also dilated by the reach of the resampling
    kernel used by :func:`paste`, so every masked full-resolution pixel is interpolated
    from generated crop pixels only (no blend with known values at the mask's edge).
    """
    out = []
    for i, b in enumerate(boxes):
        m = (mask[i : i + 1, :, b.top : b.top + b.size, b.left : b.left + b.size] > 0.5).float()
        if b.size != size:
            if b.size > size:
                m = (F.adaptive_avg_pool2d(m, size) > 1e-6).float()
                r = 1
            else:
                m = F.interpolate(m, size=(size, size), mode="nearest")
                r = 1 + math.ceil(size / b.size)
            m = F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)
        out.append(m)
    return torch.cat(out)


def coord_maps(boxes: list[CropBox], height: int, width: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 2, size, size) position of each crop pixel's centre in the full image, (y, x) in [-1, 1]."""
    maps = []
    ar = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size
    for b in boxes:
        ys = (b.top + ar * b.size) / height * 2.0 - 1.0
        xs = (b.left + ar * b.size) / width * 2.0 - 1.0
        maps.append(torch.stack([ys[:, None].expand(size, size), xs[None, :].expand(size, size)]))
    return torch.stack(maps)


def paste(
    image: torch.Tensor,
    patch: torch.Tensor,
    boxes: list[CropBox],
    mask: torch.Tensor,
    detail: torch.Tensor | None = None,
) -> torch.Tensor:
    """Put generated crops back into the masked pixels of ``image``.

    Args:
        image: (B, 1, H, W) the original images.
        patch: (B, 1, S, S) generated crops, same value range as ``image``.
        boxes: where each crop came from.
        mask: (B, 1, H, W); only pixels with ``mask > 0.5`` change.
        detail: (B, 1, H, W) or None. Where a box is larger than the crop (the model painted
            it downsampled), the pasted values are ``detail`` plus the upsampled change the
            model made to ``detail``'s downsampled crop: the model's picture at its own
            resolution, with ``detail``'s finer structure the crop could not hold (a carried
            lesion's thin rim). Boxes no larger than the crop ignore it.

    Returns:
        (B, 1, H, W) in the range of the inputs (clamped to [0, 1] where ``detail`` was added);
        bit-identical to ``image`` outside the mask.
    """
    _check_mask(mask)
    if detail is not None and detail.shape != image.shape:
        raise ValueError(f"detail must have the image's shape {tuple(image.shape)}, got {tuple(detail.shape)}")
    full = image.clone()
    for i, b in enumerate(boxes):
        p = patch[i : i + 1].to(image.dtype)
        if b.size != p.shape[-1]:
            shrink = b.size < p.shape[-1]
            if detail is not None and not shrink:
                d = detail[i : i + 1, :, b.top : b.top + b.size, b.left : b.left + b.size].to(image.dtype)
                change = p - _resize(d, p.shape[-1])
                up = F.interpolate(change, size=(b.size, b.size), mode="bilinear", align_corners=False)
                p = (d + up).clamp(0.0, 1.0)
            else:
                p = F.interpolate(p, size=(b.size, b.size), mode="bilinear", antialias=shrink, align_corners=False)
        full[i : i + 1, :, b.top : b.top + b.size, b.left : b.left + b.size] = p
    return torch.where(mask > 0.5, full, image)
