"""Stochastic interpolant with a data-dependent coupling, for inpainting.

Albergo, Goldstein, Boffi, Ranganath, Vanden-Eijnden (2023), "Stochastic interpolants with
data-dependent couplings", arXiv 2310.03725. For inpainting the base point is built from the
target itself: outside the mask it *is* the target, inside the mask it is Gaussian noise,

    x_0 = x_1 * (1 - m) + eps * m,           eps ~ N(0, I)
    x_t = (1 - t) x_0 + t x_1 + gamma(t) z m,  z ~ N(0, I), gamma(t) = gamma * sqrt(t (1 - t))
    dx_t/dt = x_1 - x_0 + gamma'(t) z m

so x_t equals x_1 outside the mask at every t, and the velocity target is zero there. A
network regressed onto dx_t/dt (squared error, weighted to the mask) is the drift of an
ODE that carries x_0 to samples of x_1 given the known pixels. The latent term (gamma > 0)
widens the path in the middle and vanishes at both ends.

All tensors here are in the model's space (images mapped to [-1, 1], see
:func:`augment.inpainting.model.to_model_space`); shapes are (B, C, H, W) and ``t`` is (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "PathSample",
    "base_point",
    "gamma_schedule",
    "interpolate",
    "sample_path",
    "masked_mse",
    "T_EPS",
]

T_EPS = 1e-3
"""Training times are drawn from [T_EPS, 1 - T_EPS]: gamma'(t) is singular at 0 and 1."""


@dataclass(frozen=True)
class PathSample:
    """One draw from the interpolant.

    Attributes:
        x0: (B, C, H, W) base point: known pixels outside the mask, noise inside.
        x1: (B, C, H, W) target (the real image).
        t: (B,) times in [0, 1].
        xt: (B, C, H, W) the point on the path at ``t``.
        dxt: (B, C, H, W) its time derivative, the regression target of the velocity net.
        mask: (B, 1, H, W) binary float mask (1 = repaint).
    """

    x0: torch.Tensor
    x1: torch.Tensor
    t: torch.Tensor
    xt: torch.Tensor
    dxt: torch.Tensor
    mask: torch.Tensor


def _check_pair(x1: torch.Tensor, mask: torch.Tensor) -> None:
    if x1.ndim != 4:
        raise ValueError(f"x1 must have shape (B, C, H, W), got {tuple(x1.shape)}")
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != x1.shape[0] or mask.shape[2:] != x1.shape[2:]:
        raise ValueError(
            f"mask must have shape (B, 1, H, W) = ({x1.shape[0]}, 1, {x1.shape[2]}, {x1.shape[3]}) to match x1, "
            f"got {tuple(mask.shape)}"
        )


def base_point(x1: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The coupled base point x_0: ``x1`` outside the mask, ``noise`` inside.

    Args:
        x1: (B, C, H, W) target.
        mask: (B, 1, H, W) in {0, 1}.
        noise: (B, C, H, W) standard normal draws.

    Returns:
        (B, C, H, W); exactly ``x1`` where ``mask == 0``.
    """
    _check_pair(x1, mask)
    if noise.shape != x1.shape:
        raise ValueError(f"noise must have the shape of x1 {tuple(x1.shape)}, got {tuple(noise.shape)}")
    return torch.where(mask > 0.5, noise, x1)


def gamma_schedule(t: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma(t) = gamma * sqrt(t (1 - t)) and its derivative.

    Args:
        t: (B,) times; the derivative is finite only for 0 < t < 1 (use :data:`T_EPS`).
        gamma: scale (0 gives the plain linear interpolant).

    Returns:
        (gamma(t), gamma'(t)), each (B,).
    """
    if gamma == 0.0:
        z = torch.zeros_like(t)
        return z, z
    s = torch.sqrt((t * (1.0 - t)).clamp(min=0.0))
    g = gamma * s
    dg = gamma * (1.0 - 2.0 * t) / (2.0 * s.clamp(min=1e-12))
    return g, dg


def interpolate(
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 0.0,
    z: torch.Tensor | None = None,
) -> PathSample:
    """The point x_t on the path from ``x0`` to ``x1`` and its time derivative.

    Args:
        x0: (B, C, H, W) base point (see :func:`base_point`).
        x1: (B, C, H, W) target.
        t: (B,) times in [0, 1].
        mask: (B, 1, H, W) in {0, 1}; the latent noise only enters inside it.
        gamma: latent noise scale; needs ``z`` when > 0.
        z: (B, C, H, W) standard normal draws for the latent term.

    Returns:
        A :class:`PathSample`; ``xt == x0`` at t=0 and ``xt == x1`` at t=1.
    """
    _check_pair(x1, mask)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have the same shape")
    if t.ndim != 1 or t.shape[0] != x1.shape[0]:
        raise ValueError(f"t must have shape (B,) = ({x1.shape[0]},), got {tuple(t.shape)}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    tb = t.view(-1, 1, 1, 1).to(x1.dtype)
    xt = (1.0 - tb) * x0 + tb * x1
    dxt = x1 - x0
    if gamma > 0:
        if z is None or z.shape != x1.shape:
            raise ValueError(f"gamma > 0 needs latent noise z of shape {tuple(x1.shape)}; pass z=torch.randn_like(x1)")
        g, dg = gamma_schedule(t.to(x1.dtype), gamma)
        m = (mask > 0.5).to(x1.dtype)
        xt = xt + g.view(-1, 1, 1, 1) * z * m
        dxt = dxt + dg.view(-1, 1, 1, 1) * z * m
    return PathSample(x0=x0, x1=x1, t=t, xt=xt, dxt=dxt, mask=mask)


def sample_path(
    x1: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 0.0,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
) -> PathSample:
    """Draw noise, a time and the path point for a batch of targets (training).

    Args:
        x1: (B, C, H, W) targets in model space.
        mask: (B, 1, H, W) in {0, 1}.
        gamma: latent noise scale.
        generator: CPU generator for the draws (reproducible across devices).
        t: (B,) times; default uniform on [T_EPS, 1 - T_EPS].
    """
    _check_pair(x1, mask)
    b = x1.shape[0]

    def randn() -> torch.Tensor:
        return torch.randn(x1.shape, generator=generator, dtype=torch.float32).to(x1.device, x1.dtype)

    if t is None:
        t = T_EPS + (1.0 - 2.0 * T_EPS) * torch.rand(b, generator=generator)
    t = t.to(x1.device)
    x0 = base_point(x1, mask, randn())
    z = randn() if gamma > 0 else None
    return interpolate(x0, x1, t, mask, gamma=gamma, z=z)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, mask_weight: float) -> torch.Tensor:
    """Squared error weighted ``mask_weight`` inside the mask and 1 outside, normalised by the weights.

    Args:
        pred, target: (B, C, H, W).
        mask: (B, 1, H, W) in {0, 1}.
        mask_weight: >= 1.

    Returns:
        Scalar loss.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    w = 1.0 + (mask_weight - 1.0) * (mask > 0.5).to(pred.dtype)
    w = w.expand_as(pred)
    return (w * (pred.float() - target.float()) ** 2).sum() / w.sum()
