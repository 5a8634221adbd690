"""Training the velocity network: masks, batches, one step, and the loop (pure functions).

Training examples come in two kinds:

* **finding examples** (share ``finding_fraction``): an image that has a finding, masked by
  that finding's mask (phantom ground truth by default, or any ``mask_fn``, e.g. an
  attention source); the network is conditioned on that finding (plus any other finding of
  the image whose mask overlaps it). It learns to paint the finding into the hole.
* **healthy examples**: a healthy image masked by a random blob or box, or (half of them)
  by a finding's mask taken from another image, conditioned on no finding (all zeros). It
  learns to fill a hole with plausible healthy tissue; since finding-shaped holes occur
  with and without the finding, the mask's shape does not give the label away and the
  network has to use the label (measured: without this, conditioning on the finding or on
  nothing gave the same fills).

Each example is cropped around its mask exactly as at sampling time (with a random margin
and shift), so the network sees the same crop statistics. Label dropout replaces the
findings by the null token so that classifier-free guidance works. Nothing here imports
Ray; ``jobs/train_generator.py`` wraps :func:`fit_generator`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from augment.config import InpaintingConfig
from augment.data.io import read_image
from augment.data.nih import NIHIndex, Record
from augment.findings import FINDINGS
from augment.inpainting.crop import coord_maps, crop, crop_mask, mask_boxes
from augment.inpainting.interpolant import masked_mse, sample_path
from augment.inpainting.model import Conditioning, autocast, to_model_space

log = logging.getLogger(__name__)

__all__ = [
    "MaskFn",
    "GeneratorTrainingSet",
    "TrainBatch",
    "FitResult",
    "phantom_mask_fn",
    "attention_mask_fn",
    "build_training_set",
    "random_masks",
    "sample_batch",
    "training_step",
    "make_optimizer",
    "fit_generator",
    "preview_inputs",
]

HEALTHY_FINDING_MASK_SHARE = 0.5
"""Share of healthy examples masked with a finding's mask (transplanted) instead of a random blob/box."""

MaskFn = Callable[[Record, torch.Tensor, str], "np.ndarray | torch.Tensor | None"]
"""mask_fn(record, image (1, 1, S, S) in [0, 1], finding) -> (H, W) mask in [0, 1], or None."""


def phantom_mask_fn(root: Any) -> MaskFn:
    """The phantom data set's ground-truth masks (``augment.data.phantom.load_phantom_mask``)."""
    from augment.data.phantom import load_phantom_mask

    def fn(rec: Record, image: torch.Tensor, finding: str) -> np.ndarray | None:
        try:
            m = load_phantom_mask(root, rec.image_index, finding)
        except ValueError:  # a finding the phantom does not draw
            return None
        return m if m.any() else None

    return fn


def attention_mask_fn(source: Any, threshold: float = 0.5, min_area: float = 0.002, max_area: float = 0.25) -> MaskFn:
    """Masks from an attention source (:class:`augment.attention.AttentionSource`): its map, thresholded.

    Args:
        source: any object with ``finding_map(image, finding, image_ids)``.
        threshold, min_area, max_area: as in :func:`augment.attention.to_mask` (the
            ``attention`` section of the config).
    """
    from augment.attention.base import to_mask

    def fn(rec: Record, image: torch.Tensor, finding: str) -> torch.Tensor | None:
        maps = source.finding_map(image, finding, [rec.image_index])
        m = to_mask(maps, threshold, min_area, max_area)[0, 0]
        return m if bool(m.any()) else None

    return fn


@dataclass(frozen=True)
class GeneratorTrainingSet:
    """Images and masks to train the inpainter on, in memory.

    Attributes:
        images: (N, 1, S, S) float32 in [0, 1].
        labels: (N, 14) multi-hot image labels.
        mask_rows: (M,) long, the image of each finding mask.
        masks: (M, 1, S, S) bool finding masks.
        mask_findings: (M, 14) the conditioning of each finding mask (its finding plus
            overlapping findings of the same image).
        healthy_rows: (K,) long, images for random-mask examples.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mask_rows: torch.Tensor
    masks: torch.Tensor
    mask_findings: torch.Tensor
    healthy_rows: torch.Tensor

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def summary(self) -> dict[str, int]:
        """Counts: images, healthy images, finding masks per finding."""
        out = {"images": int(self.images.shape[0]), "healthy": int(self.healthy_rows.numel()), "masks": int(self.masks.shape[0])}
        if self.masks.shape[0]:
            primary = self.mask_findings.sum(0)
            for j, f in enumerate(FINDINGS):
                if primary[j] > 0:
                    out[f"masks.{f}"] = int(primary[j])
        return out


def _as_mask(m: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(m, dtype=np.float32) if not isinstance(m, torch.Tensor) else m).float()
    t = t.reshape(t.shape[-2], t.shape[-1])[None, None]
    if t.shape[-1] != size or t.shape[-2] != size:
        t = F.interpolate(t, size=(size, size), mode="area")
    return t[0] > 0.5


def build_training_set(
    index: NIHIndex,
    image_size: int,
    mask_fn: MaskFn | None = None,
    findings: list[str] | None = None,
) -> GeneratorTrainingSet:
    """Load the images of ``index`` and the masks of their findings.

    Args:
        index: the training rows (the train split; never validation or test).
        image_size: side length images and masks are resized to.
        mask_fn: where a finding lives; default the phantom ground truth under ``index.root``.
        findings: restrict finding masks to these (default: all 14).

    Raises:
        ValueError: an empty index.
    """
    if len(index) == 0:
        raise ValueError("the training index is empty; pass the train split of prepare_data(cfg)")
    mask_fn = mask_fn or phantom_mask_fn(index.root)
    wanted = set(findings or FINDINGS)
    imgs, rows, masks, conds = [], [], [], []
    for i, rec in enumerate(index.records):
        img = torch.from_numpy(np.ascontiguousarray(read_image(index.path(rec), image_size)))[None, None]
        imgs.append(img[0])
        found: list[tuple[int, torch.Tensor]] = []
        for f in rec.labels:
            if f not in FINDINGS:
                continue
            m = mask_fn(rec, img, f)
            if m is None:
                continue
            mt = _as_mask(m, image_size)
            if mt.any():
                found.append((FINDINGS.index(f), mt))
        for j, mt in found:
            c = torch.zeros(len(FINDINGS))
            for k, other in found:
                if k == j or (other & mt).any():
                    c[k] = 1.0
            if FINDINGS[j] in wanted:
                rows.append(i)
                masks.append(mt)
                conds.append(c)
    images = torch.stack(imgs)
    labels = torch.from_numpy(index.labels_matrix())
    healthy = torch.tensor([i for i, r in enumerate(index.records) if r.is_healthy], dtype=torch.long)
    if healthy.numel() == 0:
        log.warning("no healthy images in the training index: random-mask examples use every image")
        healthy = torch.arange(len(index))
    if not masks:
        log.warning("no finding masks found: the inpainter learns healthy filling only (check mask_fn / data source)")
    s = image_size
    return GeneratorTrainingSet(
        images=images,
        labels=labels,
        mask_rows=torch.tensor(rows, dtype=torch.long),
        masks=torch.stack(masks) if masks else torch.zeros(0, 1, s, s, dtype=torch.bool),
        mask_findings=torch.stack(conds) if conds else torch.zeros(0, len(FINDINGS)),
        healthy_rows=healthy,
    )


def random_masks(n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random blobs and boxes, each covering roughly 1-12% of the image.

    Args:
        n: how many.
        size: side length.
        generator: CPU generator.

    Returns:
        (n, 1, size, size) bool; never empty.
    """
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    out = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in range(n):
        r = torch.rand(8, generator=generator)
        if r[0] < 0.5:  # box
            h = int(size * (0.08 + 0.27 * r[1])) + 1
            w = int(size * (0.08 + 0.27 * r[2])) + 1
            top = int((size - h) * r[3])
            left = int((size - w) * r[4])
            out[i, 0, top : top + h, left : left + w] = True
        else:  # blob: a few Gaussian bumps, thresholded
            k = 1 + int(3 * r[1])
            c = torch.rand(k, 2, generator=generator) * size * 0.7 + size * 0.15
            sig = (0.04 + 0.08 * torch.rand(k, generator=generator)) * size
            field = torch.zeros(size, size)
            for j in range(k):
                field += torch.exp(-((yy - c[j, 0]) ** 2 + (xx - c[j, 1]) ** 2) / (2 * sig[j] ** 2))
            m = field > 0.5
            if not m.any():
                m = field >= field.max()
            out[i, 0] = m
    return out


@dataclass(frozen=True)
class TrainBatch:
    """A batch of crops for one step: targets ``x1`` (B, 1, S, S) in model space and their conditioning."""

    x1: torch.Tensor
    cond: Conditioning


def _pick_masks(data: GeneratorTrainingSet, n: int, how: str, generator: torch.Generator | None,
                focus: list[str] | None = None, focus_weight: float = 1.0) -> torch.Tensor:
    """``n`` rows of ``data.masks``: uniform over masks, or (balanced) uniform over findings first,
    so that a rare finding (the ones augmentation is for) is trained on as often as a common one.
    Masks of a ``focus`` finding weigh ``focus_weight`` times more."""
    if how == "proportional":
        weights = torch.ones(data.masks.shape[0])
    else:
        counts = data.mask_findings.sum(0).clamp(min=1.0)
        weights = (data.mask_findings / counts).amax(dim=1)  # a mask counts for its rarest finding
        weights = torch.where(weights > 0, weights, torch.ones_like(weights) / counts.max())
    if focus and focus_weight != 1.0:
        cols = [FINDINGS.index(f) for f in focus]
        hit = data.mask_findings[:, cols].sum(1) > 0
        weights = torch.where(hit, weights * focus_weight, weights)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def grow_masks(masks: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """Dilate each (1, S, S) bool mask by its own margin in pixels (a square neighbourhood)."""
    out = masks.clone()
    for r in sorted({int(v) for v in margins.tolist()} - {0}):
        sel = margins == r
        out[sel] = F.max_pool2d(masks[sel].float(), 2 * r + 1, stride=1, padding=r) > 0.5
    return out


def sample_batch(
    data: GeneratorTrainingSet,
    cfg: InpaintingConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> TrainBatch:
    """Draw ``cfg.batch_size`` finding / healthy examples, cropped around their masks."""
    b = cfg.batch_size
    s = data.image_size
    use_finding = torch.rand(b, generator=generator) < cfg.finding_fraction
    if data.masks.shape[0] == 0:
        use_finding[:] = False
    x = torch.empty(b, 1, s, s)
    m = torch.empty(b, 1, s, s, dtype=torch.bool)
    lab = torch.zeros(b, len(FINDINGS))
    n_f = int(use_finding.sum())
    if n_f:
        pick = _pick_masks(data, n_f, cfg.finding_sampling, generator, cfg.focus_findings, cfg.focus_weight)
        x[use_finding] = data.images[data.mask_rows[pick]]
        m[use_finding] = data.masks[pick]
        lab[use_finding] = data.mask_findings[pick]
    n_h = b - n_f
    if n_h:
        pick = data.healthy_rows[torch.randint(data.healthy_rows.numel(), (n_h,), generator=generator)]
        x[~use_finding] = data.images[pick]
        hm = random_masks(n_h, s, generator)
        if data.masks.shape[0]:
            # Half of the healthy examples get a finding's mask from another image: the mask's
            # shape must not give the finding away, or the network learns to ignore the label.
            swap = torch.rand(n_h, generator=generator) < HEALTHY_FINDING_MASK_SHARE
            k = int(swap.sum())
            if k:
                hm[swap] = data.masks[torch.randint(data.masks.shape[0], (k,), generator=generator)]
        m[~use_finding] = hm
    if cfg.region_margin > 0:
        # regions larger than the lesion, as at paint time under the lesion coupling: the
        # network learns to draw the lesion's boundary, not to fill the hole's outline
        m = grow_masks(m, torch.randint(0, cfg.region_margin + 3, (b,), generator=generator))
    jitter = torch.rand(b, 3, generator=generator)  # margin up to doubled, random shift
    boxes = mask_boxes(m, cfg.crop_size, cfg.context, jitter=jitter)
    x1 = to_model_space(crop(x, boxes, cfg.crop_size))
    mc = crop_mask(m.float(), boxes, cfg.crop_size)
    coords = coord_maps(boxes, s, s, cfg.crop_size)
    null = torch.rand(b, generator=generator) < cfg.label_dropout
    dev = torch.device(device)
    cond = Conditioning(
        mask=mc.to(dev),
        known=(x1 * (1.0 - mc)).to(dev),
        coords=coords.to(dev),
        findings=lab.to(dev),
        null=null.to(dev),
    )
    return TrainBatch(x1=x1.to(dev), cond=cond)


def make_optimizer(model: torch.nn.Module, cfg: InpaintingConfig) -> torch.optim.Optimizer:
    """AdamW at ``cfg.lr`` (no weight decay on the small network)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: TrainBatch,
    cfg: InpaintingConfig,
    generator: torch.Generator | None = None,
    ema: Any | None = None,
) -> float:
    """One optimisation step on the mask-weighted flow-matching loss; returns the loss.

    Args:
        model: the velocity network, in train mode.
        optimizer: its optimiser.
        batch: from :func:`sample_batch`.
        cfg: ``gamma``, ``mask_loss_weight``, ``bf16``.
        generator: CPU generator for the path's noise and time.
        ema: an EMA (see :func:`~augment.inpainting.model.make_ema`) updated after the step.
    """
    device = batch.x1.device
    path = sample_path(batch.x1, batch.cond.mask, cfg.gamma, generator)
    with autocast(device, cfg.bf16):
        v = model(path.xt, path.t, batch.cond)
    loss = masked_mse(v, path.dxt, batch.cond.mask, cfg.mask_loss_weight)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"generator loss is {loss.item()}; lower inpainting.lr (now {cfg.lr}) or turn off bf16")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if ema is not None:
        ema.step(model.parameters())
    return float(loss.detach())


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_generator` did.

    Attributes:
        losses: loss of every step run in this call.
        start_step, end_step: the global step range ``[start_step, end_step)``.
        seconds: wall time.
    """

    losses: tuple[float, ...]
    start_step: int
    end_step: int
    seconds: float

    @property
    def steps_per_second(self) -> float:
        return (self.end_step - self.start_step) / self.seconds if self.seconds > 0 else math.nan


def fit_generator(
    model: torch.nn.Module,
    data: GeneratorTrainingSet,
    cfg: InpaintingConfig,
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    ema: Any | None = None,
    start_step: int = 0,
    callback: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train for ``steps`` steps (default ``cfg.train_steps - start_step``).

    Args:
        model: the velocity network (on its device).
        data: from :func:`build_training_set`.
        cfg: the inpainting config.
        steps: how many steps to run in this call.
        generator: CPU generator driving every draw (seeded by the caller; its state can be
            saved with the checkpoint to resume exactly).
        optimizer: default :func:`make_optimizer`.
        ema: updated after every step when given.
        start_step: the global step this call starts at (resuming).
        callback: ``callback(step, loss)`` after every step (global step, 1-based); the
            job uses it for metrics, sample grids and checkpoints.
        progress: a tqdm bar.
    """
    if steps is None:
        steps = max(cfg.train_steps - start_step, 0)
    device = next(model.parameters()).device
    optimizer = optimizer or make_optimizer(model, cfg)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = None
    if progress and steps > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="generator", unit="step", leave=False)
    for i in range(steps):
        batch = sample_batch(data, cfg, generator, device)
        loss = training_step(model, optimizer, batch, cfg, generator, ema)
        losses.append(loss)
        step = start_step + i + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
        if callback is not None:
            callback(step, loss)
    if bar is not None:
        bar.close()
    return FitResult(tuple(losses), start_step, start_step + steps, time.perf_counter() - t0)


def preview_inputs(
    data: GeneratorTrainingSet, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Healthy images with a finding's mask from another image: what the pipeline asks for.

    Returns:
        (images (n, 1, S, S), masks (n, 1, S, S) bool, findings (n, 14)); with no finding
        masks, random masks and no findings.
    """
    rows = data.healthy_rows[torch.randint(data.healthy_rows.numel(), (n,), generator=generator)]
    images = data.images[rows]
    if data.masks.shape[0] == 0:
        return images, random_masks(n, data.image_size, generator), torch.zeros(n, len(FINDINGS))
    pick = torch.randint(data.masks.shape[0], (n,), generator=generator)
    return images, data.masks[pick], data.mask_findings[pick]
