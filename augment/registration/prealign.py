"""Global pre-alignment (similarity or affine) so that Demons only does the local part.

A small batched optimisation in PyTorch (same device as the images, no per-pair loop):
maximise the global normalised cross-correlation between the fixed image and the
transformed moving image with Adam, coarse to fine (images area-averaged to about 64 and
then 128 pixels and lightly blurred). Parameters live in a centred, isotropic frame (the
image centre is the origin, half the larger side is 1), so one set of step sizes suits any
image size. Similarity: log-scale, rotation, translation. Affine: the 2x2 matrix and the
translation. The start is the identity (radiographs share orientation and field of view),
and a pair whose NCC would get worse keeps the identity, so the step can only help.

The result is a pixel-space matrix ``A`` (B, 2, 3): the moving-image position sampled for
fixed pixel ``p = (x, y)`` is ``A[:, :2] @ p + A[:, 2]``. :func:`affine_field` turns it into a
displacement field, and :func:`compose_with_affine` composes a Demons field computed on the
pre-aligned image into one field on the original moving image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from augment.registration.checks import check_field, check_pair
from augment.registration.smoothing import downsample, gaussian_blur
from augment.registration.warp import ncc, pixel_scale

__all__ = ["Prealignment", "estimate_prealignment", "affine_field", "compose_with_affine"]

_LEVELS = (32, 64)
_LR = {"similarity": 0.02, "affine": 0.01}


@dataclass(frozen=True)
class Prealignment:
    """A global transform per pair.

    Attributes:
        matrix: (B, 2, 3) pixel-space map from fixed to moving positions.
        ncc_before: (B,) NCC of the untouched pair (at the optimisation's resolution).
        ncc_after: (B,) NCC after the transform (same resolution); >= ``ncc_before``.
        kind: "similarity" or "affine".
    """

    matrix: torch.Tensor
    ncc_before: torch.Tensor
    ncc_after: torch.Tensor
    kind: str


def _frame(h: int, w: int, device) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Centred isotropic coordinates (1, H, W, 2), the half-size, and the centre (x, y)."""
    half = max(h, w) / 2.0
    centre = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], device=device)
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = (torch.stack([gx, gy], dim=-1) - centre) / half
    return pts[None], half, centre


def _linear(params: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2, 2) matrix and (B, 2) translation in the centred frame."""
    if kind == "similarity":
        s = torch.exp(params[:, 0])
        c, si = torch.cos(params[:, 1]), torch.sin(params[:, 1])
        mat = torch.stack([torch.stack([s * c, -s * si], -1), torch.stack([s * si, s * c], -1)], -2)
        return mat, params[:, 2:4]
    eye = torch.eye(2, device=params.device)
    return eye + params[:, :4].view(-1, 2, 2), params[:, 4:6]


def _sample(moving: torch.Tensor, mat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    b, _, h, w = moving.shape
    pts, half, centre = _frame(h, w, moving.device)
    mapped = torch.einsum("bij,bhwj->bhwi", mat, pts.expand(b, -1, -1, -1)) + t[:, None, None]
    pix = mapped * half + centre
    sx, sy = pixel_scale(h, w)
    grid = torch.stack([pix[..., 0] * sx - 1.0, pix[..., 1] * sy - 1.0], dim=-1)
    return F.grid_sample(moving, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _ncc_loss(fixed: torch.Tensor, moving: torch.Tensor, kind: str):
    def loss(params: torch.Tensor) -> torch.Tensor:
        return (1.0 - ncc(fixed, _sample(moving, *_linear(params, kind)))).sum()

    return loss


def _adam(params: torch.Tensor, loss_fn, lr: float, steps: int) -> torch.Tensor:
    """Plain Adam on one small tensor (``torch.optim`` would import TorchDynamo: seconds)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    m = torch.zeros_like(params)
    v = torch.zeros_like(params)
    params = params.detach()
    for k in range(1, steps + 1):
        params.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(params), params)
        params = params.detach()
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step = lr * math.sqrt(1 - b2**k) / (1 - b1**k)
        params.addcdiv_(m, v.sqrt().add_(eps), value=-step)
    return params


def _to_pixels(mat: torch.Tensor, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centred-frame (mat, t) -> pixel matrix (B, 2, 3): p_m = mat p + (c - mat c + half t)."""
    half = max(h, w) / 2.0
    centre = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], device=mat.device)
    trans = centre - mat @ centre + half * t
    return torch.cat([mat, trans[..., None]], dim=-1)


def estimate_prealignment(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    kind: str = "similarity",
    steps: int = 60,
) -> Prealignment:
    """Find a global similarity or affine map of each moving image onto its fixed image.

    Args:
        fixed: (B, 1, H, W) in [0, 1].
        moving: (B, 1, H, W) in [0, 1].
        kind: "similarity" (scale, rotation, shift) or "affine".
        steps: Adam steps per resolution level.

    Returns:
        :class:`Prealignment` with the (B, 2, 3) pixel matrix.

    Raises:
        ValueError: bad images (see :func:`~augment.registration.checks.check_pair`), an
            unknown ``kind`` or ``steps < 1``.
    """
    if kind not in ("similarity", "affine"):
        raise ValueError(f"kind must be 'similarity' or 'affine', got {kind!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    fixed, moving = check_pair(fixed, moving)
    b, _, h, w = fixed.shape
    n_par = 4 if kind == "similarity" else 6
    params = torch.zeros(b, n_par, device=fixed.device)
    with torch.enable_grad():
        for side in _LEVELS:
            f = min(1.0, side / max(h, w))
            size = (max(8, round(h * f)), max(8, round(w * f)))
            fl = gaussian_blur(downsample(fixed, size), 1.0)
            ml = gaussian_blur(downsample(moving, size), 1.0)
            params = _adam(params, _ncc_loss(fl, ml, kind), _LR[kind], steps)
            if f == 1.0:
                break
    with torch.no_grad():
        mat, t = _linear(params.detach(), kind)
        before = ncc(fl, ml)
        after = ncc(fl, _sample(ml, mat, t))
        worse = after < before
        eye = torch.eye(2, device=fixed.device).expand(b, 2, 2)
        mat = torch.where(worse.view(b, 1, 1), eye, mat)
        t = torch.where(worse.view(b, 1), torch.zeros_like(t), t)
        after = torch.maximum(after, before)
    return Prealignment(matrix=_to_pixels(mat, t, h, w), ncc_before=before, ncc_after=after, kind=kind)


def affine_field(matrix: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Displacement field of a pixel-space affine map.

    Args:
        matrix: (B, 2, 3) as in :class:`Prealignment`.
        h, w: image size.

    Returns:
        (B, 2, H, W) pixels: ``u(p) = A p + a - p``.
    """
    if matrix.ndim != 3 or tuple(matrix.shape[1:]) != (2, 3):
        raise ValueError(f"matrix must have shape (B, 2, 3), got {tuple(matrix.shape)}")
    dev = matrix.device
    ys = torch.arange(h, device=dev, dtype=torch.float32)
    xs = torch.arange(w, device=dev, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    p = torch.stack([gx, gy])  # (2, H, W)
    mapped = torch.einsum("bij,jhw->bihw", matrix[:, :, :2].float(), p) + matrix[:, :, 2, None, None].float()
    return (mapped - p).contiguous()


def compose_with_affine(field: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """One field for "Demons on the pre-aligned image, then the affine map".

    If ``field`` registers the fixed image to ``moving∘A`` (the pre-aligned moving image),
    the composed field registers it to ``moving``: ``u(p) = A (p + field(p)) + a - p``.

    Args:
        field: (B, 2, H, W) pixels.
        matrix: (B, 2, 3) pixel-space affine map.

    Returns:
        (B, 2, H, W) pixels.
    """
    field = check_field(field)
    h, w = field.shape[-2:]
    lin = matrix[:, :, :2].float()
    return affine_field(matrix, h, w) + torch.einsum("bij,bjhw->bihw", lin, field)
