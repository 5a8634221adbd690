"""Attention maps from NIH bounding boxes (``BBox_List_2017.csv``).

NIH gives boxes in pixels of the stored image for 984 images (8 findings). The map is 1
inside the boxes of the requested finding and 0 elsewhere, scaled from the stored image's
size to the size of the batch; an image without such a box gets an all-zero map.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from PIL import Image

from augment.attention.base import AttentionSource
from augment.data.nih import BBox, NIHIndex
from augment.findings import ALIASES

__all__ = ["BBoxSource", "box_map"]


def box_map(boxes: Sequence[BBox], stored_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(1, H, W) map, 1 on the pixels a box covers (at least one pixel per box).

    Args:
        boxes: boxes in pixels of the stored image.
        stored_size: the stored image's (width, height).
        size: the map's (H, W).
    """
    h, w = size
    sw, sh = stored_size
    out = torch.zeros(1, h, w)
    for b in boxes:
        x0 = int(b.x * w / sw)
        y0 = int(b.y * h / sh)
        x1 = max(int(round((b.x + b.w) * w / sw)), x0 + 1)
        y1 = max(int(round((b.y + b.h) * h / sh)), y0 + 1)
        out[:, max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)] = 1.0
    return out


class BBoxSource(AttentionSource):
    """Box maps for the images of an NIH index that have boxes.

    Args:
        index: the NIH index (its ``bboxes`` and image files, read for their stored size).
        boxes: instead of an index, a mapping image name -> boxes ...
        stored_size: ... with the stored images' common (width, height).
    """

    name = "bbox"
    needs_ids = True

    def __init__(
        self,
        index: NIHIndex | None = None,
        boxes: Mapping[str, Sequence[BBox]] | None = None,
        stored_size: tuple[int, int] | None = None,
    ) -> None:
        if (index is None) == (boxes is None):
            raise ValueError("give either an NIH index or a boxes mapping (with stored_size)")
        if boxes is not None and stored_size is None:
            raise ValueError("a boxes mapping needs stored_size=(width, height) of the stored images")
        self.index = index
        self.boxes: Mapping[str, Sequence[BBox]] = index.bboxes if index is not None else boxes  # type: ignore[assignment]
        self.stored_size = stored_size
        self._sizes: dict[str, tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"BBoxSource({len(self.boxes)} images with boxes)"

    def has_box(self, image_id: str, finding: str) -> bool:
        finding = ALIASES.get(finding, finding)
        return any(b.finding == finding for b in self.boxes.get(image_id, ()))

    def _stored(self, image_id: str) -> tuple[int, int]:
        if self.stored_size is not None:
            return self.stored_size
        if image_id not in self._sizes:
            with Image.open(self.index.path(image_id)) as img:  # reads the header only
                self._sizes[image_id] = img.size
        return self._sizes[image_id]

    def _maps(self, image: torch.Tensor, finding: str, image_ids: list[str] | None) -> torch.Tensor:
        finding = ALIASES.get(finding, finding)
        h, w = image.shape[-2:]
        maps = []
        for name in image_ids or []:
            boxes = [b for b in self.boxes.get(name, ()) if b.finding == finding]
            maps.append(box_map(boxes, self._stored(name), (h, w)) if boxes else torch.zeros(1, h, w))
        return torch.stack(maps)
