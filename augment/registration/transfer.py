"""Carry a finding's region from a diseased reference onto a healthy radiograph.

``transfer_region(healthy, reference, reference_map, cfg)`` registers the reference onto
the healthy image, pulls the reference's attention map through the same field
(bilinear), thresholds it at ``cfg.mask_threshold`` and keeps only the part inside the
healthy image's body mask (:func:`augment.registration.body.body_mask`), so the region to
repaint never falls outside the patient. With ``max_area`` the region is held to the same
size bounds as an attention mask (:func:`augment.attention.base.to_mask`: only the
strongest part of a diffuse map is kept), so a weak classifier's map spread over the
whole chest does not ask the inpainter to repaint most of the image.

Demons matches intensities, so it will happily *register the finding away*: a bright
effusion on the reference is squeezed until it looks like the healthy image's diaphragm,
and the map shrinks with it. With ``cfg.fill_lesion`` (the default) the reference's
finding region is first filled from its surroundings (:func:`fill_region`, normalised
Gaussian convolution; the "pathology filling" used to register diseased brains to atlases),
Demons aligns the anatomy only, and the same field then carries the *original* reference
and its map: ``registration.warped`` shows the finding where the mask now lies.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from augment.attention.base import to_mask
from augment.config import RegistrationConfig
from augment.registration.body import body_mask
from augment.registration.checks import check_map, check_pair
from augment.registration.api import Registration, register, warp_map
from augment.registration.smoothing import gaussian_blur

__all__ = ["RegionTransfer", "fill_region", "transfer_region"]


@dataclass(frozen=True)
class RegionTransfer:
    """The region to repaint on each healthy image.

    Attributes:
        mask: (B, 1, H, W) bool, the warped map >= threshold, inside the body (its strongest
            ``max_area`` when the transfer was bounded).
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


def fill_region(image: torch.Tensor, region: torch.Tensor, sigma: float | None = None, grow: int = 2) -> torch.Tensor:
    """Replace ``region`` of each image by a smooth fill from the pixels around it.

    Args:
        image: (B, 1, H, W) float.
        region: (B, 1, H, W) bool, or a map in [0, 1] (``>= 0.5`` is the region).
        sigma: Gaussian width of the fill, pixels (default 8% of the side, at least 3).
        grow: the region is dilated by this many pixels first (a finding's rim is part of it).

    Returns:
        (B, 1, H, W): ``image`` outside the (grown) region, the normalised convolution
        ``blur(image * keep) / blur(keep)`` inside it (the image mean where no known pixel is near).
    """
    m = (region >= 0.5) if region.dtype != torch.bool else region
    m = m.float()
    if grow > 0:
        m = F.max_pool2d(m, 2 * grow + 1, stride=1, padding=grow)
    if not bool(m.any()):
        return image
    sigma = sigma or max(3.0, 0.08 * max(image.shape[-2:]))
    keep = 1.0 - m
    num = gaussian_blur(image * keep, sigma)
    den = gaussian_blur(keep, sigma)
    mean = (image * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1.0)
    fill = torch.where(den > 1e-3, num / den.clamp_min(1e-3), mean.view(-1, 1, 1, 1).expand_as(image))
    return torch.where(m > 0, fill.clamp(0.0, 1.0), image)


def transfer_region(
    healthy: torch.Tensor,
    reference: torch.Tensor,
    reference_map: torch.Tensor,
    cfg: RegistrationConfig | None = None,
    generator: torch.Generator | None = None,
    min_area: float = 0.0,
    max_area: float | None = None,
) -> RegionTransfer:
    """Register ``reference`` onto ``healthy`` and carry ``reference_map`` along.

    Args:
        healthy: (B, 1, H, W) float in [0, 1], the images to paint a finding into.
        reference: (B, 1, H, W) float in [0, 1], diseased images showing the finding.
        reference_map: (B, 1, H, W) attention map of the finding on ``reference``, in
            [0, 1] (a boolean mask works too).
        cfg: registration settings; ``cfg.mask_threshold`` cuts the warped map.
        generator: passed to :func:`~augment.registration.api.register`.
        min_area, max_area: fractions of the image (``attention.min_area``/``max_area``).
            With ``max_area``, a region over it keeps only its strongest pixels, and one
            under ``min_area`` becomes empty (see :func:`~augment.attention.base.to_mask`);
            without it the region is not bounded.

    Returns:
        :class:`RegionTransfer`.

    Raises:
        TypeError, ValueError: bad images (see :func:`~augment.registration.api.register`)
            or a map whose shape is not (B, 1, H, W) of the images.
    """
    cfg = cfg or RegistrationConfig()
    healthy, reference = check_pair(healthy, reference)
    reference_map = check_map(reference_map, reference, "reference_map")
    if cfg.fill_lesion:
        filled = fill_region(reference, reference_map >= cfg.mask_threshold)
        reg = register(healthy, filled, cfg, generator=generator)
        reg = replace(reg, warped=warp_map(reference, reg))  # the finding itself, carried by the anatomy's field
    else:
        reg = register(healthy, reference, cfg, generator=generator)
    warped = warp_map(reference_map, reg)
    body = body_mask(healthy)
    raw = warped >= cfg.mask_threshold
    mask = raw & body if max_area is None else to_mask(warped * body, cfg.mask_threshold, min_area, max_area)
    n_raw = raw.flatten(1).sum(dim=1).float()
    outside = (raw & ~body).flatten(1).sum(dim=1).float() / n_raw.clamp_min(1.0)  # 0 when the map is empty
    return RegionTransfer(mask=mask, map=warped * body, body=body, outside_fraction=outside, registration=reg)
