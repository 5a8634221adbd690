"""Batched inpainting with one seed per image, so a result does not depend on its batch.

A service that batches unrelated requests together (``@serve.batch``) must give each image
its own noise: image ``i`` gets its noise from ``seed_generator(seeds[i])``, exactly what
:func:`augment.inpainting.inpaint` draws for that image alone with that seed (``inpaint``
takes one generator per image for this).
"""

from __future__ import annotations

from typing import Sequence

import torch

from augment.config import InpaintingConfig
from augment.inpainting.sampler import InpaintResult
from augment.painter import Painter

__all__ = ["inpaint_seeded", "seed_generator"]


def seed_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (any int; folded into 64 bits)."""
    return torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)


def inpaint_seeded(
    painter: Painter,
    image: torch.Tensor,
    mask: torch.Tensor,
    findings: torch.Tensor,
    cfg: InpaintingConfig,
    seeds: Sequence[int],
    base: torch.Tensor | None = None,
) -> InpaintResult:
    """:meth:`Painter.paint <augment.painter.Painter.paint>` with an independent seed per image.

    Args:
        painter: the generator (flow model or baseline).
        image: (B, 1, H, W) float in [0, 1].
        mask: (B, 1, H, W) bool or float; ``> 0.5`` is repainted.
        findings: (B, 14) multi-hot.
        cfg: sampling settings (``steps``, ``guidance``, ``solver``, ``crop_size``, ...).
        base: the lesion coupling's start images (see :func:`~augment.inpainting.inpaint`).
        seeds: B seeds; image ``i`` is what ``inpaint`` gives for it alone with
            ``torch.Generator().manual_seed(seeds[i])``.

    Raises:
        ValueError: shapes do not match or the seed count is not B.
    """
    if len(seeds) != image.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {image.shape[0]} images; give one seed per image")
    return painter.paint(image, mask, findings, cfg, generator=[seed_generator(s) for s in seeds], base=base)
