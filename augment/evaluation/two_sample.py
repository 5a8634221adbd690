"""Classifier two-sample test: can a small CNN tell synthetic images from real ones?

A discriminator (:class:`Discriminator`, three strided convolutions, global average and
max pooling, one logit) is trained with Adam on a stratified part of real (label 0) and
synthetic (label 1) images and scored on the held-out rest by ROC AUC, with a bootstrap
interval over the held-out images. AUC ≈ 0.5 (the interval contains it): the CNN cannot
tell them apart; AUC near 1: it can. :func:`two_sample_test_crops` does the same on crops
around the painted region, where the synthetic content is (real images get the masks of
randomly drawn synthetic images, so crop positions and sizes follow the same distribution).

The test is cheap on purpose (seconds for ~100 vs ~100 images at 64x64 on one CPU core);
it detects gross differences, not subtle ones, and it is only as good as its training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from augment.data.io import validate_batch

__all__ = ["TwoSampleResult", "Discriminator", "two_sample_test", "two_sample_test_crops", "crops_around_masks"]


@dataclass(frozen=True)
class TwoSampleResult:
    """Held-out AUC of the real-vs-synthetic discriminator.

    Attributes:
        auc: ROC AUC on the held-out images (None when they hold only one class).
        low, high: bootstrap (1 - alpha) percentile interval of the AUC, or None.
        n_train, n_test: images used to train and to score.
        n_real, n_synthetic: images in each set.
        epochs: training epochs.
        region: ``"image"`` or ``"crop"``.
        train_accuracy: accuracy on the training part at the end (a sanity check).
    """

    auc: float | None
    low: float | None
    high: float | None
    n_train: int
    n_test: int
    n_real: int
    n_synthetic: int
    epochs: int
    region: str = "image"
    train_accuracy: float | None = None

    @property
    def contains_chance(self) -> bool | None:
        """Whether the interval contains 0.5 (None without an interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low <= 0.5 <= self.high

    def metrics(self, prefix: str = "") -> dict[str, float | None]:
        p = f"{prefix}two_sample_{self.region}"
        return {f"{p}_auc": self.auc, f"{p}_auc_low": self.low, f"{p}_auc_high": self.high, f"{p}_n_test": self.n_test}


class Discriminator(nn.Module):
    """Small CNN: (B, 1, H, W) in [0, 1] -> (B,) logits (synthetic = 1)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features((x - 0.5) / 0.25)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled).squeeze(1)


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-2:] == (size, size):
        return x.float()
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(labels, minlength=2)
    n_test = int(round(test_fraction * len(labels)))
    if counts.min() < 2 or n_test < 2 or len(labels) - n_test < 2:
        raise ValueError(
            f"a stratified split needs at least 2 images of each set and 2 in each part; got {counts[0]} real, "
            f"{counts[1]} synthetic, test_fraction {test_fraction}; give more images"
        )
    tr, te = train_test_split(idx, test_size=n_test, stratify=labels, random_state=seed)
    return np.sort(tr), np.sort(te)


def _bootstrap_auc(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int, alpha: float) -> tuple[float | None, float | None]:
    """Percentile interval of the AUC over resamples drawn within each class (each has both).

    The AUC of a resample is the Mann-Whitney statistic from midranks (equal to
    :func:`sklearn.metrics.roc_auc_score`, ties counted as one half), all resamples at once.
    """
    from scipy.stats import rankdata

    if n_boot <= 0:
        return None, None
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_pos, n_neg = len(pos), len(neg)
    idx = np.concatenate([rng.choice(pos, (n_boot, n_pos)), rng.choice(neg, (n_boot, n_neg))], axis=1)
    ranks = rankdata(p[idx], axis=1)
    aucs = (ranks[:, :n_pos].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    lo, hi = np.percentile(aucs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def two_sample_test(
    real: torch.Tensor,
    synthetic: torch.Tensor,
    image_size: int | None = 64,
    test_fraction: float = 0.3,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 2e-3,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    region: str = "image",
) -> TwoSampleResult:
    """Train a :class:`Discriminator` on part of the images, report the held-out AUC.

    Args:
        real: (N_r, 1, H, W) in [0, 1].
        synthetic: (N_s, 1, H', W') in [0, 1].
        image_size: both sets are resized to this side (None: keep; sizes must then match).
        test_fraction: held-out share, stratified by set.
        epochs, batch_size, lr: Adam training of the discriminator.
        n_boot: bootstrap resamples of the held-out images for the AUC interval.
        alpha: 0.05 gives a 95% interval.
        seed: seeds the split, the weights, the batches and the bootstrap; the global torch
            RNG is left as it was.
        region: carried into the result and metric names.
    """
    from sklearn.metrics import roc_auc_score

    validate_batch(real, "real")
    validate_batch(synthetic, "synthetic")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    r, s = _resize(real.cpu(), image_size), _resize(synthetic.cpu(), image_size)
    if r.shape[-2:] != s.shape[-2:]:
        raise ValueError(f"real {tuple(r.shape[-2:])} and synthetic {tuple(s.shape[-2:])} sizes differ; set image_size")
    x = torch.cat([r, s])
    y = np.concatenate([np.zeros(len(r), np.int64), np.ones(len(s), np.int64)])
    tr, te = _split(y, test_fraction, seed)
    yt = torch.as_tensor(y, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Discriminator()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # weight the classes equally whatever their counts
    n_pos = float(y[tr].sum())
    pos_weight = torch.tensor((len(tr) - n_pos) / max(n_pos, 1.0))
    xtr, ytr = x[torch.as_tensor(tr)], yt[torch.as_tensor(tr)]
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(tr), generator=gen)
        for start in range(0, len(tr), batch_size):
            b = perm[start : start + batch_size]
            if len(b) < 2:  # batch norm needs two images
                continue
            xb = xtr[b]
            flip = torch.rand(len(b), generator=gen) < 0.5  # horizontal flips: cheap, label-preserving
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.binary_cross_entropy_with_logits(model(xb), ytr[b], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        p_tr = torch.sigmoid(model(xtr)).numpy()
        p_te = torch.sigmoid(model(x[torch.as_tensor(te)])).numpy()
    train_acc = float(((p_tr >= 0.5) == (y[tr] == 1)).mean())
    y_te = y[te]
    auc = float(roc_auc_score(y_te, p_te)) if 0 < y_te.sum() < len(y_te) else None
    lo, hi = _bootstrap_auc(y_te, p_te, n_boot, seed, alpha) if auc is not None else (None, None)
    return TwoSampleResult(auc, lo, hi, len(tr), len(te), len(r), len(s), epochs, region, train_acc)


def crops_around_masks(images: torch.Tensor, masks: torch.Tensor, size: int = 32, context: float = 0.5) -> torch.Tensor:
    """Square crops around each mask's bounding box, resampled to (B, 1, size, size).

    The box is the mask's larger side times ``1 + 2 * context``, at least ``size`` pixels
    (or the image); an empty mask gives the image's centred square.
    """
    from augment.inpainting.crop import crop, mask_boxes

    validate_batch(images, "images")
    if masks.shape != images.shape:
        raise ValueError(f"masks {tuple(masks.shape)} must match images {tuple(images.shape)}")
    return crop(images.float(), mask_boxes(masks.float(), size, context), size).clamp(0, 1)


def two_sample_test_crops(
    real: torch.Tensor,
    synthetic: torch.Tensor,
    synthetic_masks: torch.Tensor,
    real_masks: torch.Tensor | None = None,
    crop_size: int = 32,
    context: float = 0.5,
    seed: int = 0,
    **kwargs,
) -> TwoSampleResult:
    """:func:`two_sample_test` on crops around the painted regions.

    Args:
        real: (N_r, 1, H, W) in [0, 1].
        synthetic: (N_s, 1, H, W) in [0, 1].
        synthetic_masks: (N_s, 1, H, W), the painted region of each synthetic image.
        real_masks: (N_r, 1, H, W) regions to crop from the real images; by default the
            masks of randomly drawn synthetic images (same positions and sizes).
        crop_size: side of the crops.
        context: margin around the mask, as a fraction of its larger side.
        kwargs: passed on to :func:`two_sample_test` (``image_size`` is the crop size).
    """
    validate_batch(synthetic, "synthetic")
    validate_batch(real, "real")
    if synthetic_masks.shape != synthetic.shape:
        raise ValueError(f"synthetic_masks {tuple(synthetic_masks.shape)} must match synthetic {tuple(synthetic.shape)}")
    if real_masks is None:
        if real.shape[-2:] != synthetic.shape[-2:]:
            raise ValueError(f"borrowing synthetic masks needs real images of the same size; got {tuple(real.shape)} and {tuple(synthetic.shape)}")
        pick = np.random.default_rng(seed).integers(0, len(synthetic_masks), len(real))
        real_masks = synthetic_masks[torch.as_tensor(pick)]
    kwargs.pop("image_size", None)
    rc = crops_around_masks(real, real_masks, crop_size, context)
    sc = crops_around_masks(synthetic, synthetic_masks, crop_size, context)
    return two_sample_test(rc, sc, image_size=None, seed=seed, region="crop", **kwargs)
