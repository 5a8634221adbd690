"""Gaussian kernels and the resolution pyramid shared by both Demons backends.

The field smoothing kernel is ITK's: the *discrete* Gaussian ``T(n, t) = exp(-t) I_n(t)``
(``I_n`` the modified Bessel function, ``t = sigma**2``), grown from the centre until the
taps hold ``1 - max_error`` of the mass, then normalised to sum 1. With ITK's default
``max_error = 0.1`` a sigma of 1.5 pixels gives 5 taps. Using the same kernel as
SimpleITK keeps the two backends comparable and keeps the torch loop short.

Pyramid geometry: level ``l`` has size ``(H_l, W_l) = (H // 2**l, W // 2**l)`` and is made by
area averaging; a level pixel ``i`` covers fine pixels ``[i * H / H_l, (i + 1) * H / H_l)``.
Fields are carried between levels in *level pixels* and resampled with bilinear
interpolation (``align_corners=False``, which matches that geometry), then scaled by the
size ratio per axis.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from scipy.special import ive

__all__ = [
    "KERNEL_MAX_ERROR",
    "KERNEL_MAX_WIDTH",
    "MIN_LEVEL_SIDE",
    "gaussian_kernel1d",
    "gaussian_blur",
    "pyramid_shapes",
    "downsample",
    "upsample_field",
]

KERNEL_MAX_ERROR = 0.1
"""Mass left outside the truncated Gaussian kernel (ITK's default ``MaximumError``)."""
KERNEL_MAX_WIDTH = 30
"""Largest half-width of the kernel (ITK's default ``MaximumKernelWidth``)."""
MIN_LEVEL_SIDE = 16
"""Pyramid levels whose smaller side would fall under this many pixels are dropped."""


@functools.lru_cache(maxsize=64)
def _kernel_taps(sigma: float, max_error: float, max_width: int) -> tuple[float, ...]:
    if sigma <= 0.0:
        return (1.0,)
    t = sigma * sigma
    coeff = [float(ive(0, t)), float(ive(1, t))]
    total = coeff[0] + 2.0 * coeff[1]
    n = 2
    while total < 1.0 - max_error and len(coeff) <= max_width:
        c = float(ive(n, t))
        if c <= 0.0:
            break
        coeff.append(c)
        total += 2.0 * c
        n += 1
    half = [c / total for c in coeff]
    return tuple(half[:0:-1] + half)


def gaussian_kernel1d(
    sigma: float, max_error: float = KERNEL_MAX_ERROR, max_width: int = KERNEL_MAX_WIDTH
) -> torch.Tensor:
    """ITK's truncated discrete Gaussian kernel.

    Args:
        sigma: standard deviation in pixels; 0 gives the identity kernel ``[1]``.
        max_error: mass allowed outside the kernel before normalisation.
        max_width: largest half-width (taps on each side of the centre).

    Returns:
        (2r + 1,) float32 kernel, symmetric, summing to 1.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma}")
    return torch.tensor(_kernel_taps(float(sigma), float(max_error), int(max_width)), dtype=torch.float32)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing with replicated borders (ITK's zero-flux Neumann).

    Not the hot loop of Demons (which has its own buffered version); used for update
    smoothing in tests, pre-alignment and masks.

    Args:
        x: (B, C, H, W) float tensor.
        sigma: pixels; 0 returns ``x`` unchanged.

    Returns:
        (B, C, H, W) smoothed tensor.
    """
    k = gaussian_kernel1d(sigma).to(device=x.device, dtype=x.dtype)
    r = k.numel() // 2
    if r == 0:
        return x
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.pad(y, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def pyramid_shapes(h: int, w: int, levels: int) -> list[tuple[int, int]]:
    """Sizes of the pyramid levels, finest first; coarse levels under ``MIN_LEVEL_SIDE`` are dropped.

    Args:
        h, w: finest size.
        levels: requested number of levels (1 = no pyramid).

    Returns:
        ``[(h, w), (h // 2, w // 2), ...]`` with at most ``levels`` entries.
    """
    shapes = [(h, w)]
    for lvl in range(1, levels):
        hh, ww = h >> lvl, w >> lvl
        if min(hh, ww) < MIN_LEVEL_SIDE:
            break
        shapes.append((hh, ww))
    return shapes


def downsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-average images to ``size`` (exactly 2x2 means for even sides).

    Args:
        x: (B, C, H, W).
        size: (H_l, W_l).

    Returns:
        (B, C, H_l, W_l) contiguous.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="area").contiguous()


def upsample_field(field: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Carry a displacement field in level pixels to a finer level.

    Args:
        field: (B, 2, h, w), channel 0 = x, 1 = y, in pixels of the ``(h, w)`` grid.
        size: finer size (H, W).

    Returns:
        (B, 2, H, W) field in pixels of the finer grid.
    """
    h, w = field.shape[-2:]
    if (h, w) == tuple(size):
        return field
    up = F.interpolate(field, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h], device=field.device, dtype=field.dtype)
    return (up * scale.view(1, 2, 1, 1)).contiguous()
