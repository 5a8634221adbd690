"""Carry a finding's region from a diseased reference onto a healthy radiograph.

``transfer_region(healthy, reference, reference_map, cfg)`` registers the reference onto
the healthy image, pulls the reference's attention map through the same field
(bilinear), thresholds it at ``cfg.mask_threshold`` and keeps only the part inside the
healthy image's body mask (:func:`augment.registration.body.body_mask`), so the region to
repaint never falls outside the patient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from augment.config import RegistrationConfig
from augment.registration.body import body_mask
from augment.registration.checks import check_map, check_pair
from augment.registration.api import Registration, register, warp_map

__all__ = ["RegionTransfer", "transfer_region"]


@dataclass(frozen=True)
class RegionTransfer:
    """The region to repaint on each healthy image.

    Attributes:
        mask: (B, 1, H, W) bool, the warped map >= threshold, inside the body.
        map: (B, 1, H, W) float in [0, 1], the warped attention map, zero outside the body.
        body: (B, 1, H, W) bool body mask of the healthy images.
        outside_fraction: (B,) share of the thresholded warped map that fell outside the
            body and was removed (0 when the map was empty).
        registration: the :class:`~augment.registration.api.Registration` used.
    """

    mask: torch.Tensor
    map: torch.Tensor
    body: torch.Tensor
    outside_fraction: torch.Tensor
    registration: Registration


def transfer_region(
    healthy: torch.Tensor,
    reference: torch.Tensor,
    reference_map: torch.Tensor,
    cfg: RegistrationConfig | None = None,
    generator: torch.Generator | None = None,
) -> RegionTransfer:
    """Register ``reference`` onto ``healthy`` and carry ``reference_map`` along.

    Args:
        healthy: (B, 1, H, W) float in [0, 1], the images to paint a finding into.
        reference: (B, 1, H, W) float in [0, 1], diseased images showing the finding.
        reference_map: (B, 1, H, W) attention map of the finding on ``reference``, in
            [0, 1] (a boolean mask works too).
        cfg: registration settings; ``cfg.mask_threshold`` cuts the warped map.
        generator: passed to :func:`~augment.registration.api.register`.

    Returns:
        :class:`RegionTransfer`.

    Raises:
        TypeError, ValueError: bad images (see :func:`~augment.registration.api.register`)
            or a map whose shape is not (B, 1, H, W) of the images.
    """
    cfg = cfg or RegistrationConfig()
    healthy, reference = check_pair(healthy, reference)
    reference_map = check_map(reference_map, reference, "reference_map")
    reg = register(healthy, reference, cfg, generator=generator)
    warped = warp_map(reference_map, reg)
    body = body_mask(healthy)
    raw = warped >= cfg.mask_threshold
    mask = raw & body
    n_raw = raw.flatten(1).sum(dim=1).float()
    outside = (raw & ~body).flatten(1).sum(dim=1).float() / n_raw.clamp_min(1.0)  # 0 when the map is empty
    return RegionTransfer(mask=mask, map=warped * body, body=body, outside_fraction=outside, registration=reg)
