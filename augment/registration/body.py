"""A simple thorax (body) mask of a chest radiograph from intensity and morphology.

Used to keep a transferred finding region inside the patient. What counts as *outside*
is background that is dark, flat and connected to the image border: black frames and
collimation bands, and the air around the neck and shoulders. The lungs are dark too but
never flat (ribs and vessels give them texture), so they stay inside even where a tightly
cropped image cuts the chest wall.

Steps, per image (NumPy/SciPy on CPU; images are small):

1. blur with a Gaussian of 1% of the image side; local standard deviation of the image
   in a window of 3% of the side;
2. ``candidate`` = blurred under Otsu's threshold **and** local std under ``FLAT_STD``,
   opened with a small disk (drops isolated flat specks inside the lungs);
3. ``background`` = the candidates connected to the image border, grown by the same disk
   inside the dark region;
4. ``body`` = not background, holes filled, largest connected component kept;
5. when that keeps under ``MIN_BODY_FRACTION`` of the image (an unusual exposure) the
   mask is the whole image: the heuristic cannot tell, and it does not constrain.

It is a heuristic, not a lung segmentation: it answers "inside the patient?", which is
what the region transfer needs.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from augment.registration.checks import check_images

__all__ = ["FLAT_STD", "MIN_BODY_FRACTION", "body_mask", "otsu_threshold"]

FLAT_STD = 0.02
"""Local standard deviation (intensity in [0, 1]) under which a dark area counts as flat."""
MIN_BODY_FRACTION = 0.1
"""A body mask smaller than this share of the image is not trusted (whole image instead)."""


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def _disk(radius: int) -> np.ndarray:
    r = max(1, radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r


def _border_connected(mask: np.ndarray) -> np.ndarray:
    seeds = np.zeros_like(mask)
    seeds[0, :], seeds[-1, :], seeds[:, 0], seeds[:, -1] = mask[0, :], mask[-1, :], mask[:, 0], mask[:, -1]
    return ndimage.binary_propagation(seeds, mask=mask)


def _body_one(img: np.ndarray) -> np.ndarray:
    side = min(img.shape)
    img = img.astype(np.float32)
    blurred = ndimage.gaussian_filter(img, sigma=max(0.5, 0.01 * side), mode="nearest")
    win = max(3, int(0.03 * side) | 1)
    mean = ndimage.uniform_filter(img, win, mode="nearest")
    local_std = np.sqrt(np.maximum(ndimage.uniform_filter(img * img, win, mode="nearest") - mean * mean, 0.0))
    dark = blurred < otsu_threshold(blurred)
    disk = _disk(max(1, int(round(0.008 * side))))
    candidate = ndimage.binary_opening(dark & (local_std < FLAT_STD), structure=disk)
    background = ndimage.binary_dilation(_border_connected(candidate), structure=disk) & dark
    body = ndimage.binary_fill_holes(~background)
    labels, n = ndimage.label(body)
    if n > 1:
        sizes = ndimage.sum(body, labels, index=np.arange(1, n + 1))
        body = labels == (int(np.argmax(sizes)) + 1)
    if body.mean() < MIN_BODY_FRACTION:
        return np.ones_like(body)
    return body


def body_mask(images: torch.Tensor) -> torch.Tensor:
    """Thorax masks of a batch of chest radiographs.

    Args:
        images: (B, 1, H, W) float in [0, 1].

    Returns:
        (B, 1, H, W) bool on the images' device; True inside the patient.

    Raises:
        TypeError, ValueError: bad images (see :func:`~augment.registration.checks.check_images`).
    """
    images = check_images(images, "images")
    arr = images[:, 0].detach().cpu().numpy()
    masks = np.stack([_body_one(a) for a in arr])[:, None]
    return torch.from_numpy(masks).to(images.device)
