"""Batched Demons registration in PyTorch (CPU or GPU, a batch of pairs at once).

For a fixed (healthy) image F and a moving (diseased reference) image M the field u is
updated every iteration from the intensity gradients of *both* images and the difference
between them (symmetric forces, Thirion 1998, in the ESM form of Vercauteren et al. that
ITK's ``FastSymmetricForcesDemonsRegistrationFilter`` uses):

    d   = F - M∘(id + u)                               intensity difference
    g   = (∇F + ∇(M∘(id + u))) / 2                     symmetric gradient, central differences
    du  = d g / (|g|^2 + alpha^2 d^2 / (4 L^2))        L = max_step, so |du| <= L / alpha

With ``alpha = 1`` this is SimpleITK's update with ``MaximumUpdateStepLength = max_step``
(ITK writes it with the sum of the two gradients). As in ITK: |d| under
``INTENSITY_THRESHOLD`` gives no update; a pixel whose sample p + u(p) lies more than half
a pixel outside the moving image gives no update; on the 1-pixel image frame the fixed
image contributes no gradient and the warped moving image a one-sided difference.

The field is updated additively (``variant="symmetric"``: u <- u + du) or through the
exponential map (``variant="diffeomorphic"``: u <- u ∘ exp(du), exp by scaling and
squaring with ITK's automatic number of squarings), optionally after Gaussian smoothing of
du (``sigma_update``), and then smoothed with a Gaussian of ``sigma_field`` pixels (ITK's
truncated discrete kernel, see :mod:`augment.registration.smoothing`).

Multi-resolution: ``pyramid_levels`` levels, coarse to fine, ``iterations`` at each; the
field is carried up in level pixels. ``tolerance > 0`` stops a pair once the RMS length of
its raw update (pixels) falls under it (ITK's ``MaximumRMSError``); 0 runs every iteration.

Speed (the loop is memory-bound): the field is kept planar, (B, 2, H, W), in
``grid_sample`` units, so the sampling grid is one addition and ``grid_sample`` reads it
through a permuted view; every buffer is allocated once per level and written with
``out=``; the fixed image's gradient is folded into one central difference of
``F + M∘(id + u)``; the Gaussian is a sum of shifted slices of a padded buffer (faster than
``conv2d`` for 3-9 taps on CPU) with the taps divided by the centre tap, the lost factor
being carried in a scalar instead of a pass over the field; on CPU the batch is cut into
chunks of about ``CPU_CHUNK_PIXELS`` that stay in cache.

Field convention: see :mod:`augment.registration.warp` (pixels, channel 0 = x, pull-back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from augment.config import RegistrationConfig
from augment.registration.checks import check_pair
from augment.registration.smoothing import downsample, gaussian_kernel1d, pyramid_shapes, upsample_field
from augment.registration.warp import identity_grid, pixel_scale

__all__ = ["INTENSITY_THRESHOLD", "CPU_CHUNK_PIXELS", "DemonsParams", "DemonsField", "demons_torch", "exp_steps"]

INTENSITY_THRESHOLD = 1e-3
"""|F - M| under this gives no update (ITK's ``IntensityDifferenceThreshold``)."""
CPU_CHUNK_PIXELS = 1 << 18
"""On CPU, pairs are registered in chunks of about this many pixels (cache-sized)."""
MAX_EXP_STEPS = 20
OUTSIDE_PENALTY = 1e30


@dataclass(frozen=True)
class DemonsParams:
    """The Demons settings, as read from :class:`~augment.config.RegistrationConfig`."""

    variant: str = "symmetric"
    iterations: int = 50
    alpha: float = 1.0
    sigma_field: float = 1.5
    sigma_update: float = 0.0
    max_step: float = 2.0
    levels: int = 2
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.variant not in ("symmetric", "diffeomorphic"):
            problems.append(f"variant must be 'symmetric' or 'diffeomorphic', got {self.variant!r}")
        if self.iterations < 1:
            problems.append(f"iterations must be >= 1, got {self.iterations}")
        if self.levels < 1:
            problems.append(f"levels must be >= 1, got {self.levels}")
        for name in ("alpha", "max_step"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("sigma_field", "sigma_update", "tolerance"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("bad Demons parameters: " + "; ".join(problems))

    @classmethod
    def from_config(cls, cfg: RegistrationConfig) -> "DemonsParams":
        return cls(
            variant=cfg.variant,
            iterations=cfg.iterations,
            alpha=cfg.alpha,
            sigma_field=cfg.sigma_field,
            sigma_update=cfg.sigma_update,
            max_step=cfg.max_step,
            levels=cfg.pyramid_levels,
            tolerance=cfg.tolerance,
        )

    @property
    def step_bound(self) -> float:
        """Largest update length per iteration, pixels (SimpleITK's ``MaximumUpdateStepLength``)."""
        return self.max_step / self.alpha


@dataclass(frozen=True)
class DemonsField:
    """What a Demons run returns (both backends).

    Attributes:
        field: (B, 2, H, W) displacement in pixels, channel 0 = x, pull-back convention.
        iterations: (B,) int64, iterations run, summed over pyramid levels.
        rms_change: (B,) RMS length of the last raw update at the finest level, pixels.
    """

    field: torch.Tensor
    iterations: torch.Tensor
    rms_change: torch.Tensor


def exp_steps(max_norm: float) -> int:
    """Squarings ITK's ``ExponentialDisplacementFieldImageFilter`` uses for a field of this max norm (pixels)."""
    if max_norm <= 0.0:
        return 0
    n = 2.0 + math.log2(max_norm)
    return 0 if n < 0 else min(int(n) + 1, MAX_EXP_STEPS)


class _Smoother:
    """Separable Gaussian with replicated borders over a padded, reused buffer.

    Write the field into :attr:`interior`, then :meth:`run` smooths it into ``out``. To
    save one full pass per axis the taps are divided by the centre tap, so ``run`` returns
    the smoothed field divided by :attr:`gain` (``centre**2``); the caller keeps track of it.
    """

    def __init__(self, b: int, h: int, w: int, sigma: float, device: torch.device) -> None:
        taps = gaussian_kernel1d(sigma).tolist()
        self.r = r = len(taps) // 2
        self.h, self.w = h, w
        self.gain = taps[r] ** 2
        self.ratios = [taps[r + j] / taps[r] for j in range(1, r + 1)]
        if r == 0:
            return
        self.pad = torch.zeros(b, 2, h + 2 * r, w + 2 * r, device=device)
        self.rows = torch.empty(b, 2, h + 2 * r, w, device=device)
        self.tmp = torch.empty(b, 2, h + 2 * r, w, device=device)
        self.interior = self.pad[:, :, r : r + h, r : r + w]

    def run(self, out: torch.Tensor) -> torch.Tensor:
        """Smooth :attr:`interior` into ``out`` (B, 2, H, W); the result is scaled by 1 / gain."""
        if self.r == 0:
            return out
        r, h, w, a, p = self.r, self.h, self.w, self.ratios, self.pad
        # zero-flux (replicate) borders, as ITK's neighbourhood operators
        p[:, :, :r, r : r + w].copy_(p[:, :, r : r + 1, r : r + w].expand(-1, -1, r, -1))
        p[:, :, r + h :, r : r + w].copy_(p[:, :, r + h - 1 : r + h, r : r + w].expand(-1, -1, r, -1))
        p[:, :, :, :r].copy_(p[:, :, :, r : r + 1].expand(-1, -1, -1, r))
        p[:, :, :, r + w :].copy_(p[:, :, :, r + w - 1 : r + w].expand(-1, -1, -1, r))
        rows, tmp = self.rows, self.tmp
        for j in range(1, r + 1):  # along x
            torch.add(p[..., r - j : r - j + w], p[..., r + j : r + j + w], out=tmp)
            if j == 1:
                torch.add(p[..., r : r + w], tmp, alpha=a[0], out=rows)
            else:
                rows.add_(tmp, alpha=a[j - 1])
        t = tmp[:, :, :h]
        for j in range(1, r + 1):  # along y
            torch.add(rows[:, :, r - j : r - j + h], rows[:, :, r + j : r + j + h], out=t)
            if j == 1:
                torch.add(rows[:, :, r : r + h], t, alpha=a[0], out=out)
            else:
                out.add_(t, alpha=a[j - 1])
        return out


def _smooth_inplace(x: torch.Tensor, smoother: _Smoother) -> torch.Tensor:
    if smoother.r == 0:
        return x
    smoother.interior.copy_(x)
    return smoother.run(x).mul_(smoother.gain)


@torch.no_grad()
def _run_level(
    f: torch.Tensor, m: torch.Tensor, u0: torch.Tensor | None, p: DemonsParams
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Demons at one resolution. f, m: (B, 1, H, W); u0: (B, 2, H, W) pixels or None.

    Returns the field (B, 2, H, W) in pixels, iterations run (B,) and last RMS change (B,).
    """
    b, _, h, w = f.shape
    dev = f.device
    sx, sy = pixel_scale(h, w)
    scale = torch.tensor([sx, sy], device=dev).view(1, 2, 1, 1)
    ident = identity_grid(h, w, dev)
    c = 4.0 / p.step_bound**2  # 4 because g below is 2x the symmetric gradient
    f0 = f[:, 0]
    diffeo = p.variant == "diffeomorphic"
    use_tol = p.tolerance > 0.0
    square = sx == sy

    smooth = _Smoother(b, h, w, p.sigma_field, dev)
    smooth_up = _Smoother(b, h, w, p.sigma_update, dev)
    # State: un * gamma is the field in grid_sample units; gamma absorbs the smoother's gain.
    un = torch.zeros(b, 2, h, w, device=dev) if u0 is None else (u0 * scale).contiguous()
    gamma = 1.0
    grid = torch.empty(b, 2, h, w, device=dev)
    ssum = torch.empty(b, h, w, device=dev)
    diff = torch.empty(b, h, w, device=dev)
    den = torch.empty(b, h, w, device=dev)
    g2 = torch.empty(b, h, w, device=dev)
    excess = torch.empty(b, 2, h, w, device=dev)
    g = torch.zeros(b, 2, h, w, device=dev)
    gx, gy = g[:, 0], g[:, 1]
    v = torch.empty(b, 2, h, w, device=dev) if (diffeo or smooth_up.r) else None
    eps = torch.tensor(1e-9, device=dev)
    lim_x, lim_y = 1.0 + sx / 2, 1.0 + sy / 2  # half a pixel beyond the image, grid units

    iters = torch.zeros(b, dtype=torch.int64, device=dev)
    rms = torch.full((b,), float("nan"), device=dev)
    active = torch.ones(b, dtype=torch.bool, device=dev)
    final = un.clone() if use_tol else None

    for it in range(p.iterations):
        need_rms = use_tol or it == p.iterations - 1
        torch.add(ident, un, alpha=gamma, out=grid)
        mw = F.grid_sample(m, grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border", align_corners=True)
        mw = mw[:, 0]
        torch.add(f0, mw, out=ssum)
        torch.sub(f0, mw, out=diff)
        d = F.hardshrink(diff, INTENSITY_THRESHOLD)
        torch.sub(ssum[:, :, 2:], ssum[:, :, :-2], out=gx[:, :, 1:-1])
        torch.sub(ssum[:, 2:], ssum[:, :-2], out=gy[:, 1:-1])
        # on the 1-pixel frame ITK uses no fixed gradient and a one-sided moving one
        torch.sub(mw[:, :, 1:2], mw[:, :, 0:1], out=gx[:, :, 0:1]).mul_(2.0)
        torch.sub(mw[:, :, -1:], mw[:, :, -2:-1], out=gx[:, :, -1:]).mul_(2.0)
        torch.sub(mw[:, 1:2], mw[:, 0:1], out=gy[:, 0:1]).mul_(2.0)
        torch.sub(mw[:, -1:], mw[:, -2:-1], out=gy[:, -1:]).mul_(2.0)
        if need_rms:
            torch.mul(gx, gx, out=g2)
            g2.addcmul_(gy, gy)
            torch.addcmul(g2, d, d, value=c, out=den)
            den.add_(eps)
        else:
            torch.addcmul(eps, gx, gx, out=den)
            den.addcmul_(gy, gy)
            den.addcmul_(d, d, value=c)
        # No update where p + u(p) lies over half a pixel outside the moving image (as ITK):
        # there the grid exceeds the limit, and a huge denominator zeroes the update.
        if square:
            torch.hardshrink(grid, lim_x, out=excess)
        else:
            torch.hardshrink(grid[:, 0], lim_x, out=excess[:, 0])
            torch.hardshrink(grid[:, 1], lim_y, out=excess[:, 1])
        den.addcmul_(excess[:, 0], excess[:, 0], value=OUTSIDE_PENALTY)
        den.addcmul_(excess[:, 1], excess[:, 1], value=OUTSIDE_PENALTY)
        fac = torch.div(d, den, out=den)  # du = 4 * fac * g, pixels
        if use_tol:
            fac.mul_(active.view(b, 1, 1))
        if need_rms:
            rms_now = 4.0 * (fac * fac * g2).flatten(1).mean(dim=1).sqrt()
            rms = torch.where(active, rms_now, rms)

        target = smooth.interior if smooth.r else un
        if v is None:  # additive update, written straight into the smoothing buffer
            torch.addcmul(un[:, 0], fac, gx, value=4.0 * sx / gamma, out=target[:, 0])
            torch.addcmul(un[:, 1], fac, gy, value=4.0 * sy / gamma, out=target[:, 1])
        else:
            torch.mul(g, fac.unsqueeze(1), out=v)
            v.mul_(scale * 4.0)  # the update in grid units
            _smooth_inplace(v, smooth_up)
            if diffeo:
                max_norm = math.hypot(float(v[:, 0].abs().max()) / sx, float(v[:, 1].abs().max()) / sy)
                n = exp_steps(max_norm)
                if n:
                    v.mul_(0.5**n)
                for _ in range(n):  # scaling and squaring: v <- v + v∘(id + v)
                    torch.add(ident, v, out=grid)
                    v.add_(F.grid_sample(v, grid.permute(0, 2, 3, 1), padding_mode="border", align_corners=True))
                torch.add(ident, v, out=grid)  # compose: u <- v + u∘(id + v)
                moved = F.grid_sample(un, grid.permute(0, 2, 3, 1), padding_mode="border", align_corners=True)
                torch.add(moved, v, alpha=1.0 / gamma, out=target)
            else:
                torch.add(un, v, alpha=1.0 / gamma, out=target)
        smooth.run(un)
        gamma *= smooth.gain
        if gamma < 1e-6:
            un.mul_(gamma)
            gamma = 1.0

        if use_tol:
            iters += active.to(torch.int64)
            newly = active & (rms < p.tolerance)
            if bool(newly.any()):
                final[newly] = un[newly] * gamma
                active &= ~newly
                if not bool(active.any()):
                    break
    un = un * gamma
    if use_tol:
        un = torch.where(active.view(b, 1, 1, 1), un, final)
    else:
        iters.fill_(p.iterations)
    return un / scale, iters, rms


@torch.no_grad()
def demons_torch(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    params: DemonsParams | RegistrationConfig,
    chunk_size: int | None = None,
) -> DemonsField:
    """Register each moving image onto its fixed image with batched Demons.

    Runs on the device of ``fixed``; ``moving`` is moved there.

    Args:
        fixed: (B, 1, H, W) float in [0, 1], the healthy queries.
        moving: (B, 1, H, W) float in [0, 1], the references to move onto them.
        params: a :class:`DemonsParams` or a :class:`~augment.config.RegistrationConfig`.
        chunk_size: pairs registered at once; default: all on GPU, about
            ``CPU_CHUNK_PIXELS`` pixels' worth on CPU.

    Returns:
        :class:`DemonsField` with the (B, 2, H, W) field in pixels.

    Raises:
        ValueError, TypeError: bad images (see :func:`augment.registration.checks.check_pair`)
            or an unknown variant.
    """
    p = params if isinstance(params, DemonsParams) else DemonsParams.from_config(params)
    fixed, moving = check_pair(fixed, moving)
    b, _, h, w = fixed.shape
    if chunk_size is None:
        chunk_size = b if fixed.is_cuda else max(1, CPU_CHUNK_PIXELS // (h * w))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    shapes = pyramid_shapes(h, w, p.levels)
    fields, iters, rmss = [], [], []
    for s in range(0, b, chunk_size):
        f, m = fixed[s : s + chunk_size], moving[s : s + chunk_size]
        u = None
        n_it = torch.zeros(f.shape[0], dtype=torch.int64, device=f.device)
        for size in reversed(shapes):
            if u is not None:
                u = upsample_field(u, size)
            u, it, rms = _run_level(downsample(f, size), downsample(m, size), u, p)
            n_it += it
        fields.append(u)
        iters.append(n_it)
        rmss.append(rms)
    return DemonsField(field=torch.cat(fields), iterations=torch.cat(iters), rms_change=torch.cat(rmss))
