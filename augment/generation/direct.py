"""The two steps of generation on their own: inpaint a given mask, register a given pair.

* :func:`inpaint_image`: a radiograph, a mask and findings -> the inpainted radiograph
  (no registration), with classifier probabilities before and after;
* :func:`register_images`: a fixed and a moving radiograph (and a map on the moving one)
  -> the moving image and map warped onto the fixed one, with similarity figures. Demons
  runs at the working size; the field is scaled up to the images' own size, so the
  outputs have the inputs' resolution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from augment.config import RegistrationConfig, RunConfig
from augment.data.io import validate_batch
from augment.findings import FINDINGS, finding_index
from augment.generation.bundle import ModelBundle
from augment.generation.generate import probabilities, sampling_config
from augment.synthesis.chain import paint
from augment.registration import folded_fraction, mse, ncc, register, warp_image, warp_tensor

__all__ = ["InpaintOutput", "RegisterOutput", "inpaint_image", "register_images", "upscale_field"]


@dataclass(frozen=True)
class InpaintOutput:
    """Attributes:
    image: (1, 1, H, W) float32 in [0, 1]; equal to the input outside ``mask``.
    mask: (1, 1, H, W) bool.
    findings: the findings painted in.
    proba_before, proba_after: the 14 classifier probabilities.
    seed, steps, guidance: sampling settings used.
    seconds: wall time.
    """

    image: torch.Tensor
    mask: torch.Tensor
    findings: tuple[str, ...]
    proba_before: dict[str, float]
    proba_after: dict[str, float]
    seed: int
    steps: int
    guidance: float
    seconds: float


@dataclass(frozen=True)
class RegisterOutput:
    """Attributes:
    warped: (1, 1, H, W) the moving image on the fixed one's grid, in [0, 1].
    warped_map: (1, 1, H, W) the map carried along, or None.
    mse_before, mse_after, ncc_before, ncc_after: similarity to the fixed image, at (H, W).
    folded_fraction: share of pixels where the field folds (Jacobian <= 0).
    work_size: side at which Demons ran.
    seconds: wall time.
    """

    warped: torch.Tensor
    warped_map: torch.Tensor | None
    mse_before: float
    mse_after: float
    ncc_before: float
    ncc_after: float
    folded_fraction: float
    work_size: int
    seconds: float


def _one(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim == 2:
        x = x[None, None]
    validate_batch(x, name)
    if x.shape[0] != 1:
        raise ValueError(f"{name}: one image expected, got a batch of {x.shape[0]}")
    return x.float()


def inpaint_image(
    bundle: ModelBundle,
    cfg: RunConfig,
    image: torch.Tensor,
    mask: torch.Tensor,
    findings: Sequence[str],
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
) -> InpaintOutput:
    """Paint ``findings`` into ``mask`` of ``image``.

    Args:
        image: (1, 1, H, W) or (H, W) in [0, 1].
        mask: same shape; ``> 0.5`` (or True) is repainted. Must not be empty.
        findings: NIH finding names.

    Raises:
        ValueError: shapes differ, empty mask, unknown finding.
    """
    t0 = time.perf_counter()
    image = _one(image, "image")
    if mask.ndim == 2:
        mask = mask[None, None]
    if tuple(mask.shape) != tuple(image.shape):
        raise ValueError(f"mask is {tuple(mask.shape[-2:])} but the image is {tuple(image.shape[-2:])}; give a mask of the image's size")
    maskb = mask if mask.dtype == torch.bool else mask > 0.5
    if not bool(maskb.any()):
        raise ValueError("the mask is empty: mark the pixels to repaint in white")
    if not findings:
        raise ValueError(f"name at least one finding, one of {list(FINDINGS)}")
    names = tuple(dict.fromkeys(FINDINGS[finding_index(f)] for f in findings))
    icfg = sampling_config(bundle, cfg, steps, guidance)
    res = paint(bundle.generator, image, maskb, [list(names)], icfg, [seed])
    out = res.images.float().cpu()
    probs = probabilities(bundle, [image, out])
    as_dict = lambda p: {f: round(float(v), 6) for f, v in zip(FINDINGS, p.tolist())}  # noqa: E731
    return InpaintOutput(out, maskb.cpu(), names, as_dict(probs[0]), as_dict(probs[1]), int(seed), icfg.steps, icfg.guidance,
                         round(time.perf_counter() - t0, 4))


def upscale_field(field: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A (B, 2, s, s) pixel field resampled to (B, 2, h, w), displacements rescaled (``align_corners=True``)."""
    sh, sw = field.shape[-2:]
    if (sh, sw) == (h, w):
        return field
    up = F.interpolate(field, size=(h, w), mode="bilinear", align_corners=True)
    scale = torch.tensor([(w - 1) / max(sw - 1, 1), (h - 1) / max(sh - 1, 1)], dtype=up.dtype, device=up.device)
    return up * scale.view(1, 2, 1, 1)


def register_images(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    cfg: RegistrationConfig,
    work_size: int,
    moving_map: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> RegisterOutput:
    """Register ``moving`` onto ``fixed`` and carry ``moving_map`` along.

    Args:
        fixed, moving: (1, 1, H, W) (or (H, W)) in [0, 1], the same size.
        cfg: registration settings.
        work_size: Demons runs at (work_size, work_size); the field is scaled to (H, W).
        moving_map: optional (1, 1, H, W) map in [0, 1] on ``moving``.
        device: where Demons runs (the service passes its models' device, the run's rule).

    Raises:
        ValueError: sizes differ, constant images, a map of another size.
    """
    t0 = time.perf_counter()
    fixed, moving = _one(fixed, "fixed"), _one(moving, "moving")
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed is {tuple(fixed.shape[-2:])} and moving is {tuple(moving.shape[-2:])}; give two images of one size")
    if moving_map is not None:
        if moving_map.ndim == 2:
            moving_map = moving_map[None, None]
        if tuple(moving_map.shape) != tuple(moving.shape):
            raise ValueError(f"map is {tuple(moving_map.shape[-2:])} but moving is {tuple(moving.shape[-2:])}; give a map of the moving image's size")
    h, w = fixed.shape[-2:]
    small = lambda x: F.interpolate(x, size=(work_size, work_size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)  # noqa: E731
    reg = register(small(fixed).to(device), small(moving).to(device), cfg)
    field = upscale_field(reg.field.float().cpu(), h, w)
    warped = warp_image(moving, field)
    warped_map = None if moving_map is None else warp_tensor(moving_map.float(), field, "bilinear").clamp_(0.0, 1.0)
    return RegisterOutput(
        warped=warped,
        warped_map=warped_map,
        mse_before=round(float(mse(fixed, moving)[0]), 6),
        mse_after=round(float(mse(fixed, warped)[0]), 6),
        ncc_before=round(float(ncc(fixed, moving)[0]), 6),
        ncc_after=round(float(ncc(fixed, warped)[0]), 6),
        folded_fraction=round(float(folded_fraction(field)[0]), 6),
        work_size=work_size,
        seconds=round(time.perf_counter() - t0, 4),
    )
