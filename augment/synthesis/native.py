"""Native-resolution output: put a region painted at the working resolution back into the source.

The chain registers and paints at the working resolution S (``data.image_size``), but a
pool image should be a drop-in copy of its source: the source's own size and bit depth,
and every pixel away from the painted region exactly the source's. :func:`paste_native`
does that on the region's bounding box only:

1. the working-resolution mask is brought to the source's grid by bilinear interpolation
   and thresholded at 0.5 (the native mask);
2. the painted content is brought to the same grid, bilinear, on the box only. With the
   working-resolution source (``working_source``, the image the painter started from) the
   *change* ``synthetic - working_source`` is upsampled and added to the native source, so
   the region keeps the source's own fine grain and noise under the painted low
   frequencies; without it the upsampled synthetic replaces the source (blurrier at large
   scale factors);
3. the change is blended in with a weight of 1 inside the native mask that falls linearly
   to 0 at ``feather`` native pixels (Euclidean) outside it, so every pixel more than
   ``feather`` (at most :data:`MAX_REACH_PX`) pixels outside the native mask keeps the
   source's value bit for bit;
4. the result is rounded and clipped in the source's dtype (uint8 or uint16).

Nothing here imports Ray or torch; the pool writer (:class:`augment.synthesis.steps.WriteStep`)
calls it once per item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt

__all__ = ["NativeResult", "paste_native", "FEATHER_PX", "MAX_REACH_PX"]

FEATHER_PX = 3.0  # default width of the blend's edge, in native pixels
MAX_REACH_PX = 4.0  # the promise: no pixel farther than this outside the native mask changes


@dataclass(frozen=True)
class NativeResult:
    """A synthetic image at its source's resolution.

    Attributes:
        image: (H, W) in the source's dtype (uint8 or uint16); equal to the source outside
            ``box`` and farther than the feather outside ``mask``.
        mask: (H, W) bool, the painted region on the source's grid.
        bits: 8 or 16, the source's bit depth.
        box: (top, bottom, left, right), half-open native rows/columns that were worked on
            (all zeros when the mask was empty).
    """

    image: np.ndarray
    mask: np.ndarray
    bits: int
    box: tuple[int, int, int, int]

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def _check_working(arr: np.ndarray, name: str, shape: tuple[int, ...] | None) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"paste_native: {name} must be a single (H, W) image, got shape {np.shape(arr)}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"paste_native: {name} has shape {a.shape}, the synthetic image {shape}; they must match")
    return a


def _axis(n_native: int, n_work: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling (align_corners=False, edges clamped) of native indices [start, stop)
    from a working axis of n_work: (lower index, upper index, weight of the upper)."""
    u = (np.arange(start, stop, dtype=np.float64) + 0.5) * (n_work / n_native) - 0.5
    u = np.maximum(u, 0.0)
    i0 = np.floor(u).astype(np.int64)
    w = (u - i0).astype(np.float32)
    i0 = np.minimum(i0, n_work - 1)
    i1 = np.minimum(i0 + 1, n_work - 1)
    return i0, i1, w


def _bilinear(a: np.ndarray, rows: tuple[np.ndarray, np.ndarray, np.ndarray],
              cols: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    r0, r1, wr = rows
    c0, c1, wc = cols
    lo, hi = int(r0.min()), int(r1.max()) + 1
    left, right = int(c0.min()), int(c1.max()) + 1
    sub = np.asarray(a[lo:hi, left:right], dtype=np.float32)
    t = sub[r0 - lo] * (1.0 - wr)[:, None] + sub[r1 - lo] * wr[:, None]
    return t[:, c0 - left] * (1.0 - wc)[None, :] + t[:, c1 - left] * wc[None, :]


def paste_native(
    source: np.ndarray,
    synthetic: np.ndarray,
    mask: np.ndarray,
    working_source: np.ndarray | None = None,
    feather: float = FEATHER_PX,
) -> NativeResult:
    """Bring the painted region of a working-resolution synthetic image into its native source.

    Args:
        source: (H, W) the source as stored, uint8 (8-bit) or uint16 (16-bit)
            (:func:`augment.data.io.read_raw`).
        synthetic: (h, w) float in [0, 1], the painted image at the working resolution.
        mask: (h, w) the painted region (bool, or numbers with > 0.5 inside).
        working_source: (h, w) float in [0, 1], the image the painter started from (the
            source resized to the working resolution). Given, only the change is carried
            over and the source's fine detail stays; None carries the synthetic's pixels.
        feather: width in native pixels of the blend's edge outside the mask, 0 to
            :data:`MAX_REACH_PX`; 0 is a hard edge.

    Returns:
        The native image, mask, bit depth and the box worked on.

    Raises:
        ValueError: a wrong dtype, shape or value range, or a feather outside [0, 4]; the
            message names the argument.
    """
    src = np.asarray(source)
    if src.ndim != 2:
        raise ValueError(f"paste_native: source must be a single (H, W) image, got shape {src.shape}")
    if src.dtype == np.uint8:
        bits = 8
    elif src.dtype == np.uint16:
        bits = 16
    else:
        raise ValueError(f"paste_native: source must be uint8 (8-bit) or uint16 (16-bit) as stored, got {src.dtype}; "
                         "read it with augment.data.io.read_raw")
    if not (0.0 <= float(feather) <= MAX_REACH_PX):
        raise ValueError(f"paste_native: feather must lie in [0, {MAX_REACH_PX:g}] native pixels, got {feather}")
    syn = _check_working(synthetic, "synthetic", None).astype(np.float32, copy=False)
    if not np.isfinite(syn).all() or syn.min() < -1e-6 or syn.max() > 1 + 1e-6:
        raise ValueError("paste_native: synthetic must be finite and lie in [0, 1]")
    m = _check_working(mask, "mask", syn.shape)
    m = m.astype(bool) if m.dtype == bool else np.asarray(m, dtype=np.float32) > 0.5
    base = None
    if working_source is not None:
        base = _check_working(working_source, "working_source", syn.shape).astype(np.float32, copy=False)
        if not np.isfinite(base).all() or base.min() < -1e-6 or base.max() > 1 + 1e-6:
            raise ValueError("paste_native: working_source must be finite and lie in [0, 1]")

    H, W = src.shape
    h, w = syn.shape
    out_mask = np.zeros((H, W), dtype=bool)
    if not m.any():
        return NativeResult(src.copy(), out_mask, bits, (0, 0, 0, 0))

    # The box: the mask's footprint on the native grid, plus the feather and one pixel.
    ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    pad = int(np.ceil(feather)) + 1
    top = max(0, int(np.floor(ys[0] * H / h)) - pad)
    bottom = min(H, int(np.ceil((ys[-1] + 1) * H / h)) + pad)
    left = max(0, int(np.floor(xs[0] * W / w)) - pad)
    right = min(W, int(np.ceil((xs[-1] + 1) * W / w)) + pad)
    rows, cols = _axis(H, h, top, bottom), _axis(W, w, left, right)

    nm = _bilinear(m.astype(np.float32), rows, cols) >= 0.5
    if not nm.any():  # a region thinner than a native pixel's sampling: nothing to paste
        return NativeResult(src.copy(), out_mask, bits, (0, 0, 0, 0))
    if feather > 0:
        dist = distance_transform_edt(~nm)  # 0 inside, Euclidean distance to the mask outside
        alpha = np.clip(1.0 - dist / float(feather), 0.0, 1.0).astype(np.float32)
    else:
        alpha = nm.astype(np.float32)

    top_v = float((1 << bits) - 1)
    crop = src[top:bottom, left:right]
    cf = crop.astype(np.float32)
    if base is not None:
        change = _bilinear(syn - base, rows, cols) * top_v
    else:
        change = _bilinear(syn, rows, cols) * top_v - cf
    blended = np.clip(np.rint(cf + alpha * change), 0.0, top_v).astype(src.dtype)
    image = src.copy()
    image[top:bottom, left:right] = np.where(alpha > 0, blended, crop)
    out_mask[top:bottom, left:right] = nm
    return NativeResult(image, out_mask, bits, (top, bottom, left, right))
