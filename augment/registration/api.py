"""The public registration function: pre-alignment, Demons (torch or SimpleITK), metrics.

``register(fixed, moving, cfg)`` moves each diseased reference (``moving``) onto its healthy
query (``fixed``) and returns a :class:`Registration`; ``warp_map(map, registration)``
carries the reference's attention map along the same field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from augment.config import RegistrationConfig
from augment.registration.checks import check_map, check_pair
from augment.registration.demons import DemonsParams, demons_torch
from augment.registration.prealign import affine_field, compose_with_affine, estimate_prealignment
from augment.registration.warp import folded_fraction, mse, ncc, warp_image, warp_tensor

__all__ = ["Registration", "register", "warp_map"]


@dataclass(frozen=True)
class Registration:
    """A batch of registrations of ``moving`` onto ``fixed``.

    Attributes:
        warped: (B, 1, H, W) the moving image pulled through ``field``, in [0, 1].
        field: (B, 2, H, W) displacement in pixels, channel 0 = x (columns), 1 = y (rows);
            pull-back: ``warped(y, x) = moving(y + field[:, 1], x + field[:, 0])``. It
            includes the pre-alignment.
        iterations: (B,) int64 Demons iterations run, summed over pyramid levels.
        mse_before, mse_after: (B,) mean squared difference to ``fixed`` before and after.
        ncc_before, ncc_after: (B,) global normalised cross-correlation before and after.
        folded_fraction: (B,) share of pixels whose Jacobian determinant is <= 0.
        backend: "torch" or "simpleitk".
        variant: "symmetric" or "diffeomorphic".
        prealign_matrix: (B, 2, 3) pixel-space pre-alignment, or None when none was used.
        seconds: wall time of the call.
    """

    warped: torch.Tensor
    field: torch.Tensor
    iterations: torch.Tensor
    mse_before: torch.Tensor
    mse_after: torch.Tensor
    ncc_before: torch.Tensor
    ncc_after: torch.Tensor
    folded_fraction: torch.Tensor
    backend: str
    variant: str
    prealign_matrix: torch.Tensor | None
    seconds: float

    def __len__(self) -> int:
        return int(self.field.shape[0])


def register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    cfg: RegistrationConfig | None = None,
    generator: torch.Generator | None = None,
) -> Registration:
    """Register each diseased reference onto its healthy query.

    Steps: optional global pre-alignment (``cfg.prealign``), Demons on the pre-aligned
    pair with ``cfg.backend`` and ``cfg.variant``, composition into one field, one
    bilinear warp of the original moving image, metrics.

    Args:
        fixed: (B, 1, H, W) float in [0, 1], healthy queries.
        moving: (B, 1, H, W) float in [0, 1], diseased references.
        cfg: settings; defaults to ``RegistrationConfig()``.
        generator: accepted for the library's uniform signature; registration is
            deterministic and draws no random numbers.

    Returns:
        :class:`Registration` with tensors on the input's device.

    Raises:
        TypeError, ValueError: bad images (different sizes, empty, constant, NaN, outside
            [0, 1]) or an unusable device; the message names the problem.
    """
    cfg = cfg or RegistrationConfig()
    t0 = time.perf_counter()
    fixed, moving = check_pair(fixed, moving)
    out_device = fixed.device
    # the torch backend computes where the inputs are (the caller placed them on the run's
    # device, augment.device.run_device); SimpleITK works on the CPU
    device = fixed.device if cfg.backend == "torch" else torch.device("cpu")
    f, m = fixed.to(device), moving.to(device)
    b, _, h, w = f.shape

    matrix = None
    m_aligned = m
    if cfg.prealign != "none":
        matrix = estimate_prealignment(f, m, kind=cfg.prealign).matrix
        m_aligned = warp_image(m, affine_field(matrix, h, w))

    params = DemonsParams.from_config(cfg)
    if cfg.backend == "torch":
        result = demons_torch(f, m_aligned, params)
    elif cfg.backend == "simpleitk":
        from augment.registration.sitk_backend import demons_sitk

        result = demons_sitk(f, m_aligned, params)
    else:
        raise ValueError(f"registration.backend must be 'torch' or 'simpleitk', got {cfg.backend!r}")

    field = result.field if matrix is None else compose_with_affine(result.field, matrix)
    warped = warp_image(m, field)
    out = Registration(
        warped=warped.to(out_device),
        field=field.to(out_device),
        iterations=result.iterations.to(out_device),
        mse_before=mse(f, m).to(out_device),
        mse_after=mse(f, warped).to(out_device),
        ncc_before=ncc(f, m).to(out_device),
        ncc_after=ncc(f, warped).to(out_device),
        folded_fraction=folded_fraction(field).to(out_device),
        backend=cfg.backend,
        variant=cfg.variant,
        prealign_matrix=None if matrix is None else matrix.to(out_device),
        seconds=time.perf_counter() - t0,
    )
    return out


def warp_map(m: torch.Tensor, registration: Registration, threshold: float | None = None) -> torch.Tensor:
    """Carry an attention map (or mask) of the references onto the queries.

    Args:
        m: (B, 1, H, W) map in [0, 1] (or bool mask) on the references' pixel grid.
        registration: the result of :func:`register` for the same pairs.
        threshold: ``None`` returns the bilinearly warped map (float in [0, 1]); a value in
            (0, 1) returns the boolean mask ``warped >= threshold``.

    Returns:
        (B, 1, H, W) float map or bool mask on the queries' grid.

    Raises:
        ValueError: the map's shape is not the registration's (B, 1, H, W), NaN, outside
            [0, 1], or a threshold outside (0, 1).
    """
    like = registration.warped
    m = check_map(m, like, "map")
    out = warp_tensor(m, registration.field.to(m.device), "bilinear").clamp_(0.0, 1.0)
    if threshold is None:
        return out
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return out >= threshold
