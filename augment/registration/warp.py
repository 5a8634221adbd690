"""Warping with displacement fields, Jacobians, and similarity measures.

Field convention (the one every function in :mod:`augment.registration` uses):

* a field is a float32 tensor (B, 2, H, W) in **pixels**; channel 0 is the displacement
  along x (columns, positive to the right), channel 1 along y (rows, positive down);
* it is a *pull-back* (backward) map: the warped image at pixel (y, x) is the moving image
  sampled at ``(y + u_y(y, x), x + u_x(y, x))``.

This is SimpleITK's displacement-field convention for an image with spacing 1 and origin 0
(physical x = column index, y = row index), so a SimpleITK field converts by a transpose.
Samples that fall outside the image take the value of the nearest edge pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from augment.registration.checks import check_field, check_map

__all__ = [
    "identity_grid",
    "pixel_scale",
    "field_to_grid",
    "warp_tensor",
    "warp_image",
    "warp_map",
    "warp_mask",
    "jacobian_determinant",
    "folded_fraction",
    "mse",
    "ncc",
]


def identity_grid(h: int, w: int, device: torch.device | str | None = None, dtype=torch.float32) -> torch.Tensor:
    """Normalised sampling positions of every pixel (``align_corners=True``).

    Returns:
        (1, 2, H, W): channel 0 goes from -1 (left) to 1 (right), channel 1 from -1 (top)
        to 1 (bottom).
    """
    ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy])[None].contiguous()


def pixel_scale(h: int, w: int) -> tuple[float, float]:
    """Factors from pixels to normalised ``grid_sample`` units along x and y."""
    return 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)


def field_to_grid(field: torch.Tensor) -> torch.Tensor:
    """Turn a pixel field into a ``grid_sample`` grid.

    Args:
        field: (B, 2, H, W) pixels.

    Returns:
        (B, H, W, 2) normalised positions (x, y), ``align_corners=True``.
    """
    b, _, h, w = field.shape
    sx, sy = pixel_scale(h, w)
    scale = torch.tensor([sx, sy], device=field.device, dtype=field.dtype).view(1, 2, 1, 1)
    grid = identity_grid(h, w, field.device, field.dtype) + field * scale
    return grid.permute(0, 2, 3, 1)


def warp_tensor(x: torch.Tensor, field: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Pull ``x`` through ``field`` (see the module docstring for the convention).

    Args:
        x: (B, C, H, W) float tensor (images, maps or fields).
        field: (B, 2, H, W) pixels.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        (B, C, H, W) warped tensor; outside samples take the nearest edge value.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    field = check_field(field, like=x)
    return F.grid_sample(x.float(), field_to_grid(field), mode=mode, padding_mode="border", align_corners=True)


def warp_image(image: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Warp images (bilinear), result clamped to [0, 1].

    Args:
        image: (B, 1, H, W) in [0, 1].
        field: (B, 2, H, W) pixels.

    Returns:
        (B, 1, H, W) in [0, 1].
    """
    return warp_tensor(image, field, "bilinear").clamp_(0.0, 1.0)


def warp_map(m: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Warp an attention map (bilinear, so soft edges stay soft).

    Args:
        m: (B, 1, H, W) map in [0, 1] (or a boolean mask).
        field: (B, 2, H, W) pixels.

    Returns:
        (B, 1, H, W) float32 map in [0, 1].

    Raises:
        ValueError: the map's shape differs from (B, 1, H, W) of the field.
    """
    like = torch.empty(field.shape[0], 1, *field.shape[-2:], device=field.device)
    m = check_map(m, like, "map")
    return warp_tensor(m, field, "bilinear").clamp_(0.0, 1.0)


def warp_mask(mask: torch.Tensor, field: torch.Tensor, threshold: float | None = 0.5) -> torch.Tensor:
    """Warp a mask: linear interpolation then threshold, or nearest neighbour.

    Args:
        mask: (B, 1, H, W) bool or float in [0, 1].
        field: (B, 2, H, W) pixels.
        threshold: warp linearly and keep values >= threshold; ``None`` warps with nearest
            neighbour instead.

    Returns:
        (B, 1, H, W) bool mask.
    """
    like = torch.empty(field.shape[0], 1, *field.shape[-2:], device=field.device)
    m = check_map(mask, like, "mask")
    if threshold is None:
        return warp_tensor(m, field, "nearest") >= 0.5
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return warp_tensor(m, field, "bilinear") >= threshold


def _diff(a: torch.Tensor, dim: int) -> torch.Tensor:
    """Derivative along ``dim`` like ``numpy.gradient``: central inside, one-sided at the edges."""
    n = a.shape[dim]
    if n < 2:
        return torch.zeros_like(a)
    out = torch.empty_like(a)
    if n > 2:
        out.narrow(dim, 1, n - 2).copy_((a.narrow(dim, 2, n - 2) - a.narrow(dim, 0, n - 2)) * 0.5)
    out.narrow(dim, 0, 1).copy_(a.narrow(dim, 1, 1) - a.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).copy_(a.narrow(dim, n - 1, 1) - a.narrow(dim, n - 2, 1))
    return out


def jacobian_determinant(field: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant of the map ``p -> p + u(p)``.

    Args:
        field: (B, 2, H, W) pixels.

    Returns:
        (B, 1, H, W); 1 where the map preserves area, <= 0 where it folds.
    """
    field = check_field(field)
    ux, uy = field[:, 0], field[:, 1]
    dux_dx, dux_dy = _diff(ux, 2), _diff(ux, 1)
    duy_dx, duy_dy = _diff(uy, 2), _diff(uy, 1)
    det = (1.0 + dux_dx) * (1.0 + duy_dy) - dux_dy * duy_dx
    return det[:, None]


def folded_fraction(field: torch.Tensor) -> torch.Tensor:
    """Share of pixels whose Jacobian determinant is <= 0.

    Args:
        field: (B, 2, H, W) pixels.

    Returns:
        (B,) fractions in [0, 1].
    """
    return (jacobian_determinant(field) <= 0).flatten(1).float().mean(dim=1)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per pair.

    Args:
        a, b: (B, C, H, W).

    Returns:
        (B,).
    """
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


def ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Global normalised cross-correlation per pair (0 when either image is constant).

    Args:
        a, b: (B, C, H, W).

    Returns:
        (B,) values in [-1, 1].
    """
    a = a.float().flatten(1)
    b = b.float().flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    va = (a * a).mean(dim=1)
    vb = (b * b).mean(dim=1)
    flat = (va < 1e-10) | (vb < 1e-10)  # a constant image (up to rounding) correlates with nothing
    out = (a * b).mean(dim=1) / torch.sqrt(va * vb).clamp_min(1e-20)
    return torch.where(flat, torch.zeros_like(out), out.clamp(-1.0, 1.0))
