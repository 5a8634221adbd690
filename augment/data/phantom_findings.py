"""Findings drawn into phantom radiographs, each with its ground-truth mask.

Every finding works the way it does on a film: it edits the additive layers of
:mod:`augment.data.phantom_anatomy` before they are composed. Airspace disease
(consolidation, atelectasis, effusion) *removes lung air* and hides the vessels inside it,
a pneumothorax *adds air* where the lung has fallen away and leaves no markings there, a
nodule or mass *adds* a round soft-tissue density, and cardiomegaly enlarges the heart
silhouette before the lungs are cut around it.

A finding has two steps, both driven by its own random generator so that adding one
finding never changes the anatomy or another finding:

- ``prepare(rng, anatomy)`` draws what changes the anatomy itself (a larger heart, a lifted
  hemidiaphragm) and returns a parameter dict;
- ``apply(p, rng, ctx)`` draws the placement, edits the layers in place and returns the
  boolean mask (H, W) of the finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import ndimage as ndi

from augment.data.phantom_anatomy import Anatomy, Geometry, Layers
from augment.data.phantom_geometry import smoothstep, splat_segments

MM_PER_UNIT = 400.0  # one canonical unit (the image width at scale 1) is about 40 cm of patient


@dataclass
class Context:
    """What a finding may look at and edit."""

    anatomy: Anatomy
    geometry: Geometry
    layers: Layers
    vessels: list[np.ndarray]


def _visible(ctx: Context, side: int) -> np.ndarray:
    return ctx.geometry.lungs[side] > 0.5


def _pick_point(rng: np.random.Generator, ctx: Context, side: int, margin_px: float,
                y_range: tuple[float, float] = (-1.0, 2.0)) -> tuple[int, int]:
    """A pixel (row, col) of one lung at least ``margin_px`` from its edge, within a band of
    canonical heights; the margin shrinks when the lung is too small for it."""
    lung = _visible(ctx, side)
    dist = ndi.distance_transform_edt(lung)
    Y = ctx.geometry.frame.Y
    band = (Y >= y_range[0]) & (Y <= y_range[1])
    for m in (margin_px, margin_px * 0.6, margin_px * 0.3, 0.5):
        rows, cols = np.nonzero((dist >= m) & band)
        if len(rows):
            k = int(rng.integers(len(rows)))
            return int(rows[k]), int(cols[k])
    rows, cols = np.nonzero(lung)
    if not len(rows):
        raise RuntimeError("phantom lung is empty; the image is too small to draw findings")
    k = int(rng.integers(len(rows)))
    return int(rows[k]), int(cols[k])


def _sides(rng: np.random.Generator, both: float = 0.0) -> tuple[int, ...]:
    if rng.uniform() < both:
        return (0, 1)
    return (int(rng.integers(2)),)


def _grid(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    n = ctx.geometry.frame.size
    r, c = np.mgrid[0:n, 0:n]
    return r.astype(np.float32), c.astype(np.float32)


def _finish(soft: np.ndarray, ctx: Context, threshold: float = 0.35) -> np.ndarray:
    """Boolean mask of a soft map, kept inside the visible lungs."""
    return (soft > threshold) & (ctx.geometry.lung > 0.5)


# --- Cardiomegaly -------------------------------------------------------------------------


def _cardiomegaly_prepare(rng: np.random.Generator, a: Anatomy) -> dict[str, Any]:
    return {"ctr": float(rng.uniform(0.55, 0.66))}


def _cardiomegaly_apply(p: dict[str, Any], rng: np.random.Generator, ctx: Context) -> np.ndarray:
    # The heart was already drawn enlarged (build_geometry got p["ctr"]); the mask is it.
    g = ctx.geometry
    return (g.heart > 0.5) & (g.body > 0.5)


# --- Effusion -----------------------------------------------------------------------------


def _effusion_prepare(rng: np.random.Generator, a: Anatomy) -> dict[str, Any]:
    sides = _sides(rng, both=0.25)
    return {"sides": sides, "height": [float(rng.uniform(0.06, 0.28)) for _ in sides],
            "meniscus": [float(rng.uniform(0.06, 0.16)) for _ in sides]}


def _effusion_apply(p: dict[str, Any], rng: np.random.Generator, ctx: Context) -> np.ndarray:
    """Fluid layering at a lung base: opaque below a meniscus that climbs the lateral wall,
    blunting the costophrenic angle and hiding the hemidiaphragm."""
    g, a, L = ctx.geometry, ctx.anatomy, ctx.layers
    X, Y = g.frame.X, g.frame.Y
    total = np.zeros_like(X)
    for side, h, men in zip(p["sides"], p["height"], p["meniscus"]):
        w = a.lung_half_width[side]
        sgn = -1 if side == 0 else 1
        cp_y = g.dome_y[side] + a.cp_drop
        lateral = np.clip(sgn * (X - 0.5) / w, 0.0, 1.2)
        level = cp_y - h - men * lateral**2.5 - 0.04 * np.exp((lateral - 1.0) / 0.06)
        fluid = smoothstep((Y - level) / 0.02) * (0.8 + 0.2 * smoothstep((Y - level) / 0.1))
        central = np.maximum(g.heart, g.mediastinum)
        fluid = fluid * np.clip(g.lung_fields[side] * 1.2, 0.0, 1.0) * (1.0 - 0.7 * central)
        total = np.maximum(total, fluid)
    L.air *= 1.0 - 0.97 * total
    L.vessels *= 1.0 - total
    L.opacity += 0.03 * total
    return _finish(total, ctx, 0.4)


# --- Pneumothorax -------------------------------------------------------------------------


def _pneumothorax_prepare(rng: np.random.Generator, a: Anatomy) -> dict[str, Any]:
    return {"side": int(rng.integers(2)), "depth": float(rng.uniform(0.03, 0.09))}


def _pneumothorax_apply(p: dict[str, Any], rng: np.random.Generator, ctx: Context) -> np.ndarray:
    """Air between chest wall and a fallen-away lung: a lucent rim at the apex and lateral
    wall without lung markings, bounded by a thin white visceral pleural line."""
    g, a, L = ctx.geometry, ctx.anatomy, ctx.layers
    f = g.frame
    X, Y = f.X, f.Y
    side = p["side"]
    sgn = -1 if side == 0 else 1
    field = g.lung_fields[side] > 0.5
    # Chest wall: the apical and lateral part of the lung field's edge.
    edge = field & ~ndi.binary_erosion(field)
    wall = edge & (Y < g.dome_y[side] - 0.02) & ((sgn * (X - 0.5) > 0.12) | (Y < a.apex_y + 0.08))
    if not wall.any():
        wall = edge
    dist = ndi.distance_transform_edt(~wall).astype(np.float32) / f.px
    t = np.clip((Y - a.apex_y) / (g.dome_y[side] - a.apex_y), 0.0, 1.0)
    width = p["depth"] * (1.0 - 0.75 * t)  # widest at the apex, tapering to the base
    px = 1.0 / f.px
    rim = smoothstep((width - dist) / (1.5 * px)) * field
    L.vessels *= 1.0 - rim
    L.air = L.air * (1.0 + 0.25 * rim) + 0.035 * rim  # no lung tissue left: pure air
    L.air[field & (rim < 0.5)] *= 0.92  # the collapsed lung is a little denser
    line = np.exp(-(((dist - width) / (0.9 * px)) ** 2)) * field * (dist > 0.004)
    L.opacity += 0.09 * line
    return _finish(rim, ctx, 0.5)


# --- Nodule and mass ----------------------------------------------------------------------


def _round_opacity(rng: np.random.Generator, ctx: Context, diameter_mm: float, amplitude: float,
                   lobulation: float, y_range: tuple[float, float]) -> np.ndarray:
    g = ctx.geometry
    f = g.frame
    r_px = max(1.6, diameter_mm / MM_PER_UNIT * f.px / 2)
    side = int(rng.integers(2))
    row, col = _pick_point(rng, ctx, side, r_px * 0.9 + 1, y_range)
    R, C = _grid(ctx)
    dy, dx = R - row, C - col
    rho = np.sqrt(dx**2 + dy**2)
    theta = np.arctan2(dy, dx)
    edge = np.full_like(rho, r_px)
    for k in range(2, 6):
        edge *= 1.0 + lobulation * rng.normal(0, 1.0 / k) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    u = np.clip(rho / edge, 0.0, 1.5)
    profile = np.sqrt(np.clip(1.0 - u**2, 0.0, 1.0)) * 0.85 + 0.15 * smoothstep((1.05 - u) / 0.1)
    ctx.layers.opacity += amplitude * profile * (0.6 + 0.4 * g.lung)
    ctx.layers.vessels *= 1.0 - 0.5 * (u < 1)
    return _finish(smoothstep((1.0 - u) / 0.1), ctx, 0.5)


def _nodule_prepare(rng: np.random.Generator, a: Anatomy) -> dict[str, Any]:
    return {"diameter_mm": float(rng.uniform(7.0, 28.0)), "amplitude": float(rng.uniform(0.12, 0.22))}


def _nodule_apply(p: dict[str, Any], rng: np.random.Generator, ctx: Context) -> np.ndarray:
    """A small round opacity (< 3 cm), sharply marginated, anywhere in a lung."""
    return _round_opacity(rng, ctx, p["diameter_mm"], p["amplitude"], 0.08, (-1.0, 2.0))


def _mass_prepare(rng: np.random.Generator, a: Anatomy) -> dict[str, Any]:
    return {"diameter_mm": float(rng.uniform(32.0, 70.0)), "amplitude": float(rng.uniform(0.22, 0.35))}


def _mass_apply(p: dict[str, Any], rng: np.random.Generator, ctx: Context) -> np.ndarray:
    """A larger (> 3 cm) lobulated opacity, often central (perihilar or upper zone)."""
    a = ctx.anatomy
    return _round_opacity(rng, ctx, p["diameter_mm"], p["amplitude"], 0.35, (a.apex_y + 0.05, a.heart_top + 0.2))


# --- Consolidation ------------------------------------------------------------------------


def _consolidation_prepare(rng: np.random.Generator, a: Anatomy) -> dict[str, Any]:
    side = int(rng.integers(2))
    lobes = ("upper", "middle", "lower") if side == 0 else ("upper", "lower")
    return {"side": side, "lobe": str(rng.choice(lobes)), "extent": float(rng.uniform(0.1, 0.17))}


def _consolidation_apply(p: dict[str, Any], rng: np.random.Generator, ctx: Context) -> np.ndarray:
    """Patchy airspace opacity inside one lobe, stopping at a fissure, with air bronchograms."""
    g, a, L = ctx.geometry, ctx.anatomy, ctx.layers
    f = g.frame
    X, Y = f.X, f.Y
    side = p["side"]
    fissure = g.hila[0][1] + 0.02  # the horizontal fissure of the right lung, about hilar height
    if p["lobe"] == "upper":
        lobe = smoothstep((fissure - Y) / 0.006) if side == 0 else smoothstep((g.hila[1][1] + 0.06 - Y) / 0.03)
        y_range = (a.apex_y + 0.04, fissure - 0.03)
    elif p["lobe"] == "middle":
        lobe = smoothstep((Y - fissure) / 0.006) * smoothstep((g.dome_y[0] - 0.04 - Y) / 0.04)
        y_range = (fissure + 0.03, g.dome_y[0] - 0.05)
    else:
        lobe = smoothstep((Y - g.hila[side][1] - 0.02) / 0.04)
        y_range = (g.hila[side][1] + 0.08, g.dome_y[side])
    row, col = _pick_point(rng, ctx, side, 0.03 * f.px, y_range)
    cx, cy = X[row, col], Y[row, col]
    ex = p["extent"] * rng.uniform(0.9, 1.4)
    ey = p["extent"] * rng.uniform(0.7, 1.1)
    env = 1.0 - ((X - cx) / ex) ** 2 - ((Y - cy) / ey) ** 2
    noise = ndi.gaussian_filter(rng.standard_normal(X.shape).astype(np.float32), 0.03 * f.px)
    noise /= max(float(noise.std()), 1e-6)
    patchy = smoothstep((env + 0.45 * noise) / 0.9)
    density = patchy * lobe * np.clip(g.lung_fields[side] * 1.2, 0.0, 1.0)
    fine = ndi.gaussian_filter(rng.standard_normal(X.shape).astype(np.float32), 0.012 * f.px)
    fine /= max(float(fine.std()), 1e-6)
    density = np.clip(density * (0.8 + 0.1 * fine), 0.0, 1.0)
    L.air *= 1.0 - 0.8 * density
    L.vessels *= 1.0 - 0.8 * density
    # Air bronchograms: the bronchi beside the arteries stay aerated inside the opacity.
    segs = ctx.vessels[side].copy()
    segs[:, 4] *= 0.55
    bronchi = splat_segments(f, segs[segs[:, 4] * f.px > 0.35], 0.08)
    L.air += np.clip(bronchi, 0.0, 0.08) * smoothstep((density - 0.5) / 0.3)
    return _finish(density, ctx, 0.4)


# --- Atelectasis --------------------------------------------------------------------------


def _atelectasis_prepare(rng: np.random.Generator, a: Anatomy) -> dict[str, Any]:
    side = int(rng.integers(2))
    kind = "plate" if rng.uniform() < 0.5 else "lobar"
    lift = float(rng.uniform(0.025, 0.05)) if kind == "lobar" else float(rng.uniform(0.0, 0.012))
    raise_ = (lift, 0.0) if side == 0 else (0.0, lift)
    return {"side": side, "kind": kind, "dome_raise": raise_, "bands": int(rng.integers(1, 4))}


def _atelectasis_apply(p: dict[str, Any], rng: np.random.Generator, ctx: Context) -> np.ndarray:
    """Plate-like (linear) bands at a lung base, or a collapsed lower lobe: a wedge from the
    hilum to the diaphragm with volume loss (the hemidiaphragm was lifted beforehand)."""
    g, a, L = ctx.geometry, ctx.anatomy, ctx.layers
    f = g.frame
    X, Y = f.X, f.Y
    side = p["side"]
    sgn = -1 if side == 0 else 1
    hx, hy = g.hila[side]
    if p["kind"] == "plate":
        density = np.zeros_like(X)
        for _ in range(p["bands"]):
            row, col = _pick_point(rng, ctx, side, 0.02 * f.px, (hy + 0.08, g.dome_y[side] - 0.02))
            cx, cy = X[row, col], Y[row, col]
            ang = rng.normal(0.0, 0.2)
            half_len = rng.uniform(0.04, 0.09)
            half_thick = max(rng.uniform(0.004, 0.008), 1.0 / f.px)
            u = (X - cx) * math.cos(ang) + (Y - cy) * math.sin(ang)
            v = -(X - cx) * math.sin(ang) + (Y - cy) * math.cos(ang)
            band = smoothstep((half_thick - np.abs(v)) / (0.6 * half_thick)) * smoothstep((half_len - np.abs(u)) / 0.02)
            density = np.maximum(density, band)
        density = 0.6 * ndi.gaussian_filter(density, 0.5)
    else:
        base_y = g.dome_y[side] + 0.01
        wedge = np.array([(hx, hy - 0.01), (hx + sgn * 0.04, hy + 0.02),
                          (0.5 + sgn * a.lung_half_width[side] * rng.uniform(0.65, 0.85), base_y + 0.02),
                          (0.5 + sgn * 0.05, base_y + 0.04), (0.5 + sgn * 0.04, hy + 0.05)])
        density = ndi.gaussian_filter(f.fill(wedge), 0.004 * f.px)
    density = density * np.clip(g.lung_fields[side] * 1.2, 0.0, 1.0)
    L.air *= 1.0 - 0.8 * density
    L.vessels *= 1.0 - 0.7 * density
    return _finish(density, ctx, 0.4 if p["kind"] == "lobar" else 0.2)


# --- Registry -----------------------------------------------------------------------------

Prepare = Callable[[np.random.Generator, Anatomy], dict[str, Any]]
Apply = Callable[[dict[str, Any], np.random.Generator, Context], np.ndarray]

# Order of drawing (each finding's own generator makes the order irrelevant to the others'
# placement, but layers are edited in this order).
RENDERERS: dict[str, tuple[Prepare, Apply]] = {
    "Cardiomegaly": (_cardiomegaly_prepare, _cardiomegaly_apply),
    "Effusion": (_effusion_prepare, _effusion_apply),
    "Atelectasis": (_atelectasis_prepare, _atelectasis_apply),
    "Consolidation": (_consolidation_prepare, _consolidation_apply),
    "Pneumothorax": (_pneumothorax_prepare, _pneumothorax_apply),
    "Mass": (_mass_prepare, _mass_apply),
    "Nodule": (_nodule_prepare, _nodule_apply),
}
