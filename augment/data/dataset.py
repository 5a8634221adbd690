"""A torch ``Dataset`` over an NIH index (images in the library convention, multi-hot labels)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from augment.data.io import ImageReadError, read_image
from augment.data.nih import NIHIndex

__all__ = ["NIHImageDataset"]


class NIHImageDataset(Dataset):
    """Items are ``(image (1, S, S) float32 in [0, 1], labels (14,) float32)``.

    Args:
        index: the rows to serve.
        size: side length images are resized to.
        transform: optional callable on the (1, S, S) tensor (training augmentation).
        cache: keep decoded images in memory (small sets; the NIH sample is 559 images).
    """

    def __init__(
        self,
        index: NIHIndex,
        size: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool = True,
    ) -> None:
        self.index = index
        self.size = size
        self.transform = transform
        self.labels = torch.from_numpy(index.labels_matrix())
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.index.records)

    def image(self, i: int) -> torch.Tensor:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        rec = self.index.records[i]
        try:
            arr = read_image(self.index.path(rec), self.size)
        except ImageReadError as exc:
            raise ImageReadError(f"{exc} (row {rec.image_index} of {self.index.root})") from None
        t = torch.from_numpy(np.ascontiguousarray(arr))[None]
        if self._cache is not None:
            self._cache[i] = t
        return t

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.image(i)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]
