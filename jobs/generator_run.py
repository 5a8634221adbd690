"""What every generator-training job shares (the flow model's, :mod:`jobs.train_generator`, and the
baselines', :mod:`jobs.train_baseline`): the checkpoint's name, the result, where findings live in
training images, and the preview grid logged while training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from augment.config import InpaintingConfig, RunConfig
from augment.data.nih import NIHIndex

log = logging.getLogger("cxr.train_generator")

__all__ = ["CHECKPOINT_NAME", "TrainedGenerator", "default_mask_fn", "sample_grid"]

CHECKPOINT_NAME = "generator.pt"


@dataclass(frozen=True)
class TrainedGenerator:
    """The outcome of :func:`jobs.train_generator.train_generator` or :func:`jobs.train_baseline.train_baseline`.

    Attributes:
        checkpoint_path: ``{state_dict (EMA), config, version}`` in ``out_dir``.
        run_id: the MLflow run, or None when tracking is off.
        losses: the loss of every step since step 1 (resumed steps included).
        resumed_from_step: the step training resumed at (None: started fresh).
        seconds: wall time of ``trainer.fit()`` (Ray start-up excluded).
    """

    checkpoint_path: Path
    run_id: str | None
    losses: tuple[float, ...]
    resumed_from_step: int | None
    seconds: float


def default_mask_fn(cfg: RunConfig, index: NIHIndex):
    """Where findings live in training images: phantom ground truth, else NIH boxes, else none."""
    from augment.inpainting.train import attention_mask_fn, phantom_mask_fn

    if cfg.data.source == "phantom" or (Path(index.root) / "masks").is_dir():
        return phantom_mask_fn(index.root)
    if index.bboxes:
        from augment.attention import BBoxSource

        a = cfg.attention
        return attention_mask_fn(BBoxSource(index), a.threshold, a.min_area, a.max_area)
    log.warning("no phantom masks and no NIH boxes under %s: pass mask_fn (e.g. Grad-CAM masks) to paint findings", index.root)
    return lambda rec, image, finding: None


def sample_grid(painter: Any, data: Any, icfg: InpaintingConfig, n: int = 4, seed: int = 0, title: str = ""):
    """A figure of n rows (healthy input, mask, output) on fixed inputs (same ``seed`` each time),
    painted by ``painter`` (an :class:`augment.painter.Painter` of any kind)."""
    from augment.evaluation.plots import image_grid
    from augment.findings import FINDINGS
    from augment.inpainting.train import preview_inputs
    images, masks, findings = preview_inputs(data, n, torch.Generator().manual_seed(seed))
    res = painter.paint(images, masks, findings, icfg, torch.Generator().manual_seed(seed))
    cells, titles, overlays = [], [], []
    for i in range(n):
        names = "+".join(FINDINGS[j] for j in torch.nonzero(findings[i]).flatten()) or "healthy"
        cells += [images[i], images[i], res.images[i]]
        overlays += [None, masks[i], None]
        titles += [f"{title} input", f"mask: {names}"[:30], "output"]
    return image_grid(cells, titles, ncols=3, overlays=overlays)


