"""Training the baselines: crops from the flow model's training set, and plain-PyTorch loops.

The data is the flow inpainter's :class:`~augment.inpainting.train.GeneratorTrainingSet`
and its :func:`~augment.inpainting.train.sample_batch` (with ``batch_size`` from the
baseline config and no label dropout), so both see the same crops:

* finding examples (share ``inpainting.finding_fraction``): the crop around a finding's mask
  on an image with that finding, conditioned on it (and overlapping findings);
* healthy examples: a crop of a healthy image around a random blob / box or a transplanted
  finding mask, that is, a random crop, conditioned on all-zero findings.

Only the crop is kept (the mask is not used: baselines draw whole crops). One step is one
optimiser step for the VAEs, and one discriminator step followed by ``g_steps_per_d``
generator steps for the LSGAN. Nothing here imports Ray; ``jobs/train_baseline.py`` wraps
:func:`fit_baseline`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from augment.baselines.base import BASELINE_KINDS, BaselineGenerator
from augment.baselines.registry import build_baseline
from augment.baselines.lsgan import LSGAN
from augment.baselines.vae import ConditionalVAE
from augment.config import BaselineConfig, InpaintingConfig
from augment.inpainting.model import to_image_space
from augment.inpainting.train import GeneratorTrainingSet, sample_batch

__all__ = ["CropBatch", "BaselineFit", "StepCallback", "sample_crops", "make_optimizer", "fit_baseline"]

StepCallback = Callable[[int, dict[str, float]], None]
"""on_step(step (1-based), metrics of that step: always "loss", plus the kind's terms)."""


@dataclass(frozen=True)
class CropBatch:
    """Training crops and their conditioning.

    Attributes:
        images: (B, 1, S, S) float32 in [0, 1].
        findings: (B, 14) multi-hot; all zeros for healthy crops.
    """

    images: torch.Tensor
    findings: torch.Tensor


@dataclass(frozen=True)
class BaselineFit:
    """What :func:`fit_baseline` did.

    Attributes:
        model: the trained baseline (train mode, on its device).
        history: per-step values. ``"loss"``: the VAEs' negative ELBO (with beta) per pixel,
            the LSGAN's generator loss; VAEs also ``"recon"``, ``"kl"``; LSGAN also
            ``"d_loss"``, ``"g_loss"`` (mean over the step's generator updates).
        seconds: wall time.
    """

    model: BaselineGenerator
    history: dict[str, tuple[float, ...]]
    seconds: float

    @property
    def losses(self) -> tuple[float, ...]:
        return self.history["loss"]


def sample_crops(
    data: GeneratorTrainingSet,
    cfg: BaselineConfig,
    inpainting: InpaintingConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> CropBatch:
    """Draw ``cfg.batch_size`` crops as the flow model's :func:`sample_batch` does (no label dropout)."""
    icfg = inpainting.model_copy(update={"batch_size": cfg.batch_size, "label_dropout": 0.0})
    batch = sample_batch(data, icfg, generator, device)
    return CropBatch(images=to_image_space(batch.x1), findings=batch.cond.findings)


def make_optimizer(params, cfg: BaselineConfig) -> torch.optim.Optimizer:
    """Adam at ``cfg.lr``, betas (0.5, 0.999) (the paper's setting, for every baseline)."""
    return torch.optim.Adam(params, lr=cfg.lr, betas=(0.5, 0.999))


def _finite(value: torch.Tensor, what: str, cfg: BaselineConfig) -> float:
    v = float(value.detach())
    if v != v or v in (float("inf"), float("-inf")):
        raise FloatingPointError(f"baseline {what} is {v}; lower baseline.lr (now {cfg.lr})")
    return v


def fit_baseline(
    kind: str | None,
    data: GeneratorTrainingSet,
    cfg: BaselineConfig,
    steps: int | None = None,
    on_step: StepCallback | None = None,
    *,
    inpainting: InpaintingConfig | None = None,
    model: BaselineGenerator | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> BaselineFit:
    """Train a baseline for ``steps`` steps (default ``cfg.train_steps``).

    Args:
        kind: ``"lsgan"``, ``"vae"`` or ``"gmvae"``; None takes ``cfg.kind``.
        data: from :func:`augment.inpainting.train.build_training_set`.
        cfg: the baseline config (``lr``, ``batch_size``, ``g_steps_per_d``, ``seed``, ...).
        steps: steps to run.
        on_step: ``on_step(step, metrics)`` after every step (1-based).
        inpainting: crop settings (``crop_size``, ``context``, ``finding_fraction``);
            default :class:`InpaintingConfig` defaults.
        model: continue training this model; default a new one initialised from ``cfg.seed``.
        generator: CPU generator for every draw; default seeded with ``cfg.seed + 1``.
        device: where the model trains.
        progress: a tqdm bar.

    Raises:
        ValueError: unknown kind, a model of another kind or crop size, negative steps.
    """
    kind = kind or cfg.kind
    if kind not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline kind {kind!r}; use one of {list(BASELINE_KINDS)}")
    inpainting = inpainting or InpaintingConfig()
    steps = cfg.train_steps if steps is None else int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = build_baseline(kind, cfg, inpainting.crop_size, inpainting.context)
    elif model.kind != kind or model.crop_size != inpainting.crop_size:
        raise ValueError(
            f"the given model is a {model.kind!r} at crop {model.crop_size}, but training asks for {kind!r} at "
            f"inpainting.crop_size={inpainting.crop_size}; pass a matching model or none"
        )
    device = torch.device(device)
    model = model.to(device).train()
    generator = generator or torch.Generator().manual_seed(cfg.seed + 1)
    history: dict[str, list[float]] = {}
    bar = None
    if progress and steps > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"baseline {kind}", unit="step", leave=False)
    t0 = time.perf_counter()
    if isinstance(model, LSGAN):
        opt_d = make_optimizer(model.discriminator.parameters(), cfg)
        opt_g = make_optimizer(model.generator.parameters(), cfg)
        step_fn = lambda batch: _lsgan_step(model, opt_d, opt_g, batch, cfg, generator)  # noqa: E731
    elif isinstance(model, ConditionalVAE):
        opt = make_optimizer(model.parameters(), cfg)
        step_fn = lambda batch: _vae_step(model, opt, batch, cfg, generator)  # noqa: E731
    else:  # pragma: no cover - every kind is one of the two families
        raise TypeError(f"no training loop for {type(model).__name__}")
    for i in range(steps):
        batch = sample_crops(data, cfg, inpainting, generator, device)
        metrics = step_fn(batch)
        for k, v in metrics.items():
            history.setdefault(k, []).append(v)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()})
        if on_step is not None:
            on_step(i + 1, metrics)
    if bar is not None:
        bar.close()
    if not history:
        history["loss"] = []
    return BaselineFit(model, {k: tuple(v) for k, v in history.items()}, time.perf_counter() - t0)


def _lsgan_step(
    model: LSGAN,
    opt_d: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer,
    batch: CropBatch,
    cfg: BaselineConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    dev = batch.images.device
    b = batch.images.shape[0]
    real = batch.images * 2.0 - 1.0
    z = torch.randn(b, cfg.latent_dim, generator=generator).to(dev)
    d = model.d_loss(real, batch.findings, z)
    opt_d.zero_grad(set_to_none=True)
    d.backward()
    opt_d.step()
    g_losses = []
    for _ in range(cfg.g_steps_per_d):
        z = torch.randn(b, cfg.latent_dim, generator=generator).to(dev)
        g = model.g_loss(batch.findings, z)
        opt_g.zero_grad(set_to_none=True)
        g.backward()
        opt_g.step()
        g_losses.append(_finite(g, "generator loss", cfg))
    g_mean = sum(g_losses) / len(g_losses)
    return {"loss": g_mean, "d_loss": _finite(d, "discriminator loss", cfg), "g_loss": g_mean}


def _vae_step(
    model: ConditionalVAE,
    opt: torch.optim.Optimizer,
    batch: CropBatch,
    cfg: BaselineConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    out = model.loss(batch.images, batch.findings, generator)
    loss = _finite(out.loss, "VAE loss", cfg)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    return {"loss": loss, "recon": float(out.recon.detach()), "kl": float(out.kl.detach())}
