"""The attention-map interface: where a finding lives in an image.

Every source maps a batch of images (B, 1, H, W) in [0, 1] and one finding to a map of the
same shape in [0, 1] (1 = most attention). Sources that look images up by name (NIH boxes,
phantom masks) take the images' ``Image Index`` names as ``image_ids``. :func:`to_mask`
turns any map into the binary region that registration carries over and the inpainter
repaints.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Sequence

import torch

from augment.data.io import validate_batch
from augment.findings import finding_index

__all__ = ["AttentionSource", "to_mask", "normalize_maps"]


class AttentionSource(abc.ABC):
    """A source of per-finding attention maps.

    Subclasses implement :meth:`_maps`; :meth:`finding_map` checks the inputs and the output.
    """

    name: ClassVar[str] = "base"
    needs_ids: ClassVar[bool] = False

    def finding_map(self, image: torch.Tensor, finding: str, image_ids: Sequence[str] | None = None) -> torch.Tensor:
        """Attention map of ``finding`` on each image.

        Args:
            image: (B, 1, H, W) float in [0, 1].
            finding: an NIH finding name (e.g. ``"Effusion"``).
            image_ids: the images' ``Image Index`` names; required by sources that look
                images up (``needs_ids``), ignored by the others.

        Returns:
            (B, 1, H, W) float32 in [0, 1] on the image's device; all zeros where the source
            has nothing for that image and finding.
        """
        validate_batch(image, "image")
        finding_index(finding)  # raises ValueError naming the 14 findings
        if self.needs_ids:
            if image_ids is None:
                raise ValueError(f"the {self.name} attention source looks images up by name: pass image_ids")
            if len(image_ids) != image.shape[0]:
                raise ValueError(f"got {len(image_ids)} image_ids for a batch of {image.shape[0]} images")
        out = self._maps(image, finding, list(image_ids) if image_ids is not None else None)
        if out.shape != image.shape:
            raise RuntimeError(f"{self.name} source returned shape {tuple(out.shape)} for images {tuple(image.shape)}")
        return out.to(device=image.device, dtype=torch.float32).clamp_(0.0, 1.0)

    @abc.abstractmethod
    def _maps(self, image: torch.Tensor, finding: str, image_ids: list[str] | None) -> torch.Tensor:
        """(B, 1, H, W) maps; inputs already checked."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def normalize_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each (1, H, W) map of a (B, 1, H, W) batch by its maximum; all-zero maps stay zero."""
    top = maps.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return torch.where(top > eps, maps / top.clamp(min=eps), torch.zeros_like(maps))


def to_mask(
    maps: torch.Tensor,
    threshold: float = 0.5,
    min_area: float = 0.002,
    max_area: float = 0.25,
) -> torch.Tensor:
    """Binary region of each attention map.

    A pixel is in the mask when its value is ``>= threshold``. When that region covers more
    than ``max_area`` of the image, the threshold is raised to the map's ``1 - max_area``
    quantile (the strongest pixels are kept); a flat plateau that still exceeds
    ``max_area`` cannot be narrowed and gives an empty mask. A region under ``min_area`` is
    dropped (empty mask): too small to repaint. Callers skip images with empty masks.

    Args:
        maps: (B, 1, H, W) in [0, 1].
        threshold: in (0, 1].
        min_area, max_area: fractions of the image, ``0 <= min_area <= max_area <= 1``.

    Returns:
        (B, 1, H, W) bool masks.
    """
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must have shape (B, 1, H, W), got {tuple(maps.shape)}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not 0.0 <= min_area <= max_area <= 1.0:
        raise ValueError(f"need 0 <= min_area <= max_area <= 1, got min_area={min_area}, max_area={max_area}")
    flat = maps.detach().float().flatten(1)
    n = flat.shape[1]
    masks = flat >= threshold
    area = masks.float().mean(dim=1)
    for b in torch.nonzero(area > max_area).flatten().tolist():
        k = max(int(max_area * n), 0)
        if k == 0:
            masks[b] = False
            continue
        cut = torch.topk(flat[b], k).values[-1]
        m = flat[b] >= max(float(cut), threshold)
        if m.float().mean() > max_area:
            m = flat[b] > max(float(cut), threshold)
        masks[b] = m
    area = masks.float().mean(dim=1)
    masks[area < min_area] = False
    masks[area <= 0] = False
    return masks.view_as(maps)
