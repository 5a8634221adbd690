"""Procedural anatomy of a frontal (PA) chest radiograph, for the phantom data set.

Shapes are given in the canonical frame of :mod:`augment.data.phantom_geometry` (the
image spans [0, 1] x [0, 1], the patient's midline at x = 0.5, the patient's right on the
image's left); patient-level shape (:class:`Anatomy`) is kept apart from the per-image
acquisition (:class:`Acquisition`: pose, breath-hold, exposure, processing), so a
patient's follow-ups share their anatomy.

The image is built in *display units* (0 = black, 1 = white), as an additive model of
what attenuates the beam: soft tissue of the body, minus the air in the lungs, plus bone
(spine, ribs, clavicles, scapulae, humeral heads) and pulmonary vessels. Findings
(:mod:`augment.data.phantom_findings`) edit these layers before they are composed, so a
consolidation removes lung air and hides the vessels inside it, as it does in a patient.

Everything here is internal to :mod:`augment.data.phantom`; sizes in canonical units are
fractions of the image width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from augment.data.phantom_geometry import Frame, blur, smooth_noise, smoothstep, splat_segments, spline

# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """Patient-level shape parameters (shared by a patient's follow-ups), canonical units.

    Two-element tuples are (right lung, left lung): the patient's right is the image's left.
    """

    lung_half_width: tuple[float, float]
    apex_y: float
    dome_y: tuple[float, float]
    cp_drop: float
    ctr: float
    heart_top: float
    mediastinum_half_width: float
    body_half_width: float
    neck_half_width: float
    rib_spacing: float
    rib_half_width: float
    bone_density: float
    soft_tissue: float
    female: bool
    gastric_bubble: bool
    arm_gap: float
    vessel_seed: int
    texture_seed: int


@dataclass(frozen=True)
class Acquisition:
    """Per-image acquisition: pose, breath-hold, exposure and detector processing."""

    shift: tuple[float, float]
    rotation: float
    scale: float
    inspiration: float
    gain: float
    offset: float
    gamma: float
    lung_air: float
    sharpen: float
    blur: float
    noise: float
    marker: str
    marker_corner: int
    noise_seed: int


def sample_anatomy(rng: np.random.Generator, sex: str | None = None) -> Anatomy:
    """Draw one patient's anatomy; ``sex`` is "M", "F" or None (drawn)."""
    female = bool(rng.uniform() < 0.45) if sex is None else sex == "F"
    lw = rng.uniform(0.36, 0.42)
    dome_r = rng.uniform(0.65, 0.73)
    return Anatomy(
        lung_half_width=(lw * rng.uniform(0.96, 1.02), lw * rng.uniform(0.98, 1.04)),
        apex_y=rng.uniform(0.07, 0.12),
        dome_y=(dome_r, dome_r + rng.uniform(0.005, 0.04)),
        cp_drop=rng.uniform(0.07, 0.11),
        ctr=rng.uniform(0.38, 0.48),
        heart_top=rng.uniform(0.36, 0.41),
        mediastinum_half_width=rng.uniform(0.055, 0.075),
        body_half_width=rng.uniform(0.50, 0.60),
        neck_half_width=rng.uniform(0.10, 0.14),
        rib_spacing=rng.uniform(0.95, 1.08),
        rib_half_width=rng.uniform(0.012, 0.016),
        bone_density=rng.uniform(0.8, 1.2),
        soft_tissue=rng.uniform(0.85, 1.15),
        female=female,
        gastric_bubble=bool(rng.uniform() < 0.6),
        arm_gap=float(rng.uniform(0.04, 0.12)) if rng.uniform() < 0.4 else 0.0,
        vessel_seed=int(rng.integers(2**31)),
        texture_seed=int(rng.integers(2**31)),
    )


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    """Draw one image's pose, exposure and processing."""
    return Acquisition(
        shift=(rng.normal(0.0, 0.015), rng.normal(0.0, 0.02)),
        rotation=math.radians(rng.normal(0.0, 2.0)),
        scale=rng.uniform(0.92, 1.08),
        inspiration=rng.normal(0.0, 0.015),
        gain=rng.uniform(0.9, 1.15),
        offset=rng.normal(0.0, 0.04),
        gamma=rng.uniform(0.85, 1.2),
        lung_air=rng.uniform(0.85, 1.15),
        sharpen=rng.uniform(0.3, 1.0),
        blur=rng.uniform(0.35, 0.9),
        noise=rng.uniform(0.006, 0.018),
        marker=str(rng.choice(["", "L", "R"], p=[0.4, 0.3, 0.3])),
        marker_corner=int(rng.integers(4)),
        noise_seed=int(rng.integers(2**31)),
    )


# ---------------------------------------------------------------------------------------
# Outlines
# ---------------------------------------------------------------------------------------


def lung_outline(a: Anatomy, side: int, dome_y: float) -> np.ndarray:
    """Closed outline of one lung field, medial part reaching the midline (mediastinum and
    heart are cut out later). ``side`` is -1 for the right lung (image left), +1 for the left."""
    w = a.lung_half_width[0 if side < 0 else 1]
    ax = a.apex_y
    cp_y = dome_y + a.cp_drop

    def P(dx: float, y: float) -> tuple[float, float]:
        return (0.5 + side * dx, y)

    lateral = spline([P(0.15, ax), P(0.22, ax + 0.02), P(w * 0.82, ax + 0.09), P(w * 0.95, ax + 0.22),
                      P(w, ax + 0.40), P(w * 0.99, cp_y - 0.12), P(w * 0.97, cp_y)], 8)
    dome = spline([P(w * 0.97, cp_y), P(w * 0.82, dome_y + 0.025), P(w * 0.55, dome_y),
                   P(w * 0.30, dome_y + 0.012), P(0.04, dome_y + 0.05)], 8)
    medial = spline([P(0.04, dome_y + 0.05), P(0.02, 0.45), P(0.025, 0.25), P(0.07, ax + 0.04),
                     P(0.12, ax + 0.003)], 6)
    return np.vstack([lateral, dome[1:], medial[1:]])


def heart_outline(a: Anatomy, dome_y: tuple[float, float], ctr: float) -> np.ndarray:
    """Cardiac silhouette; ``ctr`` (cardiothoracic ratio) sets its width."""
    thorax = a.lung_half_width[0] + a.lung_half_width[1] + 0.04
    width = ctr * thorax
    wr, wl = 0.36 * width, 0.64 * width
    top = a.heart_top
    base = max(dome_y) + 0.06
    grow = max(0.0, ctr - 0.45)  # a large heart also reaches lower and pushes its apex out
    m = a.mediastinum_half_width
    pts = [
        (0.5 + 0.02, top - 0.03),
        (0.5 - m * 0.9, top - 0.01),
        (0.5 - wr * 0.85, top + 0.09),
        (0.5 - wr, top + 0.18),
        (0.5 - wr * 0.95, dome_y[0] - 0.01),
        (0.5 - wr * 0.7, base),
        (0.5 + wl * 0.5, base + 0.03 + grow * 0.2),
        (0.5 + wl * 0.98, dome_y[1] + grow * 0.15),
        (0.5 + wl * 0.93, dome_y[1] - 0.10),
        (0.5 + wl * 0.68, top + 0.08),
        (0.5 + m * 1.25, top + 0.01),
        (0.5 + m * 1.05, top - 0.03),
    ]
    return spline(pts + [pts[0]], 8)


def mediastinum_outline(a: Anatomy) -> np.ndarray:
    """Upper mediastinum (great vessels, trachea) down to the heart, with the aortic knob."""
    m = a.mediastinum_half_width
    top = a.heart_top
    return spline([
        (0.5 - m * 0.75, -0.05), (0.5 - m * 0.8, 0.15), (0.5 - m, top - 0.10), (0.5 - m * 0.9, top + 0.05),
        (0.5 + m * 0.9, top + 0.05), (0.5 + m * 1.1, top - 0.03), (0.5 + m * 1.5, top - 0.09),
        (0.5 + m * 1.2, top - 0.14), (0.5 + m * 0.85, 0.15), (0.5 + m * 0.75, -0.05),
    ], 6)


def body_outline(a: Anatomy) -> np.ndarray:
    """Neck, shoulders and trunk; the trunk runs off the bottom of the canonical frame."""
    n, b = a.neck_half_width, a.body_half_width
    right = [(0.5 - n, -0.2), (0.5 - n * 1.05, -0.02), (0.5 - 0.21, 0.035), (0.5 - 0.33, 0.06), (0.5 - 0.44, 0.1),
             (0.5 - b - 0.05, 0.16), (0.5 - b - 0.06, 0.30), (0.5 - b, 0.70), (0.5 - b * 0.92, 1.25)]
    left = [(1.0 - x, y) for x, y in reversed(right)]
    return spline(right + left, 8)


# ---------------------------------------------------------------------------------------
# Geometry of one image
# ---------------------------------------------------------------------------------------


@dataclass
class Geometry:
    """Rasterised anatomy of one image (soft masks float32 (H, W) in [0, 1])."""

    frame: Frame
    dome_y: tuple[float, float]
    ctr: float
    body: np.ndarray
    lung_fields: tuple[np.ndarray, np.ndarray]
    lungs: tuple[np.ndarray, np.ndarray]
    heart: np.ndarray
    mediastinum: np.ndarray
    hila: tuple[tuple[float, float], tuple[float, float]]
    lung: np.ndarray  # both visible lungs


def build_geometry(a: Anatomy, acq: Acquisition, frame: Frame, ctr: float | None = None,
                   dome_raise: tuple[float, float] = (0.0, 0.0)) -> Geometry:
    """Rasterise body, lungs, heart and mediastinum. ``dome_raise`` lifts a hemidiaphragm
    (volume loss), ``ctr`` overrides the patient's cardiothoracic ratio (cardiomegaly)."""
    ctr = a.ctr if ctr is None else ctr
    dome = (a.dome_y[0] + acq.inspiration - dome_raise[0], a.dome_y[1] + acq.inspiration - dome_raise[1])
    body = frame.fill(body_outline(a))
    heart = frame.fill(heart_outline(a, dome, ctr))
    med = frame.fill(mediastinum_outline(a))
    central = np.maximum(heart, med)
    fields = tuple(frame.fill(lung_outline(a, s, dome[i])) * body for i, s in enumerate((-1, 1)))
    lungs = tuple(f * (1.0 - central) for f in fields)
    hila = ((0.5 - 0.10, a.heart_top + 0.01), (0.5 + 0.11, a.heart_top - 0.01))
    return Geometry(frame, dome, ctr, body, fields, lungs, heart * body, med * body, hila, np.maximum(*lungs))


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------


@dataclass
class Layers:
    """Additive image model in display units; the result is
    ``tissue + bone + vessels - air + opacity`` before tone mapping and noise."""

    tissue: np.ndarray
    bone: np.ndarray
    air: np.ndarray
    vessels: np.ndarray
    opacity: np.ndarray

    def total(self) -> np.ndarray:
        return self.tissue + self.bone + self.vessels - self.air + self.opacity


def _lung_depth(g: Geometry, a: Anatomy) -> np.ndarray:
    """Air thickness of the visible lungs: rises within a few mm of the pleura, larger at
    the bases than at the apices."""
    f = g.frame
    lung = g.lung
    d = ndi.distance_transform_edt(lung > 0.5).astype(np.float32) * np.float32(1.0 / f.px)
    out = (1.0 - np.exp(-d / 0.022)) * lung
    ramp = np.clip((f.Y - a.apex_y) / (float(np.mean(g.dome_y)) - a.apex_y), 0.0, 1.0)
    return out * (0.72 + 0.28 * np.sqrt(ramp))


def vessel_tree(rng: np.random.Generator, g: Geometry) -> list[np.ndarray]:
    """Pulmonary vessels as segments (x0, y0, x1, y1, radius) in canonical units, branching
    out of both hila; one array of segments per lung."""
    trees = []
    for side, (hx, hy) in zip((-1, 1), g.hila):
        # (angle from the hilum, trunk length): upper lobe up and out, lower lobe down and out
        dirs = np.array([(-1.45, 0.09), (-0.95, 0.12), (-0.35, 0.12), (0.15, 0.13),
                         (0.6, 0.15), (1.0, 0.15), (1.35, 0.13)])
        ang = dirs[:, 0] + rng.normal(0, 0.12, len(dirs))
        ang = np.where(side < 0, math.pi - ang, ang)  # mirror: lateral is -x for the right lung
        n = len(dirs)
        x = np.full(n, hx) + side * rng.uniform(0.0, 0.025, n)
        y = hy + np.linspace(-0.05, 0.06, n) + rng.normal(0, 0.01, n)
        length = dirs[:, 1] * rng.uniform(0.7, 1.0, n)
        radius = np.full(n, 0.008)
        segs = []
        for _ in range(6):
            x1, y1 = x + length * np.cos(ang), y + length * np.sin(ang)
            segs.append(np.stack([x, y, x1, y1, radius], axis=1))
            k = len(x)
            spread = rng.uniform(0.15, 0.45, (2, k)) * np.array([[-1.0], [1.0]])
            ang = np.concatenate([ang + spread[0], ang + spread[1]]) + rng.normal(0, 0.08, 2 * k)
            x, y = np.tile(x1, 2), np.tile(y1, 2)
            length = np.tile(length, 2) * rng.uniform(0.62, 0.82, 2 * k)
            radius = np.tile(radius, 2) * 0.7
        segs = np.concatenate(segs)
        # Vessels are not straight: split each segment at a laterally displaced midpoint.
        d = segs[:, 2:4] - segs[:, 0:2]
        mid = 0.5 * (segs[:, 0:2] + segs[:, 2:4]) + np.stack([-d[:, 1], d[:, 0]], 1) * rng.normal(0, 0.12, (len(d), 1))
        trees.append(np.concatenate([np.column_stack([segs[:, 0:2], mid, segs[:, 4]]),
                                     np.column_stack([mid, segs[:, 2:4], segs[:, 4]])]))
    return trees


def _ribs(a: Anatomy, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Posterior and anterior rib centrelines (canonical), both sides, slightly irregular."""
    post, ant = [], []
    step = 0.058 * a.rib_spacing
    for side, w in zip((-1, 1), a.lung_half_width):
        for k in range(11):
            y0 = a.apex_y - 0.075 + k * step + rng.normal(0.0, 0.004)
            reach = w * (0.48, 0.75, 0.9, 0.97, 1.0, 1.0, 1.0, 1.0, 0.98, 0.95, 0.9)[k] * rng.uniform(0.97, 1.03) + 0.03

            def P(dx: float, dy: float) -> tuple[float, float]:
                return (0.5 + side * dx, y0 + dy)

            post.append(spline([P(0.03, 0.0), P(0.08, -0.012), P(0.5 * reach, 0.025 + 0.002 * k),
                                P(0.85 * reach, 0.075 + 0.003 * k), P(reach + 0.012, 0.13 + 0.004 * k),
                                P(reach * 0.99, 0.17 + 0.004 * k)], 8))
            if k < 9:
                end = max(0.13, reach * 0.33)
                ant.append(spline([P(reach * 0.99, 0.17 + 0.004 * k), P(reach * 0.8, 0.21 + 0.004 * k),
                                   P((reach + end) / 2, 0.25 + 0.005 * k), P(end, 0.29 + 0.006 * k)], 8))
    return post, ant


def _text_marker(letter: str, height_px: int) -> np.ndarray:
    """A radiographer's lead letter, as float32 coverage of ``height_px`` rows."""
    img = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(img).text((4, 4), letter, fill=255, font=ImageFont.load_default())
    box = img.getbbox() or (0, 0, 32, 32)
    img = img.crop(box)
    w = max(1, round(img.width * height_px / img.height))
    return np.asarray(img.resize((w, height_px), Image.BILINEAR), dtype=np.float32) / 255.0


def anatomy_layers(a: Anatomy, acq: Acquisition, g: Geometry, vessels: list[np.ndarray]) -> Layers:
    """Render the healthy anatomy of one image into additive layers."""
    f = g.frame
    X, Y = f.X, f.Y
    size = f.size
    tex = np.random.default_rng(a.texture_seed)

    # Soft tissue: an elliptic cylinder; thicker over the abdomen and the heart.
    thick = np.sqrt(np.clip(1.0 - ((X - 0.5) / (a.body_half_width + 0.08)) ** 2, 0.0, 1.0))
    dome = float(np.mean(g.dome_y))
    abdomen = smoothstep((Y - dome + 0.05) / 0.15)
    shoulders = smoothstep((0.22 - Y) / 0.15) * smoothstep((np.abs(X - 0.5) - 0.12) / 0.15)
    tissue = g.body * (0.08 + 0.62 * thick**2 * a.soft_tissue + 0.07 * abdomen + 0.04 * shoulders)
    # Beyond the rib cage: thinner soft tissue, sometimes air between chest wall and arm.
    cage = np.where(X < 0.5, np.float32(a.lung_half_width[0]), np.float32(a.lung_half_width[1])) + np.float32(0.045)
    lat = np.abs(X - 0.5) - cage
    below_axilla = smoothstep((Y - 0.28) / 0.1)
    tissue = tissue - 0.10 * smoothstep(lat / 0.04) * below_axilla * g.body
    if a.arm_gap > 0:
        gap = smoothstep((lat - 0.02) / 0.012) * smoothstep((0.02 + a.arm_gap - lat) / 0.012) * below_axilla
        tissue = tissue * (1.0 - 0.8 * gap)
    tissue = 0.05 + tissue
    tissue = tissue + 0.04 * g.heart
    if a.female:
        for side in (-1, 1):
            cx, cy = 0.5 + side * 0.3, dome - 0.04
            r = ((X - cx) / 0.19) ** 2 + ((Y - cy) / 0.13) ** 2
            tissue = tissue + 0.035 * smoothstep((1.0 - r) / 0.15) * smoothstep((Y - cy + 0.13) / 0.2)
    tissue = tissue + 0.012 * g.body * smooth_noise(tex, size, size / 40)

    # Air: the lungs, some of it behind the heart and mediastinum; trachea, gastric bubble.
    depth = _lung_depth(g, a)
    field = np.maximum(*g.lung_fields)
    hidden = field * np.maximum(g.heart, g.mediastinum)
    air = acq.lung_air * (0.42 * depth + 0.07 * blur(hidden, size / 60))
    parenchyma = ndi.gaussian_filter(tex.standard_normal((size, size)).astype(np.float32), size / 200)
    parenchyma /= max(float(parenchyma.std()), 1e-6)
    air = air * (1.0 + 0.03 * parenchyma)
    trachea_x = 0.5 + 0.004 * np.sin(Y * 9)
    carina = a.heart_top - 0.06
    tr = smoothstep((0.016 - np.abs(X - trachea_x)) / 0.006) * smoothstep((carina - Y) / 0.02) * (Y > -0.1)
    for side in (-1, 1):  # main bronchi
        t = np.clip((Y - carina) / 0.06, 0.0, 1.0)
        bx = trachea_x + side * 0.045 * t
        bronchus = smoothstep((0.009 - np.abs(X - bx)) / 0.005) * smoothstep((carina + 0.06 - Y) / 0.03)
        tr = np.maximum(tr, 0.6 * bronchus * (Y > carina - 0.01))
    air = air + 0.05 * tr * g.body
    if a.gastric_bubble:
        cx, cy = 0.5 + 0.2, g.dome_y[1] + 0.07
        r = ((X - cx) / 0.07) ** 2 + ((Y - cy) / 0.04) ** 2
        air = air + 0.08 * smoothstep((1.0 - r) / 0.5) * smoothstep((Y - cy + 0.03) / 0.02)

    # Bone.
    bone = np.zeros_like(tissue)
    sx = np.abs(X - 0.5)
    spine_edge = smoothstep((0.034 - sx) / 0.006)
    phase = (Y - a.apex_y) / (0.058 * a.rib_spacing * 1.05)
    endplates = 0.5 + 0.5 * np.cos(2 * np.pi * phase) ** 8
    pedicles = smoothstep((1.0 - (((sx - 0.024) / 0.009) ** 2 + ((np.mod(phase, 1.0) - 0.45) / 0.2) ** 2)) / 0.5)
    bone += (0.06 * spine_edge * (0.7 + 0.3 * endplates) + 0.03 * pedicles) * (Y > -0.05)
    post, ant = _ribs(a, tex)
    hw = a.rib_half_width * f.px
    lower = np.clip((Y - a.apex_y) / (dome - a.apex_y), 0.0, 1.2)
    bone += 0.085 * f.tubes(post, hw, cortex=0.35) * (1.0 - 0.45 * lower)
    bone += 0.018 * f.tubes(ant, hw * 1.15, cortex=0.35) * smoothstep((np.abs(X - 0.5) - 0.1) / 0.08)
    clav = [spline([(0.5 + s * 0.04, 0.20), (0.5 + s * 0.13, 0.175), (0.5 + s * 0.24, 0.15),
                    (0.5 + s * 0.34, 0.105), (0.5 + s * 0.44, 0.095)], 8) for s in (-1, 1)]
    bone += 0.15 * f.tubes(clav, 0.016 * f.px, cortex=0.4)
    for s in (-1, 1):
        hx, hy = 0.5 + s * (a.body_half_width + 0.02), 0.16
        r = np.sqrt((X - hx) ** 2 + (Y - hy) ** 2) / 0.075
        bone += 0.13 * smoothstep((1.0 - r) / 0.08) * (0.7 + 0.3 * np.clip(r, 0, 1) ** 6)
        # scapula: a faint plate lateral to its medial border
        border = 0.5 + s * (0.33 - 0.12 * np.clip((Y - 0.12) / 0.35, 0, 1))
        plate = smoothstep((s * (X - border)) / 0.015) * smoothstep((0.48 - Y) / 0.06) * smoothstep((Y - 0.1) / 0.04)
        bone += 0.035 * plate
    bone *= a.bone_density * g.body * (0.4 + 0.6 * blur(g.lung, size / 80))

    # Vessels, hila.
    lung = g.lung
    v = splat_segments(f, np.concatenate(vessels), 0.045)
    for hx, hy in g.hila:
        r = ((X - hx) / 0.035) ** 2 + ((Y - hy) / 0.06) ** 2
        v = v + 0.04 * smoothstep((1.0 - r) / 0.8)
    vessels_layer = 0.14 * np.tanh(v / 0.14) * lung

    return Layers(tissue=tissue.astype(np.float32), bone=bone.astype(np.float32), air=air.astype(np.float32),
                  vessels=vessels_layer.astype(np.float32), opacity=np.zeros_like(tissue, dtype=np.float32))


def compose(layers: Layers, acq: Acquisition, frame: Frame) -> np.ndarray:
    """Tone-map the layers and add detector processing: sharpening, blur, noise, marker."""
    size = frame.size
    k = size / 256.0
    y = layers.total()
    y = np.clip(acq.gain * (y - 0.5) + 0.5 + acq.offset, 0.0, 1.4)
    y = np.where(y > 0.8, 0.8 + 0.2 * np.tanh((y - 0.8) / 0.2), y)
    y = np.clip(y, 0.0, 1.0) ** acq.gamma
    y = y + acq.sharpen * (y - blur(y, 6.0 * k))
    y = ndi.gaussian_filter(y, acq.blur * k, truncate=3.0)
    rng = np.random.default_rng(acq.noise_seed)
    n = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 0.6 * k, truncate=3.0)
    y = y + acq.noise * n / max(float(n.std()), 1e-6) * np.sqrt(np.clip(y, 0.05, 1.0))
    if acq.marker and size >= 48:
        h = max(5, round(size * 0.04))
        m = _text_marker(acq.marker, h)
        pad = max(2, size // 40)
        r0 = pad if acq.marker_corner < 2 else size - pad - m.shape[0]
        c0 = pad if acq.marker_corner % 2 == 0 else size - pad - m.shape[1]
        patch = y[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]]
        y[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]] = np.maximum(patch, 0.97 * m)
    return np.clip(y, 0.0, 1.0).astype(np.float32)
