"""Input quality filter: drop unusable sources and references before the plan is made.

Painting a finding into a rotated, inverted, blank or burnt-out radiograph (or carrying
one from such a reference) makes a synthetic image nobody wants, so every candidate is
scored first and the outliers are dropped (the idea of Diff-CXR's input filtering, built
from cheap checks). The checks, in the order a drop reason is given:

``view``       the Data_Entry "View Position" is not one of ``views`` (a lateral "LL");
               an empty view (unknown) is let through.
``blank``      near-constant image: pixel standard deviation under ``min_std``.
``saturated``  more than ``max_saturated_fraction`` of the pixels at 0 or 1 (within
               ``saturation_level``).
``rotated``    rotated by 90, 180 or 270 degrees: a rotation of the image correlates with
               the candidates' pixel-wise median image (a chest template that a minority of
               bad images does not move) better than the image itself, by more than
               ``rotation_margin``.
``inverted``   the image correlates negatively with that template (under
               ``-inversion_margin``): lungs bright, mediastinum and body dark.
``exposure``   a robust (median/MAD) z-score of the mean, standard deviation, 5th or 95th
               percentile over the candidate set above ``max_exposure_z``.
``outlier``    a robust z-score above ``max_outlier_z`` of the reconstruction error of a
               PCA of the downsampled pixels (fitted on the images that passed the checks
               above).

The template, exposure and PCA checks need ``min_population`` images that passed the
view, blank and saturation checks; with fewer, the exposure and PCA checks are skipped
(:attr:`InputFilterResult.population_checked`) and orientation falls back to rules on the
image alone: rotated when its top-bottom mirror symmetry beats its left-right one (a
frontal film is left-right symmetric about the patient's midline), inverted when its
central vertical band is darker than the lung bands while these are brighter than the
image's mean.

Images are (N, H, W) float32 arrays in [0, 1] here (the library's convention for one
image is (H, W)); :func:`filter_index` reads them from an :class:`NIHIndex`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from augment.data.io import ImageReadError, read_image, resize

if TYPE_CHECKING:  # pragma: no cover
    from augment.config import InputFilterConfig
    from augment.data.nih import NIHIndex, Record

log = logging.getLogger(__name__)

__all__ = ["REASONS", "InputFilterResult", "image_scores", "filter_images", "filter_index"]

REASONS = ("view", "blank", "saturated", "rotated", "inverted", "exposure", "outlier")
_EXPOSURE = ("mean", "std", "p05", "p95")
_MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data


@dataclass(frozen=True)
class InputFilterResult:
    """What the filter kept and dropped.

    Attributes:
        ids: every scored image, in input order.
        kept: the ids that passed, in input order.
        dropped: dropped id -> its reasons (first = the main one), each from :data:`REASONS`.
        scores: metric name -> (N,) float array aligned with ``ids`` (NaN where not computed).
        population_checked: whether the exposure and PCA-outlier checks ran.
        thumbnails: dropped id -> its (S, S) image as scored, for an example grid.
        unreadable: ids whose file could not be read (kept, unscored; :func:`filter_index`).
    """

    ids: tuple[str, ...]
    kept: tuple[str, ...]
    dropped: dict[str, tuple[str, ...]]
    scores: dict[str, np.ndarray]
    population_checked: bool
    thumbnails: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    unreadable: tuple[str, ...] = ()

    def reason(self, image_id: str) -> str | None:
        """The main reason ``image_id`` was dropped, None when it was kept."""
        r = self.dropped.get(image_id)
        return r[0] if r else None

    def counts(self) -> dict[str, int]:
        """Dropped images per main reason, every reason listed (0 when none)."""
        c = Counter(r[0] for r in self.dropped.values())
        return {k: int(c.get(k, 0)) for k in REASONS}

    def summary(self) -> dict[str, int]:
        """Flat counts: ``scored``, ``kept``, ``dropped``, ``unreadable`` and ``dropped.<reason>``."""
        out = {"scored": len(self.ids), "kept": len(self.kept), "dropped": len(self.dropped),
               "unreadable": len(self.unreadable)}
        out.update({f"dropped.{k}": v for k, v in self.counts().items()})
        return out


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image Pearson correlation of (N, ...) arrays."""
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(den > 1e-12, (a * b).sum(1) / np.maximum(den, 1e-12), 0.0)


def _mirror_symmetry(x: np.ndarray, axis: int, max_shift: float = 0.15) -> np.ndarray:
    """Best correlation of (N, H, W) images with their mirror image along ``axis`` (2: left-right,
    1: top-bottom), over mirror axes within ``max_shift`` of the side from the centre (a
    patient off the centre of the film is still symmetric about their own midline)."""
    m = np.flip(x, axis=axis)
    side = x.shape[axis]
    k = int(max_shift * side)
    best = np.full(len(x), -1.0)
    for s in range(-k, k + 1, max(1, side // 32)):
        a = np.take(x, range(max(0, s), side + min(0, s)), axis=axis)
        b = np.take(m, range(max(0, -s), side - max(0, s)), axis=axis)
        best = np.maximum(best, _corr(a, b))
    return best


def image_scores(images: np.ndarray, saturation_level: float = 0.02) -> dict[str, np.ndarray]:
    """Per-image statistics the checks use.

    Args:
        images: (N, H, W) float32 in [0, 1].
        saturation_level: pixels within it of 0 or 1 count as saturated.

    Returns:
        name -> (N,) float64: ``mean``, ``std``, ``p05``, ``p95``, ``saturated`` (fraction),
        ``symmetry_lr`` / ``symmetry_ud`` (best mirror correlations, the mirror axis within
        15% of the centre), ``band_contrast`` (central vertical band minus the lung bands,
        rows 20-80%), ``lung_excess`` (the lung bands minus the image mean).
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] == 0 or min(x.shape[1:]) < 8:
        raise ValueError(f"images must be (N, H, W) with N >= 1 and H, W >= 8, got shape {x.shape}")
    n, h, w = x.shape
    flat = x.reshape(n, -1)
    p05, p95 = np.percentile(flat, [5, 95], axis=1)
    sat = ((flat <= saturation_level) | (flat >= 1.0 - saturation_level)).mean(1)
    rows = slice(int(0.2 * h), max(int(0.2 * h) + 1, int(0.8 * h)))

    def band(lo: float, hi: float) -> np.ndarray:
        return x[:, rows, int(lo * w):max(int(lo * w) + 1, int(hi * w))].mean(axis=(1, 2))

    center = band(0.42, 0.58)
    lungs = (band(0.15, 0.35) + band(0.65, 0.85)) / 2
    return {
        "mean": flat.mean(1).astype(np.float64),
        "std": flat.std(1).astype(np.float64),
        "p05": p05.astype(np.float64),
        "p95": p95.astype(np.float64),
        "saturated": sat.astype(np.float64),
        "symmetry_lr": _mirror_symmetry(x, 2).astype(np.float64),
        "symmetry_ud": _mirror_symmetry(x, 1).astype(np.float64),
        "band_contrast": (center - lungs).astype(np.float64),
        "lung_excess": (lungs - flat.mean(1)).astype(np.float64),
    }


def robust_z(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """|value - median| / (1.4826 * MAD) of ``reference`` (default: ``values``); 0 where MAD is 0."""
    ref = values if reference is None else reference
    med = np.median(ref)
    mad = _MAD_SCALE * np.median(np.abs(ref - med))
    if mad <= 1e-12:
        return np.zeros_like(values, dtype=np.float64)
    return np.abs(values - med) / mad


def _pca_error(small: np.ndarray, fit_rows: np.ndarray, components: int) -> np.ndarray:
    """Mean squared reconstruction error of each row of ``small`` under a PCA fitted on ``fit_rows``."""
    fit = small[fit_rows]
    mu = fit.mean(0, keepdims=True)
    k = max(1, min(components, len(fit) - 1, fit.shape[1]))
    _, _, vt = np.linalg.svd(fit - mu, full_matrices=False)
    basis = vt[:k]
    centred = small - mu
    recon = centred @ basis.T @ basis
    return ((centred - recon) ** 2).mean(1)


def filter_images(
    ids: Sequence[str],
    images: np.ndarray,
    cfg: "InputFilterConfig",
    views: Sequence[str] | None = None,
) -> InputFilterResult:
    """Score images and drop the unusable ones.

    Args:
        ids: one name per image (e.g. NIH image indices), unique.
        images: (N, H, W) float32 in [0, 1], at any size (scored as given; ``filter_index``
            reads them at ``cfg.image_size``).
        cfg: the ``input_filter`` section.
        views: the Data_Entry "View Position" of each image ("" = unknown), or None.

    Raises:
        ValueError: ids and images (or views) differ in length, or ids repeat.
    """
    ids = [str(i) for i in ids]
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 3 or len(x) != len(ids):
        raise ValueError(f"images must be (N, H, W) with N = len(ids) = {len(ids)}, got shape {x.shape}")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique; the same image was listed twice")
    if views is not None and len(views) != len(ids):
        raise ValueError(f"views must give one view per image ({len(ids)}), got {len(views)}")
    n = len(ids)
    reasons: list[list[str]] = [[] for _ in range(n)]
    if n == 0:
        return InputFilterResult((), (), {}, {}, False)
    s = image_scores(x, cfg.saturation_level)
    allowed = {v.upper() for v in cfg.views}
    for i in range(n):
        v = (views[i] if views is not None else "") or ""
        if allowed and v.strip() and v.strip().upper() not in allowed:
            reasons[i].append("view")
        if s["std"][i] < cfg.min_std:
            reasons[i].append("blank")
        elif s["saturated"][i] > cfg.max_saturated_fraction:
            reasons[i].append("saturated")
    side = min(cfg.pca_size, x.shape[1], x.shape[2])
    small = np.stack([resize(im, side) if im.shape != (side, side) else im for im in x]).astype(np.float64)
    basic = np.array([not r for r in reasons])
    population = int(basic.sum()) >= cfg.min_population
    nan = np.full(n, np.nan)
    for k in ("template_corr", "rotated_corr", "exposure_z", "outlier_z"):
        s[k] = nan.copy()
    if population:
        # the pixel-wise median of the candidates is a chest template that a minority of
        # rotated or inverted images does not move; each image is compared with it as it is,
        # rotated by 90, 180 and 270 degrees, and inverted (correlation flips sign)
        template = np.median(small[basic], axis=0)
        corr = np.stack([_corr(np.rot90(small, r, axes=(1, 2)), np.broadcast_to(template, small.shape)) for r in range(4)])
        s["template_corr"], s["rotated_corr"] = corr[0], np.abs(corr[1:]).max(0)
        for i in np.flatnonzero(basic):
            if cfg.check_orientation and s["rotated_corr"][i] - max(corr[0, i], -corr[0, i]) > cfg.rotation_margin:
                reasons[i].append("rotated")
            elif cfg.check_inversion and corr[0, i] < -cfg.inversion_margin:
                reasons[i].append("inverted")
    else:  # too few images for a template: fixed rules on the image alone
        for i in np.flatnonzero(basic):
            if cfg.check_orientation and s["symmetry_ud"][i] - s["symmetry_lr"][i] > cfg.rotation_margin:
                reasons[i].append("rotated")
            elif cfg.check_inversion and s["band_contrast"][i] < 0 and s["lung_excess"][i] > 0:
                reasons[i].append("inverted")
    passed = np.array([not r for r in reasons])
    if population and passed.sum() >= cfg.min_population:
        z = np.max([robust_z(s[k], s[k][passed]) for k in _EXPOSURE], axis=0)
        s["exposure_z"] = z
        for i in np.flatnonzero(z > cfg.max_exposure_z):
            if not reasons[i]:
                reasons[i].append("exposure")
        good = np.array([not r for r in reasons])
        if good.sum() >= cfg.min_population:
            flat = small.reshape(n, -1)
            err = _pca_error(flat, np.flatnonzero(good), cfg.pca_components)
            oz = robust_z(err, err[good])
            # only a larger error than typical is an outlier
            oz = np.where(err > np.median(err[good]), oz, 0.0)
            s["pca_error"], s["outlier_z"] = err, oz
            for i in np.flatnonzero(oz > cfg.max_outlier_z):
                if not reasons[i]:
                    reasons[i].append("outlier")
    dropped = {ids[i]: tuple(reasons[i]) for i in range(n) if reasons[i]}
    thumbs = {}
    for i in range(n):
        if reasons[i] and len(thumbs) < cfg.examples:
            thumbs[ids[i]] = x[i]
    return InputFilterResult(
        ids=tuple(ids),
        kept=tuple(i for i in ids if i not in dropped),
        dropped=dropped,
        scores=s,
        population_checked=population,
        thumbnails=thumbs,
    )


def filter_index(
    index: "NIHIndex", records: Sequence["Record"], cfg: "InputFilterConfig", progress_every: int = 500
) -> InputFilterResult:
    """Read ``records`` of ``index`` at ``cfg.image_size`` and filter them (see :func:`filter_images`).

    A file that cannot be read is not judged here: it is kept, listed in
    :attr:`InputFilterResult.unreadable` with NaN scores, and the job's per-item path records
    it (an item on it is rejected as ``unreadable_source``), as without the filter.
    """
    imgs, ok, bad = [], [], []
    for k, r in enumerate(records, 1):
        try:
            imgs.append(read_image(index.path(r), cfg.image_size))
            ok.append(r)
        except ImageReadError as exc:
            bad.append(r.image_index)
            log.warning("input filter: %s; left to the job, which counts it", exc)
        if progress_every and k % progress_every == 0:
            log.info("input filter: read %d/%d images", k, len(records))
    arr = np.stack(imgs) if imgs else np.zeros((0, cfg.image_size, cfg.image_size), np.float32)
    res = filter_images([r.image_index for r in ok], arr, cfg, views=[r.view for r in ok])
    if not bad:
        return res
    ids = tuple(r.image_index for r in records)
    pos = {k: i for i, k in enumerate(res.ids)}
    rows = [pos.get(k, -1) for k in ids]
    scores = {}
    for name, v in res.scores.items():
        full = np.full(len(ids), np.nan)
        full[[i for i, j in enumerate(rows) if j >= 0]] = v
        scores[name] = full
    return replace(res, ids=ids, kept=tuple(k for k in ids if k not in res.dropped), scores=scores,
                   unreadable=tuple(bad))
