"""Distribution distances and diversity: FID with a bootstrap interval, and MS-SSIM.

* :func:`frechet_distance`: Fréchet distance between two Gaussians (the FID formula) from
  their means and covariances, with :func:`scipy.linalg.sqrtm`.
* :func:`fid`: FID of two feature sets (N, D), with a bootstrap interval (both sets
  resampled) and the sample sizes. The trace term ``tr sqrt(S1 S2)`` is computed without
  a complex matrix root: from the eigenvalues of the symmetric ``S1^(1/2) S2 S1^(1/2)`` when
  D <= N, else from the identity ``tr sqrt(S1 S2) = ||A B^T||_* / sqrt((n1 - 1)(n2 - 1))``
  (A, B: centred features, ``||.||_*`` the nuclear norm), exact with more dimensions than
  samples and one N1 x N2 SVD per resample instead of a D x D root. Both equal the sqrtm
  formula of :func:`frechet_distance`.
* :func:`kid`: Kernel Inception Distance (unbiased MMD² with a cubic polynomial kernel)
  over subsets, mean and spread: unbiased, so rows of a table with few images can be
  compared, which FID's small-N bias forbids.
* Feature extractors: :class:`ClassifierFeatures` (our classifier's penultimate layer, the
  default) and :class:`XRVFeatures` (a torchxrayvision DenseNet-121, only from a weights
  file on local disk; nothing is downloaded).
* :func:`ms_ssim`: multi-scale SSIM in PyTorch (Gaussian window 11, sigma 1.5, the standard
  five scale weights of Wang et al. 2003; fewer scales, weights renormalised, on images
  too small for five). :func:`mean_pairwise_ms_ssim` averages it over random pairs of one
  set: high = the samples look alike (low diversity).

FID depends on the feature extractor and on the sample size (it is biased upwards for
small N): compare numbers only at equal N and features; the interval shows the noise.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from augment.data.io import validate_batch
from augment.findings import FINDINGS

__all__ = [
    "FIDResult",
    "KIDResult",
    "kid",
    "Diversity",
    "frechet_distance",
    "fid",
    "ClassifierFeatures",
    "XRVFeatures",
    "ms_ssim",
    "mean_pairwise_ms_ssim",
    "diversity_by_finding",
    "MS_SSIM_WEIGHTS",
]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# --- Fréchet distance ----------------------------------------------------------------------


def _trace_sqrt_product_eig(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr sqrt(S1 S2) through the symmetric form sqrt(S1)^(1/2) S2 sqrt(S1)^(1/2) (always real)."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = r @ s2 @ r
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))`` between N(mu1, S1) and N(mu2, S2).

    The matrix root comes from :func:`scipy.linalg.sqrtm`. When it is not finite (singular
    covariances), ``eps`` is added to both diagonals and it is taken again; when it comes back
    complex with a non-negligible imaginary part (numerical error: the eigenvalues of S1 S2
    are real and non-negative), the trace is recomputed from the symmetric form instead.
    A tiny negative total (round-off) is returned as 0.

    Args:
        mu1, mu2: (D,) means.
        sigma1, sigma2: (D, D) covariances.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"expected means (D,) and covariances (D, D) of one D; got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns on singular input; handled below
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    tr_covmean: float
    if not np.isfinite(covmean).all():
        tr_covmean = _trace_sqrt_product_eig(s1, s2)
    elif np.iscomplexobj(covmean):
        scale = max(1.0, float(np.abs(covmean.real).max()))
        if np.abs(covmean.imag).max() > 1e-3 * scale:
            tr_covmean = _trace_sqrt_product_eig(s1, s2)
        else:
            tr_covmean = float(np.trace(covmean.real))
    else:
        tr_covmean = float(np.trace(covmean))
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def _as_rows(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {a.shape}; extract features first")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if a.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows for a covariance, got {a.shape[0]}")
    return a


def _fid_rows(x: np.ndarray, y: np.ndarray) -> float:
    """FID of two (N, D) sets; the trace term in whichever space is smaller (see the module docstring)."""
    mx, my = x.mean(0), y.mean(0)
    a, b = x - mx, y - my
    c1, c2 = x.shape[0] - 1, y.shape[0] - 1
    tr1, tr2 = float((a * a).sum()) / c1, float((b * b).sum()) / c2
    if x.shape[1] <= min(x.shape[0], y.shape[0]):  # D x D covariances, symmetric root
        tr_covmean = _trace_sqrt_product_eig(a.T @ a / c1, b.T @ b / c2)
    else:  # N1 x N2 cross products: ||A B^T||_* / sqrt(c1 c2)
        tr_covmean = float(np.linalg.svd(a @ b.T, compute_uv=False).sum()) / float(np.sqrt(c1 * c2))
    diff = mx - my
    return max(float(diff @ diff) + tr1 + tr2 - 2.0 * tr_covmean, 0.0)


@dataclass(frozen=True)
class FIDResult:
    """FID of real vs synthetic features, with a bootstrap interval.

    Attributes:
        fid: on the full sets.
        low, high: bias-corrected bootstrap interval (None when ``n_boot`` was 0).
        n_real, n_synthetic: rows used.
        n_boot: resamples.
        feature_dim: D.
        features: name of the feature extractor (``"classifier"``, ``"xrv"``, ``"pixels"``).
        bootstrap_bias: mean of the resampled FIDs minus ``fid`` (None without resamples).
    """

    fid: float
    low: float | None
    high: float | None
    n_real: int
    n_synthetic: int
    n_boot: int
    feature_dim: int
    features: str = "features"
    bootstrap_bias: float | None = None

    def metrics(self, prefix: str = "") -> dict[str, float | None]:
        p = f"{prefix}fid_{self.features}"
        return {p: self.fid, f"{p}_low": self.low, f"{p}_high": self.high, f"{p}_n_real": self.n_real, f"{p}_n_synthetic": self.n_synthetic}


def fid(real: Any, synthetic: Any, n_boot: int = 200, seed: int = 0, alpha: float = 0.05, features: str = "features") -> FIDResult:
    """FID between two feature sets with a bootstrap (1 - alpha) interval.

    Resampling with replacement repeats rows, which FID reads as lost diversity: the
    resampled values sit above the full-sample FID (by a lot when D is near or above N). The
    interval is therefore the bootstrap percentile interval moved down by that shift (mean of
    the resamples minus the estimate, reported as ``bootstrap_bias``), clipped at 0.

    Args:
        real: (N_r, D) features (N_r >= 2).
        synthetic: (N_s, D) features.
        n_boot: resamples (each set drawn with replacement at its own size); 0: no interval.
        seed: seeds the resampling.
        alpha: 0.05 gives a 95% interval.
        features: the extractor's name, carried into the metric names.
    """
    x, y = _as_rows(real, "real"), _as_rows(synthetic, "synthetic")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real has {x.shape[1]} features, synthetic {y.shape[1]}; use the same extractor for both")
    if n_boot < 0 or not 0 < alpha < 1:
        raise ValueError(f"n_boot must be >= 0 and alpha in (0, 1), got {n_boot} and {alpha}")
    value = _fid_rows(x, y)
    low = high = bias = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        boots = np.array([_fid_rows(x[rng.integers(0, len(x), len(x))], y[rng.integers(0, len(y), len(y))]) for _ in range(n_boot)])
        bias = float(boots.mean() - value)
        lo_q, hi_q = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        low, high = max(float(lo_q) - bias, 0.0), max(float(hi_q) - bias, 0.0)
    return FIDResult(float(value), low, high, len(x), len(y), n_boot, int(x.shape[1]), features, bias)


@dataclass(frozen=True)
class KIDResult:
    """Kernel Inception Distance (the unbiased MMD² of a cubic polynomial kernel) over subsets.

    Attributes:
        kid: mean of the subsets' unbiased MMD² estimates (can dip below 0 when the sets
            match: the estimator is unbiased, not non-negative).
        std: standard deviation over subsets.
        n_real, n_synthetic: rows available.
        subset_size, n_subsets: rows drawn (without replacement) from each set per subset.
        features: the extractor's name.
    """

    kid: float
    std: float
    n_real: int
    n_synthetic: int
    subset_size: int
    n_subsets: int
    features: str = "features"

    def metrics(self, prefix: str = "") -> dict[str, float | None]:
        p = f"{prefix}kid_{self.features}"
        return {p: self.kid, f"{p}_std": self.std, f"{p}_subset_size": self.subset_size}


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.sum() / (m * n))


def kid(real: Any, synthetic: Any, subset_size: int = 100, n_subsets: int = 100, seed: int = 0,
        features: str = "features") -> KIDResult:
    """KID of two feature sets (Bińkowski et al. 2018): unbiased, so fit for small N, unlike FID.

    The kernel is ``k(a, b) = (a·b / D + 1)^3``. Features are standardised with the real
    set's mean and standard deviation first, so one scale serves extractors of any range.

    Args:
        real: (N_r, D) features.
        synthetic: (N_s, D) features.
        subset_size: rows per subset, capped at the smaller set's size.
        n_subsets: subsets drawn.
        seed: seeds the subsets.
        features: the extractor's name, carried into the metric names.
    """
    x, y = _as_rows(real, "real"), _as_rows(synthetic, "synthetic")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"real has {x.shape[1]} features, synthetic {y.shape[1]}; use the same extractor for both")
    if subset_size < 2 or n_subsets < 1:
        raise ValueError(f"subset_size must be >= 2 and n_subsets >= 1, got {subset_size} and {n_subsets}")
    mu, sd = x.mean(0), x.std(0) + 1e-8
    x, y = (x - mu) / sd, (y - mu) / sd
    m = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    vals = np.array([_mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
                     for _ in range(n_subsets)])
    return KIDResult(float(vals.mean()), float(vals.std(ddof=1)) if n_subsets > 1 else 0.0, len(x), len(y), m, n_subsets, features)


# --- feature extractors --------------------------------------------------------------------


class ClassifierFeatures:
    """Penultimate-layer embeddings of our classifier (:func:`embed_images`), as (N, D) NumPy.

    Args:
        model: a :class:`augment.classifier.model.Classifier` (anything with ``embed``).
        image_size: images are resized to this side first (default: the model's
            ``image_size``, i.e. the resolution it was trained at).
        batch_size: images per forward pass.
    """

    name = "classifier"

    def __init__(self, model: nn.Module, image_size: int | None = None, batch_size: int = 32) -> None:
        if not hasattr(model, "embed"):
            raise TypeError(f"model must have an embed() method (our Classifier), got {type(model).__name__}")
        self.model = model
        self.image_size = image_size or getattr(model, "image_size", None)
        self.batch_size = batch_size

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """(N, 1, H, W) in [0, 1] -> (N, D) float32."""
        from augment.classifier.predict import embed_images

        validate_batch(images, "images")
        s = self.image_size
        if s and images.shape[-2:] != (s, s):
            images = F.interpolate(images.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        return embed_images(self.model, images, batch_size=self.batch_size).numpy()


class XRVFeatures:
    """Pooled DenseNet-121 features (1024-D) of a torchxrayvision model, from local weights only.

    Args:
        weights: a torchxrayvision weights name (``"densenet121-res224-nih"``) looked up in
            ``cache_dir`` (default ``~/.torchxrayvision/models_data``), or the path of the
            weights file itself (named as torchxrayvision names it).
        cache_dir: folder holding the weights file, for a weights name.
        model: an already built torchxrayvision DenseNet (``weights`` is then not read).
        batch_size: images per forward pass.

    Raises:
        FileNotFoundError: (:class:`augment.attention.xrv.XRVWeightsMissing`) the weights file
            is not on local disk; the message says where to put it.
    """

    name = "xrv"

    def __init__(
        self,
        weights: str | os.PathLike = "densenet121-res224-nih",
        cache_dir: str | os.PathLike | None = None,
        model: nn.Module | None = None,
        batch_size: int = 16,
    ) -> None:
        from augment.attention.xrv import XRVWeightsMissing, import_xrv, xrv_weights_file

        if model is None:
            xrv = import_xrv()
            text = str(weights)
            if text in xrv.models.model_urls:
                name, path = text, xrv_weights_file(text, cache_dir)
            else:
                path = Path(text).expanduser()
                by_file = {os.path.basename(v["weights_url"]): k for k, v in xrv.models.model_urls.items() if k.startswith("densenet")}
                if path.name not in by_file:
                    raise ValueError(
                        f"{text!r} is neither a torchxrayvision DenseNet weights name nor a file named like one; "
                        f"names: {sorted(by_file.values())}, files: {sorted(by_file)}"
                    )
                name = by_file[path.name]
            if not path.is_file():
                url = xrv.models.model_urls[name]["weights_url"]
                raise XRVWeightsMissing(
                    f"torchxrayvision weights {name!r} not found at {path}; nothing is downloaded. On a machine "
                    f"with internet fetch {url} and copy it there, or use the classifier's features (the default)"
                )
            with warnings.catch_warnings():
                model = xrv.models.DenseNet(weights=name, cache_dir=str(path.parent))
        if not hasattr(model, "features"):
            raise TypeError(f"expected a torchxrayvision DenseNet (with .features), got {type(model).__name__}")
        self.model = model.eval()
        self.resolution = int(getattr(model, "input_resolution", 224))
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """(N, 1, H, W) in [0, 1] -> (N, 1024) float32 (resized to 224, scaled to [-1024, 1024])."""
        validate_batch(images, "images")
        device = next(self.model.parameters()).device
        r = self.resolution
        out = []
        for s in range(0, images.shape[0], self.batch_size):
            x = images[s : s + self.batch_size].to(device, torch.float32)
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
            x = (x * 2.0 - 1.0) * 1024.0
            feats = self.model.features(x)
            out.append(F.adaptive_avg_pool2d(F.relu(feats), 1).flatten(1).float().cpu())
        return torch.cat(out).numpy()


# --- MS-SSIM -------------------------------------------------------------------------------


def _gauss_1d(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = g.to(x)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = ((2 * mx * my + c1) / (mx * mx + my * my + c1)) * cs
    return ssim.flatten(1).mean(1), cs.flatten(1).mean(1)


def _levels(side: int, win_size: int, max_levels: int) -> int:
    levels = 1
    while levels < max_levels and side // (2**levels) >= win_size:
        levels += 1
    return levels


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Multi-scale SSIM of image pairs (Wang, Simoncelli and Bovik 2003).

    Contrast-structure terms of the first L-1 scales and the SSIM of the last, each raised
    to its weight (negative values clamped to 0, as in the reference implementations),
    with a 2x average-pool between scales. With ``weights=None`` the standard five weights
    are used when the smaller image side allows five scales (side / 16 >= ``win_size``),
    else the first L weights, renormalised to sum to 1, for the most scales that fit; on
    images smaller than the window the window shrinks to the largest odd size that fits.

    Args:
        x, y: (B, C, H, W) images in [0, data_range], same shape.
        data_range: 1.0 for the library's [0, 1] images.
        win_size: Gaussian window side (odd).
        sigma: Gaussian window width.
        weights: explicit per-scale weights (their count is the number of scales).

    Returns:
        (B,) MS-SSIM in [0, 1]; 1 for identical images.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("ms_ssim expects two torch tensors of shape (B, C, H, W)")
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"x and y must be (B, C, H, W) of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}")
    side = min(x.shape[-2:])
    if side < 3:
        raise ValueError(f"images of {tuple(x.shape[-2:])} pixels are too small for SSIM; need at least 3x3")
    if side < win_size:
        win_size = side if side % 2 else side - 1
    if weights is None:
        n = _levels(side, win_size, len(MS_SSIM_WEIGHTS))
        w = torch.tensor(MS_SSIM_WEIGHTS[:n], dtype=torch.float64)
        w = w / w.sum()
    else:
        w = torch.tensor(list(weights), dtype=torch.float64)
        if w.numel() < 1 or (w < 0).any():
            raise ValueError(f"weights must be non-negative, one per scale, got {list(weights)}")
        need = (win_size - 1) * 2 ** (w.numel() - 1) + 1
        if side < need:
            raise ValueError(f"{w.numel()} scales need images of at least {need} pixels per side, got {side}; pass fewer weights")
    x, y = x.float(), y.float()
    g = _gauss_1d(win_size, sigma)
    vals = []
    for level in range(w.numel()):
        ssim, cs = _ssim_cs(x, y, g, data_range)
        if level < w.numel() - 1:
            vals.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[-2:]]
            x = F.avg_pool2d(x, 2, padding=pad)
            y = F.avg_pool2d(y, 2, padding=pad)
        else:
            vals.append(torch.relu(ssim))
    stack = torch.stack(vals, dim=0).double()  # (L, B)
    return torch.prod(stack ** w.view(-1, 1), dim=0).float()


@dataclass(frozen=True)
class Diversity:
    """Mean pairwise MS-SSIM of one set (high = alike, low = diverse).

    Attributes:
        mean, std: over the pairs; None with fewer than 2 images.
        n_pairs: pairs scored.
        n_images: images in the set.
    """

    mean: float | None
    std: float | None
    n_pairs: int
    n_images: int


def mean_pairwise_ms_ssim(images: torch.Tensor, max_pairs: int = 100, seed: int = 0, batch_size: int = 64) -> Diversity:
    """MS-SSIM averaged over up to ``max_pairs`` random distinct pairs (all pairs when fewer).

    Args:
        images: (N, 1, H, W) in [0, 1].
        max_pairs: K, the most pairs scored.
        seed: picks the pairs.
    """
    validate_batch(images, "images")
    n = images.shape[0]
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    if n < 2:
        return Diversity(None, None, 0, n)
    ii, jj = np.triu_indices(n, k=1)
    if len(ii) > max_pairs:
        pick = np.sort(np.random.default_rng(seed).choice(len(ii), size=max_pairs, replace=False))
        ii, jj = ii[pick], jj[pick]
    vals = []
    for s in range(0, len(ii), batch_size):
        a = torch.as_tensor(ii[s : s + batch_size])
        b = torch.as_tensor(jj[s : s + batch_size])
        vals.append(ms_ssim(images[a], images[b]))
    v = torch.cat(vals).double()
    return Diversity(float(v.mean()), float(v.std(unbiased=False)), int(v.numel()), n)


def diversity_by_finding(
    images: torch.Tensor,
    findings: Sequence[str],
    max_pairs: int = 100,
    seed: int = 0,
    names: Sequence[str] = FINDINGS,
) -> dict[str, Diversity]:
    """:func:`mean_pairwise_ms_ssim` within the images of each finding.

    Args:
        images: (N, 1, H, W) in [0, 1].
        findings: the finding of each image (N names; synthetic images have one each).
        names: the findings to report, in this order (those without images are left out).
    """
    if len(findings) != images.shape[0]:
        raise ValueError(f"got {len(findings)} findings for {images.shape[0]} images")
    labels = np.asarray(list(findings), dtype=object)
    out: dict[str, Diversity] = {}
    for k, f in enumerate(names):
        idx = np.flatnonzero(labels == f)
        if len(idx):
            out[f] = mean_pairwise_ms_ssim(images[torch.as_tensor(idx)], max_pairs, seed + k)
    return out
