"""Near-copy check: nearest training image of a synthetic one, in pixels and in embedding.

A synthetic image is its healthy source outside the mask, so a whole-image pixel distance
would only find the source again. The pixel distance is therefore measured **inside the
repainted region**: the RMS difference, over the mask's pixels, between the synthetic
image and each training image (at ``bank_image_size``), i.e. "did the generator paste in a
training image's content at this place?". The embedding distance is the cosine distance of
whole-image embeddings in the bank's feature space: the bank index's own encoder (trained on
the real training images, never selected in by the gate), or whatever ``embed_fn`` an
in-memory bank was built with. The synthetic image's own source, and every other
image of the source's patient (NIH follow-ups of one chest), are excluded from both
searches, since they share the image outside the mask by construction.

Whole-image embeddings of radiographs are close to one another anyway, so a fixed cosine
threshold flags ordinary images as copies. :attr:`TrainingBank.real_embedding_nn` holds
each bank image's nearest neighbour among the *other patients'* images: the gate compares a
synthetic image with a low quantile of these real-to-real distances
(:meth:`TrainingBank.embedding_floor`), i.e. "closer to a training image than real
radiographs of different patients ever are".

A bank lives in memory (:meth:`TrainingBank.build`, for tests and small runs) or on disk as
an index folder that every gate actor memory-maps (:mod:`augment.quality.bank_index`): its
arrays may then be NumPy memmaps (thumbnails in float16), which :meth:`TrainingBank.nearest`
reads in chunks of rows, so a search never copies the whole bank into a process. Such a
bank carries its own feature space (``embed_fn``, an encoder trained on the real training
images, which the gate never selects in): queries are embedded with it, so query and bank
embeddings always come from the same network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["EmbedFn", "NearestNeighbours", "TrainingBank", "patient_codes", "patient_of", "real_nearest_neighbours"]

Array = torch.Tensor | np.ndarray
"""A bank array: a tensor, or a NumPy array (a read-only memmap of an index folder)."""

CHUNK_ELEMENTS = 1 << 22
"""Bank rows are searched in chunks of about this many (query x bank) or (bank x bank) cells."""

EmbedFn = Callable[[torch.Tensor], torch.Tensor]
"""embed_fn(images (B, 1, H, W) in [0, 1]) -> (B, D) embeddings."""


@dataclass(frozen=True)
class NearestNeighbours:
    """Nearest training image of each query.

    Attributes:
        pixel_distance: (B,) RMS intensity difference over the mask ([0, 1] scale).
        pixel_index: (B,) bank row of that neighbour (-1 when the bank is empty).
        embedding_distance: (B,) cosine distance, or None without embeddings.
        embedding_index: (B,) bank row, or None.
    """

    pixel_distance: torch.Tensor
    pixel_index: torch.Tensor
    embedding_distance: torch.Tensor | None
    embedding_index: torch.Tensor | None


def patient_of(image_id: str) -> str:
    """The patient part of an NIH ``Image Index`` (``00000013_005.png`` -> ``00000013``).

    Ids not of NIH's ``<digits>_<digits>`` form are their own patient.
    """
    stem = image_id.rsplit(".", 1)[0]
    head, sep, tail = stem.rpartition("_")
    return head if sep and head.isdigit() and tail.isdigit() else stem


def _downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.float()
    return F.interpolate(x.float(), size=(size, size), mode="area")


def _rows(a: Array, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of a bank array as a float32 tensor (a copy of only those rows)."""
    if isinstance(a, torch.Tensor):
        return a[start:stop].float()
    return torch.from_numpy(np.array(a[start:stop], dtype=np.float32))  # a writable copy of these rows only


def patient_codes(ids: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """(N,) int64 patient code of each id, and patient -> code."""
    codes: dict[str, int] = {}
    out = np.fromiter((codes.setdefault(patient_of(i), len(codes)) for i in ids), dtype=np.int64, count=len(ids))
    return out, codes


def real_nearest_neighbours(embeddings: Array, codes: np.ndarray, chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray | None:
    """Cosine distance from each row to its nearest row of another patient, in chunks of rows.

    Args:
        embeddings: (N, D) L2-normalised (a tensor, an array or a memmap).
        codes: (N,) patient code of each row.
        chunk_elements: about how many (row x bank) cells one chunk holds in memory.

    Returns:
        (N,) float32, or None with fewer than two patients.
    """
    n = len(codes)
    if n == 0 or len(np.unique(codes)) < 2:
        return None
    emb = _rows(embeddings, 0, n)  # (N, D): small next to the thumbnails
    allc = torch.from_numpy(np.asarray(codes))
    step = max(1, chunk_elements // n)
    out = np.empty(n, np.float32)
    for a in range(0, n, step):
        cd = (1.0 - emb[a : a + step] @ emb.T).masked_fill(allc[a : a + step, None] == allc[None, :], float("inf"))
        out[a : a + step] = cd.min(dim=1).values.numpy()
    return out


@dataclass(frozen=True)
class TrainingBank:
    """Training images (downsampled) and their embeddings, to search for near-copies.

    Attributes:
        ids: (N,) image ids (``Image Index``).
        pixels: (N, size*size) in [0, 1]: float32 in memory, or a float16 memmap of an index.
        embeddings: (N, D) L2-normalised, or None.
        size: side length of the stored images.
        real_embedding_nn: (N,) cosine distance from each bank image to its nearest bank
            image of another patient (None without embeddings or with one patient).
        embed_fn: the bank's own feature space, (B, 1, H, W) -> (B, D); when set, the gate
            embeds queries with it instead of the embed_fn it was given. None: the caller's
            embeddings are in the bank's space (the in-memory :meth:`build`).
        feature_space: what the embeddings are ("caller" for :meth:`build`).
    """

    ids: tuple[str, ...]
    pixels: Array
    embeddings: Array | None
    size: int
    real_embedding_nn: Array | None = None
    embed_fn: EmbedFn | None = field(default=None, repr=False, compare=False)
    feature_space: str = "caller"
    _codes: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.pixels) != len(self.ids):
            raise ValueError(f"the bank has {len(self.ids)} ids but {len(self.pixels)} rows of pixels")
        if self.embeddings is not None and len(self.embeddings) != len(self.ids):
            raise ValueError(f"the bank has {len(self.ids)} ids but {len(self.embeddings)} embeddings")

    @property
    def patients(self) -> tuple[str, ...]:
        return tuple(patient_of(i) for i in self.ids)

    def _patient_index(self) -> tuple[np.ndarray, dict[str, int], dict[str, int]]:
        """(codes, patient -> code, id -> row), computed once per bank."""
        if not self._codes:
            codes, by_patient = patient_codes(self.ids)
            self._codes.append((codes, by_patient, {k: i for i, k in enumerate(self.ids)}))
        return self._codes[0]

    def embedding_floor(self, quantile: float) -> float | None:
        """The ``quantile`` of real-to-real (other-patient) nearest-neighbour cosine distances."""
        if self.real_embedding_nn is None or len(self.real_embedding_nn) == 0:
            return None
        nn = self.real_embedding_nn
        return float(torch.quantile(nn.float() if isinstance(nn, torch.Tensor) else torch.from_numpy(np.asarray(nn, np.float32)), quantile))

    @classmethod
    def build(
        cls,
        images: torch.Tensor,
        ids: Sequence[str],
        embed_fn: EmbedFn | None = None,
        size: int = 64,
        batch_size: int = 32,
    ) -> "TrainingBank":
        """Make a bank from (N, 1, H, W) training images in [0, 1].

        Args:
            images: the training images.
            ids: one id per image.
            embed_fn: the embedding (computed in batches of ``batch_size``); None
                skips the embedding check.
            size: stored side length.
        """
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
        if len(ids) != images.shape[0]:
            raise ValueError(f"got {len(ids)} ids for {images.shape[0]} images")
        pixels = torch.cat([_downsample(images[i : i + batch_size], size).flatten(1) for i in range(0, images.shape[0], batch_size)]) if images.shape[0] else torch.zeros(0, size * size)
        emb = None
        if embed_fn is not None and images.shape[0]:
            with torch.no_grad():
                emb = torch.cat([embed_fn(images[i : i + batch_size]).float().cpu() for i in range(0, images.shape[0], batch_size)])
            emb = F.normalize(emb, dim=1)
        real_nn = None
        if emb is not None:
            nn = real_nearest_neighbours(emb, patient_codes(ids)[0])
            real_nn = None if nn is None else torch.from_numpy(nn)
        return cls(ids=tuple(ids), pixels=pixels.cpu(), embeddings=emb, size=size, real_embedding_nn=real_nn)

    def __len__(self) -> int:
        return len(self.ids)

    def _excluded(self, exclude: Sequence[str | None] | None, b: int) -> torch.Tensor:
        out = np.zeros((b, len(self.ids)), dtype=bool)
        if exclude is None:
            return torch.from_numpy(out)
        if len(exclude) != b:
            raise ValueError(f"got {len(exclude)} exclude ids for a batch of {b}")
        codes, by_patient, where = self._patient_index()
        for j, e in enumerate(exclude):
            if e is None:
                continue
            code = by_patient.get(patient_of(e))
            if code is not None:
                out[j] = codes == code
            if e in where:
                out[j, where[e]] = True
        return torch.from_numpy(out)

    def nearest(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        exclude: Sequence[str | None] | None = None,
    ) -> NearestNeighbours:
        """Nearest bank image of each query, skipping each query's excluded id.

        Args:
            images: (B, 1, H, W) in [0, 1].
            masks: (B, 1, H, W); the pixel distance is taken over these pixels (whole image
                when None or empty).
            embeddings: (B, D) of the queries (needed for the embedding distance).
            exclude: per query, its healthy source's id (that image and the other images
                of its patient are skipped) or None.
        """
        b = images.shape[0]
        q = _downsample(images.cpu(), self.size).flatten(1)  # (B, P)
        if masks is None:
            w = torch.ones_like(q)
        else:
            w = _downsample((masks.cpu() > 0.5).float(), self.size).flatten(1)
            empty = w.sum(1) <= 0
            w[empty] = 1.0
        excl = self._excluded(exclude, b)
        if len(self.ids) == 0:
            inf = torch.full((b,), float("inf"))
            none = torch.full((b,), -1, dtype=torch.long)
            return NearestNeighbours(inf, none, None if embeddings is None else inf, None if embeddings is None else none)
        n = len(self.ids)
        if q.shape[1] != self.pixels.shape[1]:
            raise ValueError(f"queries downsample to {q.shape[1]} pixels, the bank holds {self.pixels.shape[1]} per image")
        step = max(1, CHUNK_ELEMENTS // max(1, q.shape[1]))
        wq2, wq, wsum = (w * q * q).sum(1, keepdim=True), w * q, w.sum(1, keepdim=True)
        pd, pi = torch.full((b,), float("inf")), torch.zeros(b, dtype=torch.long)
        for a in range(0, n, step):
            k = _rows(self.pixels, a, a + step)  # (C, P)
            # sum_p w (q - k)^2 = sum w q^2 - 2 sum w q k + sum w k^2, for all (query, bank) pairs
            sq = wq2 - 2.0 * wq @ k.T + w @ (k * k).T
            d = (sq.clamp(min=0.0) / wsum).sqrt().masked_fill(excl[:, a : a + step], float("inf"))
            cd, ci = d.min(dim=1)
            better = cd < pd
            pd, pi = torch.where(better, cd, pd), torch.where(better, ci + a, pi)
        ed = ei = None
        if embeddings is not None and self.embeddings is not None:
            e = F.normalize(embeddings.float().cpu(), dim=1)
            if e.shape[1] != self.embeddings.shape[1]:
                raise ValueError(f"query embeddings have {e.shape[1]} dimensions, the bank {self.embeddings.shape[1]}")
            step = max(1, CHUNK_ELEMENTS // max(1, e.shape[1]))
            ed, ei = torch.full((b,), float("inf")), torch.zeros(b, dtype=torch.long)
            for a in range(0, n, step):
                cd = (1.0 - e @ _rows(self.embeddings, a, a + step).T).masked_fill(excl[:, a : a + step], float("inf"))
                cmin, ci = cd.min(dim=1)
                better = cmin < ed
                ed, ei = torch.where(better, cmin, ed), torch.where(better, ci + a, ei)
        return NearestNeighbours(pd, pi, ed, ei)
