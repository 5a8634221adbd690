"""Carry a reference's real lesion onto a healthy image: its position by the field, its shape kept.

Demons carries the reference's finding region well in *where* it lands, but stretches its
shape with the field (carried masses came out with a median axis ratio of 1.48 against 1.24
on their references, and 0.5-1.3x their area): the warped lesion looks like a smear. Here
the field only says where the lesion goes (the centroid of the carried region); the
lesion itself is moved there rigidly, by a translation, keeping its outline and texture.

The lesion is the reference's own contrast: the reference minus the reference with its
finding region filled from its surroundings
(:func:`~augment.registration.transfer.fill_region`), so pasting it adds the finding to the
healthy image's own anatomy instead of bringing the reference's background along. The
region to repaint is the moved lesion grown by ``margin`` pixels, inside the body: the
generator then draws the lesion's boundary itself.

:func:`carry_lesion` gives the base image the flow starts from under the lesion coupling
(``inpainting.coupling: lesion``) and, as it stands, the copy-paste positive control of the
gate benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from augment.registration.transfer import RegionTransfer, fill_region

__all__ = ["CarriedLesion", "carry_lesion", "lesion_contrast"]


@dataclass(frozen=True)
class CarriedLesion:
    """The lesion moved onto each healthy image.

    Attributes:
        base: (B, 1, H, W) in [0, 1], the healthy image with the lesion added inside ``region``.
        lesion: (B, 1, H, W) bool, the moved lesion's own mask.
        region: (B, 1, H, W) bool, the lesion grown by the margin, inside the body.
        shift: (B, 2) float (rows, cols) the lesion was moved by.
    """

    base: torch.Tensor
    lesion: torch.Tensor
    region: torch.Tensor
    shift: torch.Tensor


def lesion_contrast(reference: torch.Tensor, lesion: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): the reference minus its lesion-filled self (zero away from the lesion)."""
    return reference.float() - fill_region(reference.float(), lesion)


def _centroids(m: torch.Tensor) -> torch.Tensor:
    """(B, 2) (row, col) centroids of masks (B, 1, H, W); NaN for empty masks."""
    b, _, h, w = m.shape
    mf = m.float().reshape(b, h, w)
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    n = mf.sum((1, 2))
    r = (mf * rows).sum((1, 2)) / n
    c = (mf * cols).sum((1, 2)) / n
    return torch.stack([r, c], 1)


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move each image by ``shift`` (rows, cols) pixels; bilinear, zeros where nothing comes in."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * shift[:, 1] / w  # grid x (cols), align_corners=False
    theta[:, 1, 2] = -2.0 * shift[:, 0] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def carry_lesion(
    healthy: torch.Tensor,
    reference: torch.Tensor,
    reference_map: torch.Tensor,
    transfer: RegionTransfer,
    threshold: float = 0.5,
    margin: int = 4,
) -> CarriedLesion:
    """Move each reference's lesion to where the field carried its region, keeping its shape.

    Args:
        healthy: (B, 1, H, W) in [0, 1].
        reference: (B, 1, H, W) in [0, 1], the (unwarped) references.
        reference_map: (B, 1, H, W) their finding maps (``>= threshold`` is the lesion).
        transfer: :func:`~augment.registration.transfer.transfer_region` of the same pairs:
            its ``mask`` (else its ``map``) gives the lesion's new position, its ``body`` the
            area the region must stay in.
        threshold: the map's cut.
        margin: pixels the region extends beyond the moved lesion.

    Returns:
        :class:`CarriedLesion`; an item whose carried region is empty (the field lost it)
        gets an empty lesion and region.
    """
    lesion_ref = reference_map >= threshold
    contrast = lesion_contrast(reference, lesion_ref)
    src = _centroids(lesion_ref)
    has = transfer.mask.flatten(1).any(1).view(-1, 1, 1, 1)
    carried = torch.where(has, transfer.mask, transfer.map >= threshold)
    dst = _centroids(carried)
    shift = torch.nan_to_num(dst - src, nan=0.0)
    ok = torch.isfinite(dst).all(1) & torch.isfinite(src).all(1)
    moved = _translate(contrast, shift)
    lesion = (_translate(lesion_ref.float(), shift) >= 0.5) & transfer.body & ok.view(-1, 1, 1, 1)
    grow = 2 + margin  # fill_region grows the lesion by 2 px: its rim's contrast lies there
    region = F.max_pool2d(lesion.float(), 2 * grow + 1, stride=1, padding=grow) > 0.5
    region = region & transfer.body
    base = torch.where(region, (healthy.float() + moved).clamp(0.0, 1.0), healthy.float())
    return CarriedLesion(base=base, lesion=lesion, region=region, shift=shift)
