"""SimpleITK Demons behind the same interface as the torch backend.

``FastSymmetricForcesDemonsRegistrationFilter`` (``variant="symmetric"``) and
``DiffeomorphicDemonsRegistrationFilter`` (``variant="diffeomorphic"``), one pair at a time,
with the parameters of :class:`~augment.registration.demons.DemonsParams`:

=====================  ==================================================================
config                 SimpleITK
=====================  ==================================================================
iterations             ``NumberOfIterations`` (per pyramid level)
sigma_field            ``StandardDeviations``; ``SmoothDisplacementField`` off when 0
sigma_update           ``UpdateFieldStandardDeviations``; ``SmoothUpdateField`` when > 0
max_step / alpha       ``MaximumUpdateStepLength`` (ITK's normaliser is 1 / L^2)
tolerance              ``MaximumRMSError`` (SimpleITK's default 0.02 would stop early;
                       0 runs every iteration)
(fixed)                ``IntensityDifferenceThreshold`` 1e-3, ``MaximumError`` 0.1,
                       ``MaximumKernelWidth`` 30, symmetric gradient
=====================  ==================================================================

The pyramid is the torch backend's (same area-averaged levels, same field upsampling);
each level is handed to SimpleITK with spacing 1 and origin 0, so that its physical
displacement (x, y) *is* the displacement in level pixels. Field conversion:
``sitk.GetArrayFromImage(field)`` is (H, W, 2) with x first; the torch field is its
(2, H, W) transpose (see :func:`field_from_sitk` / :func:`field_to_sitk`).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from augment.config import RegistrationConfig
from augment.registration.checks import check_pair
from augment.registration.demons import INTENSITY_THRESHOLD, DemonsField, DemonsParams
from augment.registration.smoothing import (
    KERNEL_MAX_ERROR,
    KERNEL_MAX_WIDTH,
    downsample,
    pyramid_shapes,
    upsample_field,
)

__all__ = ["field_from_sitk", "field_to_sitk", "make_filter", "demons_sitk"]


def field_from_sitk(field: sitk.Image) -> torch.Tensor:
    """SimpleITK displacement field (vector image, x then y) -> (2, H, W) float32 pixels.

    Assumes spacing 1, origin 0 and identity direction (as this module sets them).
    """
    arr = sitk.GetArrayFromImage(field)  # (H, W, 2)
    if arr.ndim != 3 or arr.shape[-1] != 2:
        raise ValueError(f"expected a 2-D displacement field with 2 components, got array shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def field_to_sitk(field: torch.Tensor) -> sitk.Image:
    """(2, H, W) pixels -> SimpleITK displacement field (float64 vector image, x then y)."""
    if field.ndim != 3 or field.shape[0] != 2:
        raise ValueError(f"expected a (2, H, W) field, got shape {tuple(field.shape)}")
    arr = field.detach().cpu().double().numpy().transpose(1, 2, 0)
    return sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=True)


def make_filter(p: DemonsParams, threads: int | None = None):
    """A configured SimpleITK Demons filter for ``p.variant``."""
    if p.variant == "symmetric":
        flt = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    elif p.variant == "diffeomorphic":
        flt = sitk.DiffeomorphicDemonsRegistrationFilter()
        flt.SetUseFirstOrderExp(False)
    else:
        raise ValueError(f"variant must be 'symmetric' or 'diffeomorphic', got {p.variant!r}")
    flt.SetNumberOfIterations(p.iterations)
    flt.SetMaximumRMSError(p.tolerance)
    flt.SetMaximumUpdateStepLength(p.step_bound)
    flt.SetIntensityDifferenceThreshold(INTENSITY_THRESHOLD)
    flt.SetMaximumError(KERNEL_MAX_ERROR)
    flt.SetMaximumKernelWidth(KERNEL_MAX_WIDTH)
    flt.SetUseGradientType(type(flt).Symmetric)
    flt.SetSmoothDisplacementField(p.sigma_field > 0)
    if p.sigma_field > 0:
        flt.SetStandardDeviations(p.sigma_field)
    flt.SetSmoothUpdateField(p.sigma_update > 0)
    if p.sigma_update > 0:
        flt.SetUpdateFieldStandardDeviations(p.sigma_update)
    if threads is not None:
        flt.SetNumberOfThreads(threads)
    return flt


def _image(x: torch.Tensor) -> sitk.Image:
    return sitk.GetImageFromArray(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))


def demons_sitk(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    params: DemonsParams | RegistrationConfig,
    threads: int | None = None,
) -> DemonsField:
    """Register each pair with SimpleITK's Demons (CPU, one pair at a time).

    Args:
        fixed: (B, 1, H, W) float in [0, 1].
        moving: (B, 1, H, W) float in [0, 1].
        params: :class:`DemonsParams` or :class:`~augment.config.RegistrationConfig`.
        threads: SimpleITK threads per filter; default: SimpleITK's global default.

    Returns:
        :class:`DemonsField` on ``fixed``'s device, field (B, 2, H, W) in pixels.
    """
    p = params if isinstance(params, DemonsParams) else DemonsParams.from_config(params)
    fixed, moving = check_pair(fixed, moving)
    device = fixed.device
    fixed, moving = fixed.cpu(), moving.cpu()
    b, _, h, w = fixed.shape
    shapes = pyramid_shapes(h, w, p.levels)
    pyr_f = {s: downsample(fixed, s) for s in shapes}
    pyr_m = {s: downsample(moving, s) for s in shapes}
    fields, iters, rmss = [], [], []
    for i in range(b):
        u = None
        n_it = 0
        rms = float("nan")
        for size in reversed(shapes):
            flt = make_filter(p, threads)
            f_img, m_img = _image(pyr_f[size][i, 0]), _image(pyr_m[size][i, 0])
            if u is None:
                out = flt.Execute(f_img, m_img)
            else:
                u = upsample_field(u[None], size)[0]
                out = flt.Execute(f_img, m_img, field_to_sitk(u))
            u = field_from_sitk(out)
            n_it += int(flt.GetElapsedIterations())
            rms = float(flt.GetRMSChange())
        fields.append(u)
        iters.append(n_it)
        rmss.append(rms)
    return DemonsField(
        field=torch.stack(fields).to(device),
        iterations=torch.tensor(iters, dtype=torch.int64, device=device),
        rms_change=torch.tensor(rmss, dtype=torch.float32, device=device),
    )
