"""Near-copy check: nearest training image of a synthetic one, in pixels and in embedding.

A synthetic image is its healthy source outside the mask, so a whole-image pixel distance
would only find the source again. The pixel distance is therefore measured **inside the
repainted region**: the RMS difference, over the mask's pixels, between the synthetic
image and each training image (at ``bank_image_size``), i.e. "did the generator paste in a
training image's content at this place?". The embedding distance is the cosine distance of
classifier embeddings (whole image). The synthetic image's own source, and every other
image of the source's patient (NIH follow-ups of one chest), are excluded from both
searches, since they share the image outside the mask by construction.

Whole-image embeddings of radiographs are close to one another anyway, so a fixed cosine
threshold flags ordinary images as copies. :attr:`TrainingBank.real_embedding_nn` holds
each bank image's nearest neighbour among the *other patients'* images: the gate compares a
synthetic image with a low quantile of these real-to-real distances
(:meth:`TrainingBank.embedding_floor`), i.e. "closer to a training image than real
radiographs of different patients ever are".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["EmbedFn", "NearestNeighbours", "TrainingBank", "patient_of"]

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


@dataclass(frozen=True)
class TrainingBank:
    """Training images (downsampled) and their embeddings, to search for near-copies.

    Attributes:
        ids: (N,) image ids (``Image Index``).
        pixels: (N, size*size) float32 in [0, 1].
        embeddings: (N, D) L2-normalised, or None.
        size: side length of the stored images.
        real_embedding_nn: (N,) cosine distance from each bank image to its nearest bank
            image of another patient (None without embeddings or with one patient).
    """

    ids: tuple[str, ...]
    pixels: torch.Tensor
    embeddings: torch.Tensor | None
    size: int
    real_embedding_nn: torch.Tensor | None = None

    @property
    def patients(self) -> tuple[str, ...]:
        return tuple(patient_of(i) for i in self.ids)

    def embedding_floor(self, quantile: float) -> float | None:
        """The ``quantile`` of real-to-real (other-patient) nearest-neighbour cosine distances."""
        if self.real_embedding_nn is None or self.real_embedding_nn.numel() == 0:
            return None
        return float(torch.quantile(self.real_embedding_nn, quantile))

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
            embed_fn: classifier embedding (computed in batches of ``batch_size``); None
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
            pat = [patient_of(i) for i in ids]
            codes = {p: k for k, p in enumerate(dict.fromkeys(pat))}
            if len(codes) > 1:
                c = torch.tensor([codes[p] for p in pat])
                cd = (1.0 - emb @ emb.T).masked_fill(c[:, None] == c[None, :], float("inf"))
                real_nn = cd.min(dim=1).values
        return cls(ids=tuple(ids), pixels=pixels.cpu(), embeddings=emb, size=size, real_embedding_nn=real_nn)

    def __len__(self) -> int:
        return len(self.ids)

    def _excluded(self, exclude: Sequence[str | None] | None, b: int) -> torch.Tensor:
        out = torch.zeros(b, len(self.ids), dtype=torch.bool)
        if exclude is None:
            return out
        if len(exclude) != b:
            raise ValueError(f"got {len(exclude)} exclude ids for a batch of {b}")
        rows: dict[str, list[int]] = {}
        for i, p in enumerate(self.patients):
            rows.setdefault(p, []).append(i)
        where = {k: i for i, k in enumerate(self.ids)}
        for j, e in enumerate(exclude):
            if e is None:
                continue
            out[j, rows.get(patient_of(e), [])] = True
            if e in where:
                out[j, where[e]] = True
        return out

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
        bank = self.pixels  # (N, P)
        # sum_p w (q - k)^2 = sum w q^2 - 2 sum w q k + sum w k^2, for all (query, bank) pairs
        sq = (w * q * q).sum(1, keepdim=True) - 2.0 * (w * q) @ bank.T + w @ (bank * bank).T
        d = (sq.clamp(min=0.0) / w.sum(1, keepdim=True)).sqrt()
        d = d.masked_fill(excl, float("inf"))
        pd, pi = d.min(dim=1)
        ed = ei = None
        if embeddings is not None and self.embeddings is not None:
            e = F.normalize(embeddings.float().cpu(), dim=1)
            if e.shape[1] != self.embeddings.shape[1]:
                raise ValueError(f"query embeddings have {e.shape[1]} dimensions, the bank {self.embeddings.shape[1]}")
            cd = (1.0 - e @ self.embeddings.T).masked_fill(excl, float("inf"))
            ed, ei = cd.min(dim=1)
        return NearestNeighbours(pd, pi, ed, ei)
