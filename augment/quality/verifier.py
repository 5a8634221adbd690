"""The local finding verifier: does the crop around a painted region show the finding?

A whole-image classifier trained on a few dozen Mass images does not see a mass painted
into a healthy film (its probability stays flat), so the gate that asks it rejects
everything. The verifier asks a narrower question where the answer lives: a small
multi-label network over a crop centred on the region (``verifier.crop_size`` working
pixels, resized to ``verifier.input_size``, standardised per crop) says, per finding,
whether the crop shows it.

What it learns from (:func:`build_crops`), per finding:

* **positives**: crops around real finding regions of the training split (the attention
  source's maps: phantom ground-truth masks, NIH boxes, or Grad-CAM regions), re-centred a
  few pixels off and mirrored (``positive_repeats``, ``positive_jitter``);
* **pasted positives** (training only, ``pasted_positives``): the region's lesion (its
  contrast against its filled-in surroundings) added at the same place to images without the
  finding, so that a real lesion on someone else's anatomy, which is what the augment job
  makes, is learnt as the finding and not as "this patient's film";
* **place negatives**: crops of the same place in training images without the finding;
* **hard negatives**: that place with the lesion's own region filled with noise matched to
  its surroundings, with their mean, or with a blur of them, or painted by the generator
  conditioned on "No Finding" (``hard_negatives``; ``generator`` needs a ``painter``), so that
  "something changed in the region" or "the generator's texture" is not "the finding is there";
* a crop that is a positive of one finding is a negative of every other finding its image
  does not show (another finding's lesion is a negative).

Targets are per finding: 1 (this crop shows it), 0 (its image does not show it), or
ignored (its image shows it somewhere else). Each finding's operating threshold is chosen on
crops of the validation split (patient-disjoint from training) by Youden's J, placed midway
(in logit space) between the last negative and the first positive it separates, so that a
perfectly separated handful of positives does not put it at 0.99.

Nothing here imports Ray: ``jobs/train_verifier.py`` trains it under Ray Train.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from augment.checkpoint import CheckpointError, check_format, read_checkpoint, weights_of
from augment.config import VerifierConfig
from augment.data.io import atomic_torch_save

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "KINDS",
    "CropSet",
    "Verifier",
    "VerifierNet",
    "build_crops",
    "crop_at",
    "fill",
    "fit_verifier",
    "load_verifier",
    "region_centres",
    "save_verifier",
    "separating_threshold",
    "false_pass_threshold",
    "verifier_report",
]

CHECKPOINT_NAME = "verifier.pt"
CHECKPOINT_VERSION = 1
KINDS = ("positive", "pasted", "place", "noise", "mean", "blur", "generator")
"""The kinds of crop :func:`build_crops` makes (``place``: the same place in an image without the finding)."""
POSITIVE_KINDS = ("positive", "pasted")
"""The kinds whose crops show the finding."""


# ----------------------------------------------------------------------------- crops


def region_centres(masks: torch.Tensor) -> torch.Tensor:
    """(B, 2) long (row, col): the region's pixel nearest to its centroid; (-1, -1) for an empty mask.

    The centroid of a crescent (a pneumothorax rim) lies off the region; its nearest pixel
    does not.
    """
    m = masks.reshape(masks.shape[0], *masks.shape[-2:]) > 0.5
    out = torch.full((m.shape[0], 2), -1, dtype=torch.long)
    for i in range(m.shape[0]):
        rc = torch.nonzero(m[i])
        if rc.shape[0] == 0:
            continue
        c = rc.float().mean(0)
        out[i] = rc[int(torch.argmin(((rc.float() - c) ** 2).sum(1)))]
    return out


def crop_at(images: torch.Tensor, centres: torch.Tensor, side: int, out: int) -> torch.Tensor:
    """(B, 1, out, out): a ``side`` x ``side`` crop of each image centred on its centre, resized.

    Edges are replicated where the crop runs off the image.
    """
    b, _, h, w = images.shape
    half = side // 2
    padded = F.pad(images.float(), (half, half, half, half), mode="replicate")
    crops = torch.empty(b, 1, side, side)
    for i in range(b):
        r, c = (int(v) for v in centres[i])
        r, c = min(max(r, 0), h - 1), min(max(c, 0), w - 1)
        crops[i] = padded[i, :, r : r + side, c : c + side]
    if side != out:
        mode = {"mode": "area"} if side > out else {"mode": "bilinear", "align_corners": False}
        crops = F.interpolate(crops, size=(out, out), **mode)
    return crops


def standardise(crops: torch.Tensor) -> torch.Tensor:
    """Per-crop zero mean and unit spread (a floor on the spread keeps flat crops flat)."""
    mean = crops.mean(dim=(1, 2, 3), keepdim=True)
    std = crops.std(dim=(1, 2, 3), keepdim=True)
    return (crops - mean) / (std + 0.02)


def fill(images: torch.Tensor, region: torch.Tensor, how: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """``region`` of each image replaced by ``how``: ``noise`` matched to the ring around it, its ``mean``, or a ``blur``.

    The ring is the region grown by 4 pixels, minus the region. These are the fills a gate
    must not mistake for a finding (hard negatives here, negative controls in the benchmark).
    """
    from augment.registration.transfer import fill_region

    m = region > 0.5
    if how == "blur":
        return fill_region(images.float(), m, grow=0)
    grown = F.max_pool2d(m.float(), 9, stride=1, padding=4) > 0.5
    ring = grown & ~m
    out = images.float().clone()
    for i in range(images.shape[0]):
        if not bool(m[i].any()):
            continue
        px = images[i][ring[i]] if bool(ring[i].any()) else images[i].flatten()
        mu, sd = float(px.mean()), float(px.std()) if px.numel() > 1 else 0.0
        if how == "mean":
            vals = torch.full((int(m[i].sum()),), mu)
        elif how == "noise":
            vals = mu + max(sd, 0.02) * torch.randn(int(m[i].sum()), generator=generator)
        else:
            raise ValueError(f"unknown fill {how!r}; use noise, mean or blur")
        out[i][m[i]] = vals.clamp(0.0, 1.0)
    return out


@dataclass
class CropSet:
    """Crops and their per-finding targets.

    Attributes:
        crops: (N, 1, S, S) float32, standardised.
        targets: (N, F) float32 over ``findings``: 1, 0, or -1 (ignored).
        kinds: (N,) kind of each crop (:data:`KINDS`).
        finding: (N,) the finding whose region the crop was taken at.
        groups: (N,) patient ids.
        findings: the target columns.
    """

    crops: np.ndarray
    targets: np.ndarray
    kinds: np.ndarray
    finding: np.ndarray
    groups: np.ndarray
    findings: list[str]
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    def counts(self) -> dict[str, dict[str, int]]:
        return {f: {k: int(((self.finding == f) & (self.kinds == k)).sum()) for k in KINDS} for f in self.findings}


def _targets_for(labels: Sequence[str], findings: list[str], positive: str | None) -> list[float]:
    return [1.0 if g == positive else (-1.0 if g in labels else 0.0) for g in findings]


def build_crops(
    index: Any,
    findings: list[str],
    attention: Any,
    cfg: VerifierConfig,
    image_size: int,
    *,
    training: bool,
    seed: int = 0,
    read: Callable[[Path, int], np.ndarray] | None = None,
    painter: Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor] | None = None,
    paint_grow: int = 0,
) -> CropSet:
    """Crops of ``index`` for the verifier (see the module doc).

    Args:
        index: an :class:`~augment.data.nih.NIHIndex` (a split).
        findings: the verifier's findings (its output columns).
        attention: an attention source (``finding_map(images, finding, image_ids=...)``).
        cfg: crop sizes, negatives, repeats.
        image_size: the working resolution images are read at.
        training: jitter and repeat positives (validation crops are taken once, centred).
        seed: crop placement and fills.
        painter: ``painter(images, regions, seeds)`` -> the images with each region repainted as
            healthy tissue by the generator (B, 1, H, W); needed when ``cfg.hard_negatives``
            names ``generator``.
        paint_grow: pixels the lesion's region grows before the painter repaints it (the augment
            job paints a region larger than the lesion: ``inpainting.region_margin`` + 2).

    Returns:
        A :class:`CropSet`; a finding without any region in ``index`` is named in ``skipped``.

    Raises:
        ValueError: ``generator`` hard negatives without a painter; no crop at all.
    """
    from augment.data.io import read_image

    read = read or read_image
    if "generator" in cfg.hard_negatives and painter is None:
        raise ValueError("verifier.hard_negatives names 'generator' but no generator was given to paint them: "
                         "pass the generator checkpoint, or drop 'generator' from verifier.hard_negatives")
    rng = np.random.default_rng(seed)
    rng_paint = np.random.default_rng([seed, 1])
    rng_paste = np.random.default_rng([seed, 2])
    gen = torch.Generator().manual_seed(seed)
    crops: list[torch.Tensor] = []
    targets: list[list[float]] = []
    kinds: list[str] = []
    which: list[str] = []
    groups: list[int] = []
    skipped: dict[str, str] = {}
    cache: dict[str, torch.Tensor] = {}
    to_paint: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []  # (image, region, centre, crop slot)

    def image(rec: Any) -> torch.Tensor:
        if rec.image_index not in cache:
            cache[rec.image_index] = torch.from_numpy(np.ascontiguousarray(read(index.path(rec), image_size)))[None, None]
        return cache[rec.image_index]

    repeats = cfg.positive_repeats if training else 1
    jitter = cfg.positive_jitter if training else 0
    for f in findings:
        recs = index.with_finding(f)
        if len(recs) > cfg.max_regions:
            recs = [recs[i] for i in sorted(rng.choice(len(recs), cfg.max_regions, replace=False))]
        others = [r for r in index.records if f not in r.labels]
        if not recs or not others:
            skipped[f] = f"no image shows {f}" if not recs else f"every image shows {f}"
            continue
        imgs = torch.cat([image(r) for r in recs])
        maps = attention.finding_map(imgs, f, image_ids=[r.image_index for r in recs])
        masks = maps >= 0.5
        centres = region_centres(masks)
        n_regions = 0
        for i, rec in enumerate(recs):
            if int(centres[i, 0]) < 0:
                continue
            n_regions += 1
            for _ in range(repeats):
                c = centres[i : i + 1] + torch.from_numpy(rng.integers(-jitter, jitter + 1, size=(1, 2)))
                crop = crop_at(imgs[i : i + 1], c, cfg.crop_size, cfg.input_size)
                crops.append(crop)
                targets.append(_targets_for(rec.labels, findings, f))
                kinds.append("positive")
                which.append(f)
                groups.append(rec.patient_id)
            if training and cfg.pasted_positives:
                from augment.registration.lesion import lesion_contrast

                contrast = lesion_contrast(imgs[i : i + 1], masks[i : i + 1])
                for _ in range(cfg.pasted_positives):  # its own stream, as the generator's negatives
                    host = others[int(rng_paste.integers(len(others)))]
                    pasted = (image(host) + contrast).clamp(0.0, 1.0)
                    c = centres[i : i + 1] + torch.from_numpy(rng_paste.integers(-jitter, jitter + 1, size=(1, 2)))
                    crops.append(crop_at(pasted, c, cfg.crop_size, cfg.input_size))
                    targets.append(_targets_for(host.labels, findings, f))
                    kinds.append("pasted")
                    which.append(f)
                    groups.append(host.patient_id)
            picks = rng.choice(len(others), size=min(cfg.negatives_per_positive, len(others)), replace=False)
            for j in picks:
                neg = others[int(j)]
                crops.append(crop_at(image(neg), centres[i : i + 1], cfg.crop_size, cfg.input_size))
                targets.append(_targets_for(neg.labels, findings, None))
                kinds.append("place")
                which.append(f)
                groups.append(neg.patient_id)
            for how in cfg.hard_negatives:
                if how == "generator":  # its own stream: the other crops are the same with or without it
                    neg = others[int(rng_paint.integers(len(others)))]
                    region = masks[i : i + 1].float()
                    if paint_grow > 0:
                        region = F.max_pool2d(region, 2 * paint_grow + 1, stride=1, padding=paint_grow)
                    to_paint.append((image(neg), region > 0.5, centres[i : i + 1], len(crops)))
                    crops.append(torch.empty(0))  # filled below, once the painter has run in batches
                else:
                    neg = others[int(rng.integers(len(others)))]
                    filled = fill(image(neg), masks[i : i + 1].float(), how, generator=gen)
                    crops.append(crop_at(filled, centres[i : i + 1], cfg.crop_size, cfg.input_size))
                targets.append(_targets_for(neg.labels, findings, None))
                kinds.append(how)
                which.append(f)
                groups.append(neg.patient_id)
        if n_regions == 0:
            skipped[f] = f"the {getattr(attention, 'name', 'attention')} source gave no region for any of its {len(recs)} images"
    for k in range(0, len(to_paint), 16):
        chunk = to_paint[k : k + 16]
        painted = painter(torch.cat([c[0] for c in chunk]), torch.cat([c[1] for c in chunk]),  # type: ignore[misc]
                          [seed * 1_000_003 + c[3] for c in chunk])
        for j, (_, _, centre, slot) in enumerate(chunk):
            crops[slot] = crop_at(painted[j : j + 1].float(), centre, cfg.crop_size, cfg.input_size)
    for f, why in skipped.items():
        if training:
            log.warning("verifier: %s is skipped (%s): its synthetic images cannot be verified", f, why)
        else:
            log.info("verifier: no validation crops of %s (%s): its threshold is not chosen on validation", f, why)
    if not crops:
        raise ValueError(f"no verifier crops: none of {findings} has a region in this split ({skipped})")
    x = standardise(torch.cat(crops)).numpy().astype(np.float32)
    return CropSet(
        crops=x,
        targets=np.asarray(targets, np.float32),
        kinds=np.asarray(kinds),
        finding=np.asarray(which),
        groups=np.asarray(groups),
        findings=list(findings),
        skipped=skipped,
    )


# ----------------------------------------------------------------------------- network


class VerifierNet(nn.Module):
    """Two 3x3 convolutions with batch norm per level, a stride-2 pool between levels, global
    average pooling and one logit per finding."""

    def __init__(self, n_findings: int, channels: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for k, c in enumerate(channels):
            if k:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, n_findings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def separating_threshold(y: np.ndarray, score: np.ndarray, max_false_pass: float = 1.0) -> float | None:
    """Youden's J threshold, placed midway in logit space between the two scores it separates.

    Args:
        y: true classes.
        score: probabilities.
        max_false_pass: only cuts that pass at most this share of the negatives are candidates
            (a handful of positives must not buy full sensitivity by passing half the
            negatives); without such a cut, the strictest one.

    Returns None without both classes.
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, np.float64)
    if y.all() or not y.any():
        return None
    order = np.argsort(s)
    s, y = s[order], y[order]
    n_pos, n_neg = y.sum(), (~y).sum()
    # a cut after position k: predicted positive = s[k+1:]
    neg_below = np.cumsum(~y)
    pos_below = np.cumsum(y)
    fpr = (n_neg - neg_below) / n_neg
    j = (n_pos - pos_below) / n_pos - fpr  # tpr - fpr for each cut
    j, fpr = j[:-1], fpr[:-1]  # a cut after the last score predicts nothing positive
    distinct = s[1:] > s[:-1]
    if not distinct.any():
        return float(s[0])
    allowed = distinct & (fpr <= max_false_pass + 1e-12)
    if allowed.any():
        k = int(np.argmax(np.where(allowed, j, -np.inf)))
    else:
        k = int(np.flatnonzero(distinct)[-1])
    eps = 1e-6
    lo, hi = np.clip([s[k], s[k + 1]], eps, 1 - eps)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    mid = 0.5 * (logit(lo) + logit(hi))
    return float(1.0 / (1.0 + math.exp(-mid)))


def false_pass_threshold(neg_score: np.ndarray, max_false_pass: float) -> float | None:
    """The loosest cut that passes at most ``max_false_pass`` of the negatives, from negatives alone.

    For a finding with too few validation regions to place Youden's J: the cut is still chosen
    on validation, as a false-pass rate (Neyman-Pearson), midway in logit space between the
    highest negative it rejects and the next one down. None when there are no negatives or
    ``max_false_pass`` is 1 (no cap: nothing to choose by).
    """
    s = np.sort(np.asarray(neg_score, np.float64))[::-1]  # highest first
    if not len(s) or max_false_pass >= 1.0:
        return None
    k = int(math.floor(max_false_pass * len(s) + 1e-9))  # this many negatives may pass
    while 0 < k < len(s) and s[k - 1] == s[k]:
        k -= 1  # ties: a cut cannot pass some of equal scores and not the others
    eps = 1e-6
    hi = float(np.clip(s[k - 1], eps, 1 - eps)) if k > 0 else 1 - eps
    lo = float(np.clip(s[k], eps, 1 - eps)) if k < len(s) else eps
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    mid = 0.5 * (logit(lo) + logit(hi))
    return float(1.0 / (1.0 + math.exp(-mid)))


def _augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x + 0.05 * torch.randn(x.shape, generator=gen)


def predict(model: nn.Module, crops: np.ndarray | torch.Tensor, device: torch.device | str = "cpu", batch: int = 256) -> np.ndarray:
    """(N, F) probabilities of standardised crops."""
    x = torch.as_tensor(crops).float()
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out.append(torch.sigmoid(model(x[i : i + batch].to(device))).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def verifier_report(crops: CropSet, probs: np.ndarray, thresholds: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Per finding: AUC over its valid crops, counts, and (with thresholds) the pass rate of each kind of crop."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {}
    for j, f in enumerate(crops.findings):
        t = crops.targets[:, j]
        valid = t >= 0
        y, s = t[valid], probs[valid, j]
        row: dict[str, Any] = {"n_positive": int((y == 1).sum()), "n_negative": int((y == 0).sum()),
                               "auc": float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None}
        thr = (thresholds or {}).get(f)
        if thr is not None:
            row["threshold"] = thr
            for k in KINDS:
                sel = (crops.finding == f) & (crops.kinds == k)
                sel &= t == (1 if k in POSITIVE_KINDS else 0)
                row[f"pass.{k}"] = float((probs[sel, j] >= thr).mean()) if sel.any() else None
        out[f] = row
    return out


@dataclass(frozen=True)
class FitResult:
    state_dict: dict[str, torch.Tensor]
    thresholds: dict[str, float | None]
    threshold_source: dict[str, str]
    report: dict[str, Any]
    history: list[dict[str, float]]


def fit_verifier(
    train: CropSet,
    val: CropSet,
    cfg: VerifierConfig,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    model: nn.Module | None = None,
) -> FitResult:
    """Train the network on ``train``, choose thresholds on ``val``, report on ``val``.

    A finding with fewer than ``cfg.min_val_positives`` validation positives gets the cut that
    passes at most ``cfg.max_false_pass`` of its validation negatives (at least
    ``cfg.min_val_negatives`` of them), else 0.5; ``threshold_source`` says which, with a warning.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = model if model is not None else VerifierNet(len(train.findings), cfg.channels)
    net.to(device)
    x = torch.from_numpy(train.crops)
    t = torch.from_numpy(train.targets)
    pos = (t == 1).sum(0).float()
    neg = (t == 0).sum(0).float()
    pos_weight = (neg / pos.clamp_min(1.0)).clamp(1.0, 10.0).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(train), generator=gen)
        total, n = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            if idx.numel() < 2:
                continue
            xb = _augment_batch(x[idx], gen).to(device)
            tb = t[idx].to(device)
            logits = net(xb)
            w = (tb >= 0).float()
            loss = F.binary_cross_entropy_with_logits(logits, tb.clamp_min(0.0), weight=w, pos_weight=pos_weight, reduction="sum")
            loss = loss / w.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
            n += idx.numel()
        rec = {"epoch": epoch + 1, "train_loss": total / max(n, 1)}
        if epoch == cfg.epochs - 1 or (epoch + 1) % 5 == 0:
            rep = verifier_report(val, predict(net, val.crops, device))
            aucs = [r["auc"] for r in rep.values() if r["auc"] is not None]
            rec["val_macro_auc"] = float(np.mean(aucs)) if aucs else float("nan")
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
    probs = predict(net, val.crops, device)
    thresholds: dict[str, float | None] = {}
    source: dict[str, str] = {}
    for j, f in enumerate(val.findings):
        tt = val.targets[:, j]
        valid = tt >= 0
        n_pos = int((tt == 1).sum())
        if f in train.skipped:
            thresholds[f], source[f] = None, f"not trained: {train.skipped[f]}"
        elif n_pos < cfg.min_val_positives:
            n_neg = int((tt == 0).sum())
            cut = false_pass_threshold(probs[tt == 0, j], cfg.max_false_pass) if n_neg >= cfg.min_val_negatives else None
            if cut is not None:
                thresholds[f] = cut
                source[f] = (f"false-pass cut on {n_neg} validation negative crops (passing at most {cfg.max_false_pass:.0%}); "
                             f"only {n_pos} validation regions (< verifier.min_val_positives {cfg.min_val_positives}) for Youden")
                log.warning("verifier: %s has %d validation regions; its threshold %.3f passes at most %.0f%% of %d validation "
                            "negatives, its sensitivity is not measured", f, n_pos, cut, 100 * cfg.max_false_pass, n_neg)
            else:
                thresholds[f], source[f] = 0.5, (f"default 0.5: only {n_pos} validation regions (< verifier.min_val_positives "
                                                 f"{cfg.min_val_positives}) and {n_neg} negative crops")
                log.warning("verifier: %s has %d validation regions and %d negatives; its threshold is 0.5, not chosen on "
                            "validation", f, n_pos, n_neg)
        else:
            thresholds[f] = separating_threshold(tt[valid] == 1, probs[valid, j], cfg.max_false_pass)
            source[f] = (f"Youden on {n_pos} validation regions and {int((tt == 0).sum())} negative crops, "
                         f"passing at most {cfg.max_false_pass:.0%} of the negatives")
    report = verifier_report(val, probs, thresholds)
    net.cpu()
    return FitResult(weights_of(net), thresholds, source, report, history)


# ----------------------------------------------------------------------------- checkpoint


def save_verifier(path: str | os.PathLike, fit: FitResult, cfg: VerifierConfig, findings: list[str], image_size: int,
                  extra: dict[str, Any] | None = None) -> Path:
    """Atomically write ``{kind, state_dict, config, version, findings, thresholds, image_size, ...}``."""
    payload = {
        "kind": "verifier",
        "state_dict": fit.state_dict,
        "config": cfg.model_dump(mode="json"),
        "version": CHECKPOINT_VERSION,
        "findings": list(findings),
        "thresholds": {f: (None if v is None else float(v)) for f, v in fit.thresholds.items()},
        "threshold_source": dict(fit.threshold_source),
        "image_size": int(image_size),
        "extra": extra or {},
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(payload, p)


class Verifier:
    """A loaded verifier: :meth:`score` gives each item's probability of its target finding on
    the crop around its region, :meth:`threshold` the operating point chosen on validation."""

    def __init__(self, model: nn.Module, cfg: VerifierConfig, findings: list[str], thresholds: dict[str, float | None],
                 image_size: int, threshold_source: dict[str, str] | None = None) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.findings = list(findings)
        self.thresholds = dict(thresholds)
        self.threshold_source = dict(threshold_source or {})
        self.image_size = int(image_size)

    def knows(self, finding: str) -> bool:
        """Whether it was trained on ``finding`` and has a threshold for it."""
        return finding in self.findings and self.thresholds.get(finding) is not None

    def threshold(self, finding: str) -> float:
        t = self.thresholds.get(finding)
        if t is None:
            raise ValueError(f"the verifier has no threshold for {finding} (trained on {self.findings}; "
                             f"{self.threshold_source.get(finding, 'not among its findings')})")
        return float(t)

    def crops(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Standardised crops around each region, at the verifier's working resolution."""
        x, m = images.float().cpu(), masks.float().cpu()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="area")
            m = F.interpolate(m, size=(self.image_size, self.image_size), mode="area")
        centres = region_centres(m >= 0.5 if bool((m >= 0.5).any()) else m > 0)
        empty = centres[:, 0] < 0
        if bool(empty.any()):
            centres[empty] = self.image_size // 2
        return standardise(crop_at(x, centres, self.cfg.crop_size, self.cfg.input_size))

    def score(self, images: torch.Tensor, masks: torch.Tensor, findings: Sequence[str]) -> np.ndarray:
        """(B,) the probability of ``findings[i]`` on the crop around ``masks[i]`` of ``images[i]``."""
        if len(findings) != images.shape[0]:
            raise ValueError(f"got {len(findings)} findings for {images.shape[0]} images")
        for f in set(findings):
            if f not in self.findings:
                raise ValueError(f"the verifier was not trained on {f} (it knows {self.findings})")
        device = next(self.model.parameters()).device
        probs = predict(self.model, self.crops(images, masks), device)
        return np.asarray([probs[i, self.findings.index(f)] for i, f in enumerate(findings)], np.float32)


def load_verifier(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Verifier:
    """Load a verifier checkpoint (``weights_only``; see :func:`augment.checkpoint.read_checkpoint`)."""
    ckpt = read_checkpoint(path, "verifier checkpoint", required=("state_dict", "config", "version", "findings", "thresholds"),
                           map_location=map_location, hint="train one with `python -m jobs.train_verifier`")
    check_format(ckpt, path, "verifier", CHECKPOINT_VERSION, "retrain with `python -m jobs.train_verifier`")
    cfg = VerifierConfig.model_validate(ckpt["config"])
    net = VerifierNet(len(ckpt["findings"]), cfg.channels)
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit the verifier its config describes ({str(exc)[:200]})") from None
    net.to(map_location)
    return Verifier(net, cfg, list(ckpt["findings"]), dict(ckpt["thresholds"]), int(ckpt.get("image_size", 128)),
                    dict(ckpt.get("threshold_source", {})))
