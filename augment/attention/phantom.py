"""Ground-truth attention maps of the phantom data set.

The phantom generator writes, beside the NIH layout, one mask per image and finding:
``masks/<image stem>__<Finding>.png`` (white = lesion). This source reads them, resized to
the batch's size; an image without a mask for the finding gets an all-zero map.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from augment.attention.base import AttentionSource
from augment.data.io import read_image
from augment.findings import ALIASES

__all__ = ["PhantomMaskSource", "phantom_mask_path"]


def phantom_mask_path(root: str | os.PathLike, image_index: str, finding: str) -> Path:
    """Where the phantom generator stores the mask of ``finding`` on ``image_index``."""
    return Path(root) / "masks" / f"{Path(image_index).stem}__{ALIASES.get(finding, finding)}.png"


class PhantomMaskSource(AttentionSource):
    """Masks of a phantom folder as maps in [0, 1]: 1 inside the lesion, the covered share at its edge.

    Args:
        root: the phantom folder (holding ``images/``, ``Data_Entry_2017.csv`` and ``masks/``).
    """

    name = "phantom"
    needs_ids = True

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(str(root).removeprefix("file://"))
        if not (self.root / "masks").is_dir():
            raise ValueError(
                f"{self.root} has no masks/ folder: the phantom source needs a folder written by "
                "augment.data.phantom.generate_phantom (set attention.source to gradcam or bbox for NIH data)"
            )

    def __repr__(self) -> str:
        return f"PhantomMaskSource({str(self.root)!r})"

    def _maps(self, image: torch.Tensor, finding: str, image_ids: list[str] | None) -> torch.Tensor:
        h, w = image.shape[-2:]
        maps = []
        for name in image_ids or []:
            p = phantom_mask_path(self.root, name, finding)
            if p.is_file():
                t = torch.from_numpy(np.ascontiguousarray(read_image(p)))[None, None]
                if t.shape[-2:] != (h, w):
                    # area when shrinking: a pixel's value is the share of it the lesion covers
                    shrink = t.shape[-2] >= h and t.shape[-1] >= w
                    mode = {"mode": "area"} if shrink else {"mode": "bilinear", "align_corners": False}
                    t = F.interpolate(t, size=(h, w), **mode)
                maps.append(t[0])
            else:
                maps.append(torch.zeros(1, h, w))
        return torch.stack(maps)
