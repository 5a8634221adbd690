"""Input checks shared by the registration modules.

Every public entry point of :mod:`augment.registration` validates its tensors here, so a
bad input fails early with a ``ValueError`` (or ``TypeError`` for a non-tensor) that says
what was expected, what came, and how to fix it. Nothing here uses ``assert``.
"""

from __future__ import annotations

import torch

from augment.data.io import validate_batch
from augment.errors import NoContrastError

__all__ = ["MIN_SIDE", "check_images", "check_pair", "check_map", "check_field"]

MIN_SIDE = 8
"""Smallest image side the registration accepts (pixels)."""

_CONSTANT_STD = 1e-6


def check_images(x: torch.Tensor, name: str) -> torch.Tensor:
    """Check one batch of images and return it as contiguous float32.

    Args:
        x: (B, 1, H, W) floating tensor in [0, 1].
        name: what the caller calls it, used in messages ("fixed", "moving", ...).

    Returns:
        The same images, float32 and contiguous, on the same device.

    Raises:
        TypeError: not a tensor, or an integer/bool tensor.
        ValueError: empty, wrong shape, too small, NaN/inf, outside [0, 1], or an image
            without contrast (constant).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (B, 1, H, W), got {type(x).__name__}; "
            "use augment.data.io.to_batch to convert an array"
        )
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{name} must be a floating tensor in [0, 1], got dtype {x.dtype}; "
            "convert with x.float() / 255 for 8-bit data"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one (1, H, W) image")
    validate_batch(x, name)
    h, w = x.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"{name} is {h}x{w}; registration needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels")
    x = x.float().contiguous()
    std = x.flatten(1).std(dim=1)
    flat = torch.nonzero(std < _CONSTANT_STD).flatten().tolist()
    if flat:
        raise NoContrastError(
            f"{name} image(s) {flat} are constant (no contrast); Demons needs intensity "
            "gradients: drop blank or saturated images before registering"
        )
    return x


def check_pair(fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a batch of (fixed, moving) pairs: both valid and of the same shape.

    Args:
        fixed: (B, 1, H, W) in [0, 1], the healthy query.
        moving: (B, 1, H, W) in [0, 1], the diseased reference; moved onto ``fixed``.

    Returns:
        ``(fixed, moving)`` as contiguous float32, ``moving`` on ``fixed``'s device.

    Raises:
        TypeError, ValueError: see :func:`check_images`; also different sizes or batch sizes.
    """
    fixed = check_images(fixed, "fixed")
    moving = check_images(moving, "moving")
    if fixed.shape != moving.shape:
        raise ValueError(
            f"fixed and moving must have the same shape, got {tuple(fixed.shape)} and "
            f"{tuple(moving.shape)}; resize both to one size (augment.data.io.resize) and "
            "pair them one to one"
        )
    return fixed, moving.to(fixed.device)


def check_map(m: torch.Tensor, like: torch.Tensor, name: str = "map") -> torch.Tensor:
    """Check an attention map or mask that goes with a batch of images.

    Args:
        m: (B, 1, H, W) map in [0, 1] (float) or a boolean mask of that shape.
        like: (B, 1, H, W) images it belongs to.
        name: used in messages.

    Returns:
        The map as contiguous float32 on ``like``'s device.

    Raises:
        TypeError: not a tensor.
        ValueError: shape differs from ``like``, NaN/inf, or values outside [0, 1].
    """
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {tuple(like.shape)}, got {type(m).__name__}")
    if tuple(m.shape) != tuple(like.shape):
        raise ValueError(
            f"{name} must have the shape of the images it goes with, {tuple(like.shape)} "
            f"(B, 1, H, W), got {tuple(m.shape)}; resize the map to the image size first"
        )
    m = m.to(device=like.device, dtype=torch.float32).contiguous()
    if not torch.isfinite(m).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    lo, hi = float(m.min()), float(m.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; normalise it first")
    return m


def check_field(field: torch.Tensor, like: torch.Tensor | None = None, name: str = "field") -> torch.Tensor:
    """Check a displacement field (B, 2, H, W) in pixels.

    Args:
        field: (B, 2, H, W) floating tensor, finite.
        like: optional (B, C, H, W) images the field must match in B, H and W.
        name: used in messages.

    Returns:
        The field as contiguous float32.

    Raises:
        TypeError, ValueError: not a float tensor, wrong shape, or NaN/inf.
    """
    if not isinstance(field, torch.Tensor) or not torch.is_floating_point(field):
        raise TypeError(f"{name} must be a floating torch.Tensor of shape (B, 2, H, W)")
    if field.ndim != 4 or field.shape[1] != 2:
        raise ValueError(f"{name} must have shape (B, 2, H, W) (x then y displacement), got {tuple(field.shape)}")
    if like is not None and (field.shape[0] != like.shape[0] or field.shape[-2:] != like.shape[-2:]):
        raise ValueError(
            f"{name} of shape {tuple(field.shape)} does not match images of shape {tuple(like.shape)}; "
            "B, H and W must agree"
        )
    if not torch.isfinite(field).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return field.float().contiguous()
