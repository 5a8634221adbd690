"""Drawing primitives of the phantom radiographs, in a canonical frame.

Shapes are described in a *canonical frame*: the image spans [0, 1] x [0, 1], x grows to
the image's right (the patient's left), y grows downwards, and the patient's midline is
x = 0.5. A :class:`Frame` (shift, rotation, scale) maps the canonical frame onto the pixel
grid, so one set of shape parameters renders at any size and pose. Polygons and tubes are
rasterised by PIL at twice the resolution and box-filtered (antialiased edges); wide
blurs run on a downsampled copy.

Internal to :mod:`augment.data.phantom`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi


def _catmull_rom_basis(n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    return 0.5 * np.stack([-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -(t**2) + t**3], 1)


_BASIS = {n: _catmull_rom_basis(n) for n in (6, 8, 10)}


def spline(points: np.ndarray | list, n: int = 10) -> np.ndarray:
    """Catmull-Rom curve through ``points`` (K, 2), ``n`` samples per span; returns (M, 2)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        return p
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    basis = _BASIS.get(n)
    if basis is None:
        basis = _catmull_rom_basis(n)
    spans = np.stack([p[:-3], p[1:-2], p[2:-1], p[3:]], axis=1)  # (K-1, 4, 2)
    curve = np.einsum("nk,skd->snd", basis, spans).reshape(-1, 2)
    return np.vstack([curve, p[-2][None]])


@dataclass(frozen=True)
class Frame:
    """Maps the canonical frame onto a ``size`` x ``size`` pixel grid.

    ``X``, ``Y`` are the canonical coordinates of every pixel centre, each (size, size).
    """

    size: int
    center: tuple[float, float]
    rotation: float
    scale: float
    X: np.ndarray = field(repr=False)
    Y: np.ndarray = field(repr=False)

    @classmethod
    def make(cls, size: int, shift: tuple[float, float] = (0.0, 0.0), rotation: float = 0.0,
             scale: float = 1.0) -> "Frame":
        """The canonical centre moves by ``shift`` (image widths), turns by ``rotation``
        (radians) and is magnified by ``scale``."""
        cx, cy = 0.5 + shift[0], 0.5 + shift[1]
        c, s = math.cos(rotation), math.sin(rotation)
        u = (np.arange(size, dtype=np.float32) + 0.5) / size
        U, V = np.meshgrid(u - cx, u - cy)
        X = 0.5 + (c * U + s * V) / scale
        Y = 0.5 + (-s * U + c * V) / scale
        return cls(size, (cx, cy), rotation, scale, X.astype(np.float32), Y.astype(np.float32))

    @property
    def px(self) -> float:
        """Pixels per canonical unit."""
        return self.size * self.scale

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """Canonical points (..., 2) -> pixel coordinates (x, y), pixel centres at k + 0.5."""
        p = np.asarray(pts, dtype=np.float64) - 0.5
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        x = self.center[0] + self.scale * (c * p[..., 0] - s * p[..., 1])
        y = self.center[1] + self.scale * (s * p[..., 0] + c * p[..., 1])
        return np.stack([x, y], axis=-1) * self.size

    def fill(self, pts: np.ndarray, ss: int = 2) -> np.ndarray:
        """Antialiased coverage (float32 in [0, 1], (size, size)) of a canonical polygon."""
        q = self.to_px(pts) * ss - 0.5
        img = Image.new("L", (self.size * ss, self.size * ss), 0)
        ImageDraw.Draw(img).polygon([(float(a), float(b)) for a, b in q], fill=255)
        return _as_float(img.resize((self.size, self.size), Image.BOX))

    def tubes(self, lines: list[np.ndarray], half_width: float, cortex: float = 0.5, ss: int = 2) -> np.ndarray:
        """Projected tubular bones along canonical polylines, ``half_width`` in pixels: 1 at
        the cortical rims, ``1 - cortex`` along the middle (float32 (size, size))."""
        big = self.size * ss
        img = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(img)
        w_out = max(1, round(2 * half_width * ss))
        w_in = max(1, round(2 * half_width * ss * 0.5))
        paths = [[(float(a), float(b)) for a, b in self.to_px(line) * ss - 0.5] for line in lines]
        for q in paths:
            draw.line(q, fill=255, width=w_out)
        for q in paths:
            draw.line(q, fill=round(255 * (1.0 - cortex)), width=w_in)
        return _as_float(img.resize((self.size, self.size), Image.BOX))


def _as_float(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) * np.float32(1.0 / 255.0)


def blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (float32); wide kernels run on a downsampled copy (smooth fields only)."""
    arr = np.asarray(arr, dtype=np.float32)
    if sigma < 2.5:
        return ndi.gaussian_filter(arr, sigma, truncate=3.0)
    n = arr.shape[0]
    factor = int(sigma // 1.25)
    m = max(4, -(-n // factor))
    small = np.asarray(Image.fromarray(arr).resize((m, m), Image.BOX), dtype=np.float32)
    small = ndi.gaussian_filter(small, sigma * m / n, truncate=3.0, mode="nearest")
    return np.asarray(Image.fromarray(small).resize((n, n), Image.BILINEAR), dtype=np.float32)


def smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise of unit standard deviation, (size, size) float32."""
    n = blur(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def splat_segments(frame: Frame, segs: np.ndarray, amplitude: float) -> np.ndarray:
    """Draw vessel segments as Gaussian-profiled lines whose contrast grows with radius."""
    size = frame.size
    out = np.zeros((size, size), np.float32)
    if len(segs) == 0:
        return out
    p0 = frame.to_px(segs[:, 0:2]) - 0.5
    p1 = frame.to_px(segs[:, 2:4]) - 0.5
    r_px = segs[:, 4] * frame.px
    lengths = np.linalg.norm(p1 - p0, axis=1)
    classes = [(r_px >= 1.2), (r_px >= 0.6) & (r_px < 1.2), (r_px < 0.6)]
    for sel in classes:
        if not sel.any():
            continue
        sigma = max(0.55, float(np.median(r_px[sel])) * 0.8)
        n = np.maximum(2, np.ceil(lengths[sel] / 0.7).astype(int))
        idx = np.repeat(np.arange(sel.sum()), n)
        t = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n - 1, n)
        pa, pb = p0[sel][idx], p1[sel][idx]
        pts = pa + (pb - pa) * t[:, None]
        w = (np.minimum(r_px[sel], 3.0) ** 1.5 * (lengths[sel] / n))[idx]
        x0, y0 = np.floor(pts[:, 0]), np.floor(pts[:, 1])
        fx, fy = pts[:, 0] - x0, pts[:, 1] - y0
        acc = np.zeros(size * size)
        for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            xi, yi = x0.astype(int) + dx, y0.astype(int) + dy
            ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
            acc += np.bincount(yi[ok] * size + xi[ok], weights=(w * wt)[ok], minlength=size * size)
        out += ndi.gaussian_filter(acc.reshape(size, size).astype(np.float32), sigma, truncate=3.0) * (2.5066 * sigma)
    return out * amplitude
