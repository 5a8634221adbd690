"""Memorisation: are synthetic images closer to the generator's training images than real ones are?

For each synthetic image, the distance to its nearest generator-training image; for
reference, each real image's distance to its nearest *other* real image (leave-one-out;
by default the real set is the generator-training set itself). If the generator copied its
training data, the synthetic distances pile up near 0, below the real-real ones. Images
closer than a threshold (given, or the ``percentile``-th percentile of the real-real
distances, 1% by default) are flagged as near-copies; an exact copy (distance 0) is always
flagged.

Pixel distances are RMS intensity differences of downsampled images (``size``), the same
measure as the quality gate's near-copy check (:mod:`augment.quality.near_copy`), here
over whole sets. A synthetic image is its healthy source outside the painted mask, so give
``exclude`` (the source id of each synthetic image; ``exclude_patients`` also skips the
source patient's follow-ups) and ``masks`` to measure only inside the painted region; real
reference queries then use the masks of randomly drawn synthetic images, so both distances
cover the same kind of region. With patients known, the real-real reference skips the
query's own patient too. Embedding (cosine) distances are reported when embeddings are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from augment.data.io import validate_batch

__all__ = ["NearestDistances", "MemorisationResult", "memorisation_check", "memorisation_figure"]


@dataclass(frozen=True)
class NearestDistances:
    """Nearest-neighbour distances of one kind (pixel or embedding).

    Attributes:
        synthetic: (N_s,) synthetic -> nearest training image.
        synthetic_index: (N_s,) row of that training image.
        real: (N_r,) real -> nearest other real image.
        threshold: near-copy threshold.
        threshold_source: ``"given"`` or ``"real_p<percentile>"``.
        flagged: (K,) indices of flagged synthetic images.
    """

    synthetic: np.ndarray
    synthetic_index: np.ndarray
    real: np.ndarray
    threshold: float
    threshold_source: str
    flagged: np.ndarray

    def metrics(self, prefix: str) -> dict[str, float]:
        s, r = self.synthetic, self.real
        out = {
            f"{prefix}_synthetic_median": float(np.median(s)),
            f"{prefix}_synthetic_min": float(s.min()),
            f"{prefix}_threshold": float(self.threshold),
            f"{prefix}_n_flagged": float(len(self.flagged)),
            f"{prefix}_fraction_flagged": float(len(self.flagged) / len(s)),
        }
        if len(r):
            out[f"{prefix}_real_median"] = float(np.median(r))
            if np.median(r) > 0:
                out[f"{prefix}_median_ratio"] = float(np.median(s) / np.median(r))
        return out


@dataclass(frozen=True)
class MemorisationResult:
    """Pixel (and optionally embedding) nearest-neighbour distances and flagged near-copies.

    Attributes:
        pixel: pixel-space distances (RMS over the mask or the whole image, [0, 1] scale).
        embedding: cosine distances of embeddings, or None.
        flagged_ids: ids of the synthetic images flagged in either space (with their nearest
            training id), for a people-readable list.
        size: side of the downsampled images.
        masked: whether distances were taken inside masks.
    """

    pixel: NearestDistances
    embedding: NearestDistances | None
    flagged_ids: tuple[tuple[str, str], ...]
    size: int
    masked: bool

    def metrics(self, prefix: str = "memorisation_") -> dict[str, float]:
        out = self.pixel.metrics(f"{prefix}pixel")
        if self.embedding is not None:
            out.update(self.embedding.metrics(f"{prefix}embedding"))
        return out


def _threshold(real: np.ndarray, threshold: float | None, percentile: float) -> tuple[float, str]:
    if threshold is not None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        return float(threshold), "given"
    finite = real[np.isfinite(real)]
    if len(finite) == 0:
        raise ValueError("no real-real distances to set a threshold from (need >= 2 real images); pass threshold=")
    return float(np.percentile(finite, percentile)), f"real_p{percentile:g}"


def _down(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, H, W) -> (N, size*size) float32 (area resampling)."""
    x = x.detach().float().cpu()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.flatten(1)


def _weights(masks: torch.Tensor | None, size: int, n: int) -> torch.Tensor:
    """Per-pixel weights of each query: its mask (downsampled), or the whole image when none/empty."""
    if masks is None:
        return torch.ones(n, size * size)
    w = _down((masks > 0.5).float(), size)
    w[w.sum(1) <= 0] = 1.0
    return w


def _groups(values: Sequence | None, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    if len(values) != n:
        raise ValueError(f"got {len(values)} {name} for {n} images")
    return np.array([str(v) for v in values], dtype=object)


def _nearest(
    q: torch.Tensor, w: torch.Tensor, bank: torch.Tensor, excl: torch.Tensor, qe: torch.Tensor | None, be: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Weighted RMS pixel distance and cosine distance to the nearest non-excluded bank row.

    ``sum_p w (q - k)^2 = sum w q^2 - 2 sum w q k + sum w k^2`` for all (query, bank) pairs
    at once. Rows with every bank entry excluded get distance inf and index -1.
    """
    sq = (w * q * q).sum(1, keepdim=True) - 2.0 * (w * q) @ bank.T + w @ (bank * bank).T
    d = (sq.clamp(min=0.0) / w.sum(1, keepdim=True)).sqrt().masked_fill(excl, float("inf"))
    pd, pi = d.min(dim=1)
    pi = torch.where(torch.isfinite(pd), pi, torch.full_like(pi, -1))
    ed = ei = None
    if qe is not None and be is not None:
        if qe.shape[1] != be.shape[1]:
            raise ValueError(f"query embeddings have {qe.shape[1]} dimensions, the training ones {be.shape[1]}")
        cd = (1.0 - qe @ be.T).clamp(min=0.0).masked_fill(excl, float("inf"))
        e_d, e_i = cd.min(dim=1)
        ed, ei = e_d.double().numpy(), torch.where(torch.isfinite(e_d), e_i, torch.full_like(e_i, -1)).numpy()
    return pd.double().numpy(), pi.numpy(), ed, ei


def _unit(e: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
    if e is None:
        return None
    t = torch.as_tensor(np.asarray(e, dtype=np.float32))
    if t.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(t.shape)}")
    return F.normalize(t, dim=1)


def _flag(d: np.ndarray, thr: float) -> np.ndarray:
    return np.flatnonzero((d < thr) | (d <= 1e-6))


def memorisation_check(
    synthetic: torch.Tensor,
    train: torch.Tensor,
    real: torch.Tensor | None = None,
    synthetic_ids: Sequence[str] | None = None,
    train_ids: Sequence[str] | None = None,
    exclude: Sequence[str | None] | None = None,
    masks: torch.Tensor | None = None,
    size: int = 32,
    train_patients: Sequence[int | str] | None = None,
    real_patients: Sequence[int | str] | None = None,
    exclude_patients: Sequence[int | str | None] | None = None,
    threshold: float | None = None,
    percentile: float = 1.0,
    synthetic_embeddings: torch.Tensor | np.ndarray | None = None,
    train_embeddings: torch.Tensor | np.ndarray | None = None,
    real_embeddings: torch.Tensor | np.ndarray | None = None,
    embedding_threshold: float | None = None,
    seed: int = 0,
) -> MemorisationResult:
    """Nearest generator-training image of each synthetic one, against real-real distances.

    Args:
        synthetic: (N_s, 1, H, W) in [0, 1].
        train: (N_t, 1, H, W), the generator's training images.
        real: (N_r, 1, H, W) for the real-real reference (leave-one-out); default ``train``.
        synthetic_ids, train_ids: names, for the flagged list and for ``exclude``.
        exclude: per synthetic image, a training id to skip (its healthy source) or None.
        masks: (N_s, 1, H, W) painted regions; distances are taken inside them.
        size: images are downsampled to size x size.
        train_patients: patient of each training image; the real-real reference then also
            skips the query's own patient (NIH follow-ups of one chest look alike).
        real_patients: the same for ``real`` (with ``real`` only).
        exclude_patients: per synthetic image, a patient (its source's) whose training
            images are skipped, or None; needs ``train_patients``.
        threshold: pixel near-copy threshold; default the ``percentile`` of real-real.
        percentile: see ``threshold``.
        synthetic_embeddings, train_embeddings: (N, D) for cosine distances (both or neither).
        real_embeddings: (N_r, D) of ``real`` (with ``real`` only; else ``train_embeddings``).
        embedding_threshold: like ``threshold``, for the cosine distances.
        seed: draws the masks lent to the real reference queries.
    """
    validate_batch(synthetic, "synthetic")
    validate_batch(train, "train")
    if len(synthetic) == 0 or len(train) == 0:
        raise ValueError(f"need synthetic and training images, got {len(synthetic)} and {len(train)}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    train_ids = list(train_ids) if train_ids is not None else [f"train_{i}" for i in range(len(train))]
    synthetic_ids = list(synthetic_ids) if synthetic_ids is not None else [f"synthetic_{i}" for i in range(len(synthetic))]
    if len(train_ids) != len(train) or len(synthetic_ids) != len(synthetic):
        raise ValueError(f"got {len(train_ids)} train ids for {len(train)} images and {len(synthetic_ids)} synthetic ids for {len(synthetic)}")
    if masks is not None and masks.shape != synthetic.shape:
        raise ValueError(f"masks {tuple(masks.shape)} must match synthetic {tuple(synthetic.shape)}")
    if (synthetic_embeddings is None) != (train_embeddings is None):
        raise ValueError("give both synthetic_embeddings and train_embeddings, or neither")

    use_train_as_real = real is None
    if use_train_as_real:
        if real_embeddings is not None or real_patients is not None:
            raise ValueError("real_embeddings/real_patients without real images: pass real= too, or leave them out to use the training set")
        real, real_emb, real_patients = train, train_embeddings, train_patients
    else:
        validate_batch(real, "real")
        real_emb = real_embeddings
    tp = _groups(train_patients, len(train), "train_patients")
    rp = _groups(real_patients, len(real), "real_patients")
    if exclude_patients is not None and tp is None:
        raise ValueError("exclude_patients needs train_patients (the patient of each training image)")

    # synthetic -> training: skip each query's source id and its source patient's images
    excl = torch.zeros(len(synthetic), len(train), dtype=torch.bool)
    where = {k: i for i, k in enumerate(train_ids)}
    for j in range(len(synthetic)):
        e = None if exclude is None else exclude[j]
        if e is not None and e in where:
            excl[j, where[e]] = True
        ep = None if exclude_patients is None else exclude_patients[j]
        if ep is not None:
            excl[j] |= torch.as_tensor(tp == str(ep))
    if exclude is not None and len(exclude) != len(synthetic):
        raise ValueError(f"got {len(exclude)} exclude ids for {len(synthetic)} synthetic images")
    if exclude_patients is not None and len(exclude_patients) != len(synthetic):
        raise ValueError(f"got {len(exclude_patients)} exclude_patients for {len(synthetic)} synthetic images")
    train_px = _down(train, size)
    nn_s = _nearest(_down(synthetic, size), _weights(masks, size, len(synthetic)), train_px, excl,
                    _unit(synthetic_embeddings), _unit(train_embeddings))

    # real -> real, leave-one-out (and the query's own patient when patients are known)
    real_px = train_px if use_train_as_real else _down(real, size)
    excl_r = torch.eye(len(real), dtype=torch.bool)
    if rp is not None:
        excl_r |= torch.as_tensor(rp[:, None] == rp[None, :])
    real_masks = None
    if masks is not None and real.shape[-2:] == synthetic.shape[-2:]:
        pick = np.random.default_rng(seed).integers(0, len(masks), len(real))
        real_masks = masks[torch.as_tensor(pick)]
    ru = _unit(real_emb)
    nn_r = _nearest(real_px, _weights(real_masks, size, len(real)), real_px, excl_r, ru, ru)

    ps, pi, es, ei = nn_s
    pr, _, er, _ = nn_r
    pr = pr[np.isfinite(pr)]
    thr, src = _threshold(pr, threshold, percentile)
    pixel = NearestDistances(ps, pi, pr, thr, src, _flag(ps, thr))
    embedding = None
    if es is not None:
        er = er[np.isfinite(er)] if er is not None else np.zeros(0)
        if embedding_threshold is None and len(er) == 0:
            raise ValueError("embedding distances need real embeddings for the reference, or embedding_threshold=")
        ethr, esrc = _threshold(er, embedding_threshold, percentile)
        embedding = NearestDistances(es, ei, er, ethr, esrc, _flag(es, ethr))
    nearest = {int(i): int(pixel.synthetic_index[i]) for i in pixel.flagged}
    if embedding is not None:
        for i in embedding.flagged:
            nearest.setdefault(int(i), int(embedding.synthetic_index[i]))
    ids = tuple((synthetic_ids[i], train_ids[j] if j >= 0 else "") for i, j in sorted(nearest.items()))
    return MemorisationResult(pixel, embedding, ids, size, masks is not None)


def memorisation_figure(result: MemorisationResult, title: str = "nearest-neighbour distances"):
    """Histograms of synthetic->training and real->real distances with the threshold; a Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    parts = [("pixel", result.pixel)] + ([("embedding (cosine)", result.embedding)] if result.embedding else [])
    fig, axes = plt.subplots(1, len(parts), figsize=(4.6 * len(parts), 3.2), squeeze=False)
    for ax, (name, d) in zip(axes[0], parts):
        allv = np.concatenate([d.synthetic, d.real]) if len(d.real) else d.synthetic
        hi = float(allv.max()) if allv.size and allv.max() > 0 else 1.0
        bins = np.linspace(0.0, hi * 1.02, 31)
        ax.hist(d.real, bins=bins, alpha=0.6, density=True, label=f"real -> real ({len(d.real)})", color="tab:blue")
        ax.hist(d.synthetic, bins=bins, alpha=0.6, density=True, label=f"synthetic -> train ({len(d.synthetic)})", color="tab:orange")
        ax.axvline(d.threshold, color="red", lw=1, ls="--", label=f"threshold ({d.threshold_source}); {len(d.flagged)} flagged")
        ax.set_xlabel(f"{name} distance{' inside mask' if result.masked and name == 'pixel' else ''}")
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
