"""Sampling: integrate the learned velocity from the coupled base point to an inpainted image.

``inpaint`` crops each image around its mask (see :mod:`augment.inpainting.crop`), draws
the base point (known pixels outside the mask, N(0, 1) noise inside), integrates
dx/dt = v(x, t) from t=0 to t=1 with Euler, Heun or torchdiffeq's dopri5, and pastes the
result back. The ODE only moves masked pixels (the known ones are reset after each step),
and the final image is ``torch.where(mask, generated, input)``, so pixels outside the mask
are bit-identical to the input.

Classifier-free guidance: v = v(null) + w (v(findings) - v(null)); w = 1 is the plain
conditional field (one pass per step), w = 0 the unconditional one, any other w costs two
(batched as one pass over 2B).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from augment.config import InpaintingConfig
from augment.data.io import validate_batch
from augment.findings import FINDINGS, finding_index
from augment.inpainting.crop import CropBox, coord_maps, crop, crop_mask, full_boxes, mask_boxes, paste
from augment.inpainting.model import Conditioning, autocast, to_image_space, to_model_space

__all__ = ["InpaintResult", "Velocity", "guided_velocity", "integrate", "inpaint", "findings_tensor"]

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""v(x (B, 1, S, S), t (B,)) -> (B, 1, S, S)."""


@dataclass(frozen=True)
class InpaintResult:
    """What :func:`inpaint` made.

    Attributes:
        images: (B, 1, H, W) float32 in [0, 1]; equal to the input outside ``masks``.
        masks: (B, 1, H, W) bool, the repainted pixels.
        boxes: the crop box of each image, in full-image pixels.
        nfe: network forward passes per image (a guided pass over 2B counts once).
        seconds: wall time of the whole call.
    """

    images: torch.Tensor
    masks: torch.Tensor
    boxes: tuple[CropBox, ...]
    nfe: int
    seconds: float


def findings_tensor(findings: Sequence[str | Sequence[str]]) -> torch.Tensor:
    """Multi-hot (B, 14) from one finding name, or a list of names, per image.

    >>> findings_tensor(["Nodule", ["Mass", "Effusion"]]).shape
    torch.Size([2, 14])
    """
    out = torch.zeros(len(findings), len(FINDINGS))
    for i, f in enumerate(findings):
        for name in [f] if isinstance(f, str) else f:
            out[i, finding_index(name)] = 1.0
    return out


def guided_velocity(model: torch.nn.Module, cond: Conditioning, guidance: float) -> Velocity:
    """The classifier-free-guided velocity field v(x, t) for one batch."""
    if guidance == 1.0:
        c = cond.with_null(False)
        return lambda x, t: model(x, t, c)
    if guidance == 0.0:
        c = cond.with_null(True)
        return lambda x, t: model(x, t, c)
    b = cond.findings.shape[0]
    both = cond.repeat(2)
    null = torch.zeros(2 * b, dtype=torch.bool, device=cond.findings.device)
    null[:b] = True
    both = both.with_null(null)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), both)
        v_null, v_cond = out[:b], out[b:]
        return v_null + guidance * (v_cond - v_null)

    return v


def integrate(
    velocity: Velocity,
    x0: torch.Tensor,
    mask: torch.Tensor,
    steps: int,
    solver: Literal["euler", "heun", "dopri5"] = "euler",
    atol: float = 1e-3,
    rtol: float = 1e-3,
    t0: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """Integrate dx/dt = v(x, t) from t=t0 (default 0) to 1, moving only masked pixels.

    Args:
        velocity: v(x, t) with x (B, 1, S, S) and t (B,).
        x0: (B, 1, S, S) start point.
        mask: (B, 1, S, S); pixels with ``mask <= 0.5`` keep their ``x0`` value exactly.
        steps: fixed steps of Euler / Heun (ignored by dopri5).
        solver: ``"euler"`` (1 evaluation per step), ``"heun"`` (2), ``"dopri5"`` (adaptive).
        atol, rtol: dopri5 tolerances (set them: torchdiffeq's default atol 1e-9 is costly).
        t0: start time in [0, 1); ``x0`` is then the interpolant's point at ``t0``.

    Returns:
        (x at t=1 (B, 1, S, S), number of velocity evaluations).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= t0 < 1.0:
        raise ValueError(f"t0 must be in [0, 1), got {t0}")
    keep = mask > 0.5
    b = x0.shape[0]
    x = x0
    if solver in ("euler", "heun"):
        dt = (1.0 - t0) / steps
        nfe = 0
        for i in range(steps):
            t = torch.full((b,), t0 + i * dt, device=x0.device)
            v = velocity(x, t)
            nfe += 1
            if solver == "heun":
                x_pred = torch.where(keep, x + dt * v, x0)
                v2 = velocity(x_pred, t + dt)
                nfe += 1
                v = 0.5 * (v + v2)
            x = torch.where(keep, x + dt * v, x0)
        return x, nfe
    if solver == "dopri5":
        try:
            from torchdiffeq import odeint
        except ImportError:
            raise ValueError("solver 'dopri5' needs torchdiffeq: pip install torchdiffeq, or use 'euler'/'heun'") from None
        keep_f = keep.to(x0.dtype)
        count = [0]

        def f(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            count[0] += 1
            return velocity(x, t.expand(b).to(x.dtype)) * keep_f

        ts = torch.tensor([t0, 1.0], device=x0.device, dtype=x0.dtype)
        out = odeint(f, x0, ts, method="dopri5", atol=atol, rtol=rtol)[-1]
        return torch.where(keep, out, x0), count[0]
    raise ValueError(f"unknown solver {solver!r}; use 'euler', 'heun' or 'dopri5'")


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def inpaint(
    model: torch.nn.Module,
    image: torch.Tensor,
    mask: torch.Tensor,
    findings: torch.Tensor,
    cfg: InpaintingConfig,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    base: torch.Tensor | None = None,
) -> InpaintResult:
    """Paint ``findings`` into the masked region of each image.

    Args:
        model: a velocity network (:class:`~augment.inpainting.model.VelocityNet`, EMA weights).
            Any generator, the baselines included, paints through
            :meth:`augment.painter.Painter.paint`.
        image: (B, 1, H, W) float in [0, 1].
        mask: (B, 1, H, W) bool or float; ``> 0.5`` is repainted.
        findings: (B, 14) multi-hot over FINDINGS (see :func:`findings_tensor`); several
            ones ask for several findings at once; all zeros asks for healthy tissue.
        cfg: ``steps``, ``solver``, ``guidance``, ``crop_size``, ``region``, ``context``,
            ``bf16``, ``atol``/``rtol``.
        generator: CPU generator for the base noise; the same seed gives the same images.
            A list of B generators seeds each image on its own, so an image comes out the
            same whatever it is batched with (the augmentation job relies on this).
        base: (B, 1, H, W) in [0, 1], the lesion coupling's start image (the reference's real
            lesion carried onto the image, :func:`augment.registration.lesion.carry_lesion`):
            with ``cfg.coupling == "lesion"`` the ODE starts at ``t = cfg.coupling_t0`` from
            the interpolant's point between the noise and this image inside the mask, so the
            flow harmonises a real lesion into its new surroundings instead of inventing one.
            Ignored with ``cfg.coupling == "noise"``.

    Returns:
        An :class:`InpaintResult`.

    Raises:
        ValueError: shapes do not match, values out of range, unknown solver.
    """
    validate_batch(image, "image")
    if not isinstance(mask, torch.Tensor) or mask.shape != image.shape:
        raise ValueError(f"mask must be a tensor of the image's shape {tuple(image.shape)}, got {getattr(mask, 'shape', type(mask))}")
    if not isinstance(findings, torch.Tensor) or findings.shape != (image.shape[0], len(FINDINGS)):
        raise ValueError(
            f"findings must be a (B, 14) = ({image.shape[0]}, {len(FINDINGS)}) multi-hot tensor, "
            f"got {getattr(findings, 'shape', type(findings))}; build it with findings_tensor(['Nodule', ...])"
        )
    t0 = time.perf_counter()
    device = _model_device(model)
    image = image.float()
    maskb = mask > 0.5 if mask.dtype != torch.bool else mask
    _, _, h, w = image.shape
    if cfg.region == "crop":
        boxes = mask_boxes(maskb, cfg.crop_size, cfg.context)
        size = cfg.crop_size
    else:
        boxes = full_boxes(image.shape)
        size = h
    x1 = crop(image, boxes, size).to(device)
    m = crop_mask(maskb.float(), boxes, size).to(device)
    known = to_model_space(x1) * (1.0 - m)
    coords = coord_maps(boxes, h, w, size, device=device)
    cond = Conditioning(mask=m, known=known, coords=coords, findings=findings.float().to(device))
    if isinstance(generator, (list, tuple)):
        # one generator per image: an image's noise does not depend on what it is batched with
        if len(generator) != x1.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x1.shape[0]} images; give one per image")
        noise = torch.cat([torch.randn((1, *x1.shape[1:]), generator=g, dtype=torch.float32) for g in generator]).to(device)
    else:
        noise = torch.randn(x1.shape, generator=generator, dtype=torch.float32).to(device)
    t_start = 0.0  # where the ODE starts on the path (the lesion coupling starts part-way)
    if cfg.coupling == "lesion" and base is not None:
        if base.shape != image.shape:
            raise ValueError(f"base must have the image's shape {tuple(image.shape)}, got {tuple(base.shape)}")
        t_start = float(cfg.coupling_t0)
        start = to_model_space(crop(base.float(), boxes, size).to(device))
        noise = (1.0 - t_start) * noise + t_start * start
    x0 = torch.where(m > 0.5, noise, to_model_space(x1))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device, cfg.bf16):
            velocity = guided_velocity(model, cond, cfg.guidance)
            x, nfe = integrate(velocity, x0, m, cfg.steps, cfg.solver, cfg.atol, cfg.rtol, t0=t_start)
    finally:
        model.train(was_training)
    patch = to_image_space(x.float()).cpu()
    detail = base.float().cpu() if t_start > 0.0 and cfg.keep_detail else None
    out = paste(image.cpu(), patch, boxes, maskb.cpu().float(), detail=detail)
    return InpaintResult(
        images=out.to(image.device),
        masks=maskb.to(image.device),
        boxes=tuple(boxes),
        nfe=nfe,
        seconds=time.perf_counter() - t0,
    )
