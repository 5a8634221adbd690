"""Classifier two-sample test: can a small CNN tell synthetic images from real ones?

A discriminator (:class:`Discriminator`, three strided convolutions, global average and
max pooling, one logit) is cross-validated between real (label 0) and synthetic (label 1)
images: stratified k-fold *grouped by patient* (a synthetic image belongs to its healthy
source's patient), repeated with other fold assignments. Every image is scored by a model
that never saw its group; the AUC of those scores is reported with its spread over repeats
and a bootstrap interval over groups. AUC near 0.5 (the interval contains it): the CNN
cannot tell them apart; AUC near 1: it can. :func:`two_sample_test_crops` does the same on
crops around the painted region, where the synthetic content is (real images get the masks
of randomly drawn synthetic images, so crop positions and sizes follow the same distribution).

Why grouped: with a source in the real set and its painted copy in the synthetic set, an
ungrouped split lets the discriminator learn the source's texture as "real" and call its
copy real, which drags the AUC below 0.5 and makes a generator look indistinguishable.
Callers should also keep the real set disjoint from the sources (``jobs.evaluate`` does).

The test is cheap on purpose (seconds per fold for ~100 vs ~100 images at 64x64 on one CPU
core); it detects gross differences, not subtle ones, and it is only as good as its training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from augment.data.io import validate_batch

__all__ = ["TwoSampleResult", "Discriminator", "two_sample_test", "two_sample_test_crops", "crops_around_masks"]


@dataclass(frozen=True)
class TwoSampleResult:
    """Cross-validated AUC of the real-vs-synthetic discriminator.

    Every image is scored once per repeat by a discriminator that did not train on its
    group (patient or healthy source): grouped, stratified k-fold, repeated with other fold
    assignments.

    Attributes:
        auc: mean over repeats of the pooled out-of-fold ROC AUC (None with one class).
        low, high: (1 - alpha) percentile interval of the AUC from a bootstrap over groups
            (each image's out-of-fold score averaged over repeats), or None.
        n_train, n_test: images a fold's discriminator trains on (mean) and images scored
            per repeat (all of them).
        n_real, n_synthetic: images in each set.
        epochs: training epochs of each fold's discriminator.
        region: ``"image"`` or ``"crop"``.
        train_accuracy: mean accuracy of the fold discriminators on their training part.
        folds, repeats: the cross-validation's shape.
        auc_repeats: the AUC of each repeat (their spread is the split's noise).
        n_groups: distinct groups; equals the number of images when no groups are given.
        grouped: whether groups (patients or sources) kept related images on one side of
            every split.
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
    folds: int = 5
    repeats: int = 3
    auc_repeats: tuple[float, ...] = ()
    n_groups: int = 0
    grouped: bool = False

    @property
    def contains_chance(self) -> bool | None:
        """Whether the interval contains 0.5 (None without an interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low <= 0.5 <= self.high

    @property
    def auc_std(self) -> float | None:
        """Standard deviation of the AUC over repeats (None with fewer than two)."""
        return float(np.std(self.auc_repeats, ddof=1)) if len(self.auc_repeats) > 1 else None

    def metrics(self, prefix: str = "") -> dict[str, float | None]:
        p = f"{prefix}two_sample_{self.region}"
        return {f"{p}_auc": self.auc, f"{p}_auc_low": self.low, f"{p}_auc_high": self.high, f"{p}_n_test": self.n_test,
                f"{p}_auc_std": self.auc_std}


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


def _group_codes(n_real: int, n_syn: int, groups_real: Sequence | None, groups_synthetic: Sequence | None) -> np.ndarray:
    """One integer per image; images without a group get a group of their own."""
    keys: list[object] = []
    for side, n, g in (("r", n_real, groups_real), ("s", n_syn, groups_synthetic)):
        if g is not None and len(g) != n:
            raise ValueError(f"groups for the {'real' if side == 'r' else 'synthetic'} images: {len(g)} given for {n} images")
        keys += [(side, i) if g is None or g[i] is None or g[i] == "" else ("g", str(g[i])) for i in range(n)]
    _, codes = np.unique(np.array([f"{a}\x00{b}" for a, b in keys]), return_inverse=True)
    return codes


def _folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group k-fold: no group on both sides of a split, both sets in every fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    counts = np.bincount(labels, minlength=2)
    groups_per_set = [len(np.unique(groups[labels == c])) for c in (0, 1)]
    if counts.min() < 2 or min(groups_per_set) < folds:
        raise ValueError(
            f"a {folds}-fold grouped split needs at least {folds} groups (patients or sources) of each set; got "
            f"{counts[0]} real images in {groups_per_set[0]} groups and {counts[1]} synthetic images in "
            f"{groups_per_set[1]} groups; give more images or fewer folds"
        )
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = [(np.sort(tr), np.sort(te)) for tr, te in cv.split(np.zeros(len(labels)), labels, groups)]
    for tr, te in out:
        if len(np.unique(labels[tr])) < 2 or len(np.unique(labels[te])) < 2:
            raise ValueError("a fold lacks real or synthetic images (too few groups); give more images or fewer folds")
    return out


def _fit_score(x: torch.Tensor, y: np.ndarray, tr: np.ndarray, te: np.ndarray, epochs: int, batch_size: int, lr: float,
               seed: int) -> tuple[np.ndarray, float]:
    """Train a :class:`Discriminator` on ``tr``; its probabilities on ``te`` and accuracy on ``tr``."""
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
    return p_te, float(((p_tr >= 0.5) == (y[tr] == 1)).mean())


def _cluster_bootstrap_auc(y: np.ndarray, p: np.ndarray, groups: np.ndarray, n_boot: int, seed: int,
                           alpha: float) -> tuple[float | None, float | None]:
    """Percentile interval of the AUC over resamples of whole groups (with replacement).

    Resamples that hold only one set have no AUC and are left out; the interval is None
    when more than a tenth of them are.
    """
    from sklearn.metrics import roc_auc_score

    if n_boot <= 0:
        return None, None
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    aucs = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        yb = y[idx]
        if 0 < yb.sum() < len(yb):
            aucs.append(roc_auc_score(yb, p[idx]))
    if len(aucs) < 0.9 * n_boot:
        return None, None
    lo, hi = np.percentile(aucs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def two_sample_test(
    real: torch.Tensor,
    synthetic: torch.Tensor,
    image_size: int | None = 64,
    folds: int = 5,
    repeats: int = 3,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 2e-3,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    region: str = "image",
    groups_real: Sequence | None = None,
    groups_synthetic: Sequence | None = None,
) -> TwoSampleResult:
    """Cross-validate a :class:`Discriminator` between real and synthetic images.

    Grouped, stratified k-fold, repeated: a group (a patient; for a synthetic image, its
    healthy source's patient) is never on both sides of a split, so a discriminator cannot
    tell a synthetic image from its own source by having memorised the source as "real"
    (that pushes the AUC below 0.5 whenever the real set holds the sources). Keep the real
    set disjoint from the sources all the same: a real image and a synthetic copy of it in
    one group are then both scored, which measures the painting, not the choice of sources.

    Args:
        real: (N_r, 1, H, W) in [0, 1].
        synthetic: (N_s, 1, H', W') in [0, 1].
        image_size: both sets are resized to this side (None: keep; sizes must then match).
        folds: k of the k-fold split (>= 2).
        repeats: cross-validations with other fold assignments; their spread is reported.
        epochs, batch_size, lr: Adam training of each fold's discriminator.
        n_boot: resamples of groups for the AUC interval.
        alpha: 0.05 gives a 95% interval.
        seed: seeds the folds, the weights, the batches and the bootstrap; the global torch
            RNG is left as it was.
        region: carried into the result and metric names.
        groups_real, groups_synthetic: a group key per image (patient id; the source's
            patient for a synthetic image); None or an empty key: a group of its own.

    Raises:
        ValueError: images outside [0, 1], mismatched sizes, too few groups for ``folds``.
    """
    from sklearn.metrics import roc_auc_score

    validate_batch(real, "real")
    validate_batch(synthetic, "synthetic")
    if folds < 2 or repeats < 1:
        raise ValueError(f"folds must be >= 2 and repeats >= 1, got {folds} and {repeats}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    r, s = _resize(real.cpu(), image_size), _resize(synthetic.cpu(), image_size)
    if r.shape[-2:] != s.shape[-2:]:
        raise ValueError(f"real {tuple(r.shape[-2:])} and synthetic {tuple(s.shape[-2:])} sizes differ; set image_size")
    x = torch.cat([r, s])
    y = np.concatenate([np.zeros(len(r), np.int64), np.ones(len(s), np.int64)])
    groups = _group_codes(len(r), len(s), groups_real, groups_synthetic)
    scores = np.zeros((repeats, len(y)))
    aucs, train_accs, train_sizes = [], [], []
    for rep in range(repeats):
        for k, (tr, te) in enumerate(_folds(y, groups, folds, seed + 1000 * rep)):
            p_te, acc = _fit_score(x, y, tr, te, epochs, batch_size, lr, seed + 1000 * rep + k)
            scores[rep, te] = p_te
            train_accs.append(acc)
            train_sizes.append(len(tr))
        aucs.append(float(roc_auc_score(y, scores[rep])))
    lo, hi = _cluster_bootstrap_auc(y, scores.mean(0), groups, n_boot, seed, alpha)
    return TwoSampleResult(
        auc=float(np.mean(aucs)), low=lo, high=hi, n_train=int(round(np.mean(train_sizes))), n_test=len(y),
        n_real=len(r), n_synthetic=len(s), epochs=epochs, region=region, train_accuracy=float(np.mean(train_accs)),
        folds=folds, repeats=repeats, auc_repeats=tuple(aucs), n_groups=int(groups.max() + 1),
        grouped=groups_real is not None or groups_synthetic is not None,
    )


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
