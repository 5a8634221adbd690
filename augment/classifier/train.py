"""The classifier's training loop as plain functions (no Ray, no MLflow).

``fit`` is the source paper's recipe by default: BCEWithLogits, Adam at 1e-4,
ReduceLROnPlateau on the validation loss, 10 epochs. Options: positive-class weights,
light augmentation, early stopping, bf16 autocast on GPU, a seed. Ray Train and MLflow
call it from ``jobs/train_classifier.py`` through the ``on_epoch`` hook and ``resume``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from augment.classifier.metrics import ClassifierMetrics, classification_metrics, loss_gap
from augment.config import ClassifierConfig
from augment.data.dataset import NIHImageDataset
from augment.data.nih import NIHIndex
from augment.device import run_device

log = logging.getLogger(__name__)

__all__ = [
    "EpochRecord",
    "EvalResult",
    "FitResult",
    "augment_batch",
    "pos_weight_from_labels",
    "make_loss",
    "make_optimizer",
    "make_scheduler",
    "train_one_epoch",
    "evaluate",
    "fit",
    "make_loader",
    "TrainState",
]


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training.

    Attributes:
        loss_gap: ``val_loss - train_loss`` (positive when the model overfits).
        train_loss: running mean of the training batches' loss (augmented, train mode).
    """

    epoch: int
    train_loss: float
    val_loss: float
    loss_gap: float
    val_macro_auc: float | None
    lr: float
    seconds: float
    train_images_per_s: float


@dataclass(frozen=True)
class EvalResult:
    """Predictions of a whole loader: mean loss, (N, 14) labels and probabilities."""

    loss: float
    y_true: np.ndarray
    y_prob: np.ndarray

    def metrics(self) -> ClassifierMetrics:
        return classification_metrics(self.y_true, self.y_prob, loss=self.loss)


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` returns; the model passed in holds the final (or best) weights."""

    history: tuple[EpochRecord, ...]
    metrics: ClassifierMetrics
    best_epoch: int
    stopped_early: bool
    restored_best: bool


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Light radiograph augmentation of a (B, 1, H, W) batch in [0, 1].

    A random affine (rotation within 5 degrees, scale 0.95-1.05, shift within 4% of the
    side) and brightness/contrast jitter (+-0.05, x0.9-1.1), drawn per image from
    ``generator``. No horizontal flip: the heart is on the left, and Cardiomegaly depends on it.
    """
    b = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (hi - lo) + lo

    ang = u(-5.0, 5.0) * math.pi / 180.0
    scale = u(0.95, 1.05)
    tx, ty = u(-0.08, 0.08), u(-0.08, 0.08)  # affine_grid coordinates span 2 per side
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = u(0.9, 1.1).to(x.device, x.dtype).view(b, 1, 1, 1)
    bright = u(-0.05, 0.05).to(x.device, x.dtype).view(b, 1, 1, 1)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + bright).clamp_(0.0, 1.0)


def pos_weight_from_labels(labels: np.ndarray | torch.Tensor, max_weight: float = 100.0) -> torch.Tensor:
    """BCE ``pos_weight`` per finding: negatives / positives, 1 where a finding has no positives.

    Args:
        labels: (N, F) multi-hot training labels.
        max_weight: cap, so that a finding with one positive does not dominate.
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    pos = y.sum(0)
    neg = y.shape[0] - pos
    w = torch.where(pos > 0, neg / pos.clamp(min=1.0), torch.ones_like(pos))
    return w.clamp(1.0 / max_weight, max_weight)


def make_loss(cfg: ClassifierConfig, train_labels: np.ndarray | None = None) -> nn.BCEWithLogitsLoss:
    """BCEWithLogits, with ``pos_weight`` from the training labels when ``cfg.pos_weight == 'balanced'``."""
    if cfg.pos_weight == "balanced":
        if train_labels is None:
            raise ValueError("classifier.pos_weight 'balanced' needs the training labels to count positives")
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight_from_labels(train_labels))
    return nn.BCEWithLogitsLoss()


def make_optimizer(model: nn.Module, cfg: ClassifierConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: ClassifierConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=cfg.plateau_patience)


def make_loader(
    index: NIHIndex,
    cfg: ClassifierConfig,
    *,
    shuffle: bool,
    seed: int | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A loader of (images (B, 1, S, S), labels (B, 14)) at ``cfg.image_size`` (in-process decoding, cached)."""
    if len(index) == 0:
        raise ValueError("cannot build a loader over an empty index; check the split")
    ds = NIHImageDataset(index, cfg.image_size)
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last, num_workers=0)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    *,
    augment: bool = False,
    generator: torch.Generator | None = None,
    amp: bool = True,
    channels_last: bool = True,
    max_batches: int | None = None,
) -> tuple[float, int]:
    """One pass over ``loader`` of (images (B, 1, H, W), labels (B, 14)) batches.

    Returns:
        ``(mean loss per image, images seen)``.
    """
    model.train()
    total, seen = 0.0, 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = x.to(device, non_blocking=True)
        if augment:
            x = augment_batch(x, generator)
        x = _to_device(x, device, channels_last)
        y = y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * x.shape[0]
        seen += x.shape[0]
    if seen == 0:
        raise ValueError("the training loader yielded no batches; check the training set and batch size")
    return total / seen, seen


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    device: torch.device,
    *,
    amp: bool = True,
    channels_last: bool = True,
) -> EvalResult:
    """Mean loss, labels and probabilities of ``loader`` in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    total, seen = 0.0, 0
    ys, ps = [], []
    try:
        for x, y in loader:
            x = _to_device(x, device, channels_last)
            y = y.to(device)
            with _autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            total += float(loss_fn(logits, y)) * x.shape[0]
            seen += x.shape[0]
            ys.append(y.cpu().numpy())
            ps.append(torch.sigmoid(logits).cpu().numpy())
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("the evaluation loader yielded no batches; the split is empty")
    return EvalResult(total / seen, np.concatenate(ys), np.concatenate(ps))


@dataclass
class TrainState:
    """Everything needed to resume ``fit`` after the epoch ``epoch`` (0-based count of done epochs)."""

    epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None


def _snapshot(model: nn.Module, optimizer, scheduler, state: TrainState, gen: torch.Generator) -> dict[str, Any]:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "epoch": state.epoch,
        "history": [asdict(r) for r in state.history],
        "best_val_loss": state.best_val_loss,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "best_state": state.best_state,
        "generator": gen.get_state(),
    }


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    cfg: ClassifierConfig,
    *,
    device: torch.device | None = None,
    loss_fn: nn.Module | None = None,
    on_epoch: Callable[[EpochRecord, Callable[[], dict[str, Any]]], None] | None = None,
    resume: dict[str, Any] | None = None,
    eval_model: nn.Module | None = None,
    channels_last: bool = True,
    max_batches: int | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs (the model is changed in place).

    Args:
        model: a :class:`~augment.classifier.model.Classifier` (or a DDP wrapper of one).
        train_loader, val_loader: batches of (images (B, 1, S, S) in [0, 1], labels (B, 14)).
        cfg: lr, epochs, plateau and early-stopping patience, augmentation, amp, seed.
        device: default: CUDA when present.
        loss_fn: default ``make_loss(cfg, labels)`` with the labels of ``train_loader.dataset``.
        on_epoch: called after each epoch with the record and a function returning the full
            training state (for checkpoints; only built when called).
        resume: such a state, to continue after its last epoch.
        eval_model: the module to save as "best" (the unwrapped model under DDP).
        channels_last: NHWC memory layout (faster convolutions on CPU and GPU).
        max_batches: cap per epoch (benchmarks).

    Returns:
        The per-epoch history and the validation metrics of the returned weights. With early
        stopping on, the weights of the best validation-loss epoch are restored at the end.
    """
    device = device or run_device(torch.cuda.is_available())
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if loss_fn is None:
        labels = getattr(getattr(train_loader, "dataset", None), "labels", None)
        loss_fn = make_loss(cfg, None if labels is None else np.asarray(labels))
    loss_fn = loss_fn.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    owner = eval_model or model
    state = TrainState()
    if resume is not None:
        model_state = resume["model"]
        owner.load_state_dict(model_state)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        state = TrainState(
            epoch=int(resume["epoch"]),
            history=[EpochRecord(**r) for r in resume["history"]],
            best_val_loss=float(resume["best_val_loss"]),
            best_epoch=int(resume["best_epoch"]),
            bad_epochs=int(resume["bad_epochs"]),
            best_state=resume.get("best_state"),
        )
        gen.set_state(resume["generator"])
        log.info("resuming classifier training after epoch %d", state.epoch)
    stopped = False
    patience = cfg.early_stopping_patience
    last_eval: EvalResult | None = None
    while state.epoch < cfg.epochs:
        t0 = time.perf_counter()
        train_loss, seen = train_one_epoch(
            model, train_loader, optimizer, loss_fn, device,
            augment=cfg.augment, generator=gen, amp=cfg.amp, channels_last=channels_last, max_batches=max_batches,
        )
        train_s = time.perf_counter() - t0
        last_eval = evaluate(model, val_loader, loss_fn, device, amp=cfg.amp, channels_last=channels_last)
        val_metrics = last_eval.metrics()
        scheduler.step(last_eval.loss)
        rec = EpochRecord(
            epoch=state.epoch + 1,
            train_loss=train_loss,
            val_loss=last_eval.loss,
            loss_gap=loss_gap(train_loss, last_eval.loss),
            val_macro_auc=val_metrics.macro_auc,
            lr=float(optimizer.param_groups[0]["lr"]),
            seconds=time.perf_counter() - t0,
            train_images_per_s=seen / train_s if train_s > 0 else float("nan"),
        )
        state.history.append(rec)
        state.epoch += 1
        if last_eval.loss < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.bad_epochs = last_eval.loss, rec.epoch, 0
            if patience:
                state.best_state = {k: v.detach().clone() for k, v in owner.state_dict().items()}
        else:
            state.bad_epochs += 1
        log.info(
            "epoch %d/%d train %.4f val %.4f gap %+.4f macro AUC %s lr %.2g (%.1fs)",
            rec.epoch, cfg.epochs, rec.train_loss, rec.val_loss, rec.loss_gap,
            "n/a" if rec.val_macro_auc is None else f"{rec.val_macro_auc:.3f}", rec.lr, rec.seconds,
        )
        if on_epoch is not None:
            on_epoch(rec, lambda: _snapshot(owner, optimizer, scheduler, state, gen))
        if patience and state.bad_epochs >= patience and state.epoch < cfg.epochs:
            stopped = True
            log.info("early stopping after epoch %d (best %d)", state.epoch, state.best_epoch)
            break
    restored = False
    if patience and state.best_state is not None and state.best_epoch != state.epoch:
        owner.load_state_dict(state.best_state)
        restored = True
        last_eval = None
    if last_eval is None:
        last_eval = evaluate(model, val_loader, loss_fn, device, amp=cfg.amp, channels_last=channels_last)
    return FitResult(tuple(state.history), last_eval.metrics(), state.best_epoch, stopped, restored)
