"""Fidelity of synthetic images: do they look like real ones, as a population?

Every measure takes features as (N, D) arrays, one row per image: raw downsampled pixels
(``images.flatten(1)``) or embeddings (:func:`augment.classifier.predict.embed_images`).

* :func:`pca_projection`, :func:`tsne_projection`: real and synthetic points in 2-D or 3-D
  (one fit on both sets), drawn by :func:`projection_figure`.
* :func:`silhouette`: silhouette score of the real-vs-synthetic labelling in feature space,
  overall and per finding. Near 0 (or below) the two sets are intermixed; near 1 they form
  separate clusters.
* :func:`intensity_histograms`: pixel-intensity histograms of both sets, their histogram
  intersection (1 = identical) and the 1-D Wasserstein distance of the pixel values (0 =
  identical), drawn by :func:`histogram_figure`.
* :func:`cosine_to_source`: cosine similarity between each synthetic embedding and the
  embedding of the healthy image it was painted into.

Each result is a frozen dataclass with a ``metrics()`` method giving a flat dict for MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from augment.findings import FINDINGS

__all__ = [
    "Projection",
    "SilhouetteScores",
    "IntensityHistograms",
    "CosineToSource",
    "as_features",
    "pca_projection",
    "tsne_projection",
    "silhouette",
    "intensity_histograms",
    "cosine_to_source",
    "projection_figure",
    "histogram_figure",
]


def as_features(x: np.ndarray | torch.Tensor, name: str = "features") -> np.ndarray:
    """Bring images (N, 1, H, W) or features (N, D) to a float64 (N, D) array (images flattened)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim > 2:
        a = a.reshape(a.shape[0], -1)
    if a.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features or (N, 1, H, W) images, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def _pair(real: Any, synthetic: Any, min_each: int = 1) -> tuple[np.ndarray, np.ndarray]:
    r, s = as_features(real, "real"), as_features(synthetic, "synthetic")
    if r.shape[1] != s.shape[1]:
        raise ValueError(f"real has {r.shape[1]} features per row, synthetic {s.shape[1]}; extract both the same way")
    if len(r) < min_each or len(s) < min_each:
        raise ValueError(f"need at least {min_each} real and {min_each} synthetic rows, got {len(r)} and {len(s)}")
    return r, s


@dataclass(frozen=True)
class Projection:
    """Real and synthetic points in a low-dimensional space.

    Attributes:
        method: ``"pca"`` or ``"tsne"``.
        coords: (N_real + N_synthetic, k) coordinates, real rows first.
        is_synthetic: (N,) bool.
        explained_variance: per component, PCA only (fraction of the total variance).
        perplexity: the t-SNE perplexity actually used (clipped to N - 1).
    """

    method: str
    coords: np.ndarray
    is_synthetic: np.ndarray
    explained_variance: tuple[float, ...] | None = None
    perplexity: float | None = None

    @property
    def dims(self) -> int:
        return int(self.coords.shape[1])

    @property
    def real(self) -> np.ndarray:
        return self.coords[~self.is_synthetic]

    @property
    def synthetic(self) -> np.ndarray:
        return self.coords[self.is_synthetic]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}pca{k}d_explained_variance`` (PCA only) for MLflow."""
        if self.explained_variance is None:
            return {}
        return {f"{prefix}{self.method}{self.dims}d_explained_variance": float(sum(self.explained_variance))}


def _stack(r: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([r, s])
    lab = np.concatenate([np.zeros(len(r), bool), np.ones(len(s), bool)])
    return x, lab


def pca_projection(real: Any, synthetic: Any, n_components: int = 2) -> Projection:
    """PCA of both sets together (one fit), in ``n_components`` (2 or 3) dimensions.

    Args:
        real: (N_r, D) features or (N_r, 1, H, W) images.
        synthetic: (N_s, D), same D.
        n_components: 2 or 3.
    """
    from sklearn.decomposition import PCA

    if n_components not in (2, 3):
        raise ValueError(f"n_components must be 2 or 3, got {n_components}")
    r, s = _pair(real, synthetic)
    x, lab = _stack(r, s)
    k = min(n_components, x.shape[0], x.shape[1])
    pca = PCA(n_components=k, svd_solver="full")
    coords = pca.fit_transform(x)
    if k < n_components:  # too few rows or columns: pad with zeros so the plot still has k axes
        coords = np.pad(coords, ((0, 0), (0, n_components - k)))
    ev = tuple(float(v) for v in pca.explained_variance_ratio_) if np.isfinite(pca.explained_variance_ratio_).all() else None
    return Projection("pca", coords, lab, explained_variance=ev)


def tsne_projection(real: Any, synthetic: Any, n_components: int = 2, perplexity: float = 30.0, seed: int = 0) -> Projection:
    """t-SNE of both sets together; the perplexity is clipped to N - 1 for small sets.

    Features wider than 50 columns are first reduced to 50 by PCA (the usual practice; it
    also keeps t-SNE fast on pixels).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if n_components not in (2, 3):
        raise ValueError(f"n_components must be 2 or 3, got {n_components}")
    if perplexity <= 0:
        raise ValueError(f"perplexity must be > 0, got {perplexity}")
    r, s = _pair(real, synthetic)
    x, lab = _stack(r, s)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points in all, got {n}")
    if x.shape[1] > 50 and n > 50:
        x = PCA(n_components=50, svd_solver="full", random_state=seed).fit_transform(x)
    perp = float(min(perplexity, n - 1))
    init = "pca" if x.shape[1] >= n_components else "random"
    tsne = TSNE(n_components=n_components, perplexity=perp, init=init, random_state=seed, learning_rate="auto", max_iter=500)
    coords = tsne.fit_transform(x)
    return Projection("tsne", coords, lab, perplexity=perp)


@dataclass(frozen=True)
class SilhouetteScores:
    """Silhouette of the real-vs-synthetic labelling (≈0 or below: intermixed; near 1: apart).

    Attributes:
        overall: on all rows; None when a set is too small.
        per_finding: finding -> score, None when that finding has too few rows in a set.
        n_real, n_synthetic: rows scored overall.
    """

    overall: float | None
    per_finding: dict[str, float | None] = field(default_factory=dict)
    n_real: int = 0
    n_synthetic: int = 0

    def metrics(self, prefix: str = "") -> dict[str, float | None]:
        out: dict[str, float | None] = {f"{prefix}silhouette": self.overall}
        out.update({f"{prefix}silhouette_{f}": v for f, v in self.per_finding.items()})
        return out


def _silhouette_value(r: np.ndarray, s: np.ndarray, metric: str) -> float | None:
    from sklearn.metrics import silhouette_score

    if len(r) < 1 or len(s) < 1 or len(r) + len(s) < 3:
        return None
    x, lab = _stack(r, s)
    if np.allclose(x, x[0]):  # every point the same: no structure at all
        return 0.0
    return float(silhouette_score(x, lab.astype(int), metric=metric))


def _label_matrix(y: Any, n: int, name: str, findings: Sequence[str]) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim == 1 and a.dtype.kind in ("U", "S", "O"):
        return np.array([[lab == f for f in findings] for lab in a], dtype=bool).reshape(len(a), len(findings))
    if a.ndim != 2 or a.shape != (n, len(findings)):
        raise ValueError(f"{name} must be ({n}, {len(findings)}) multi-hot labels or {n} finding names, got shape {a.shape}")
    return a.astype(bool)


def silhouette(
    real: Any,
    synthetic: Any,
    real_labels: Any | None = None,
    synthetic_labels: Any | None = None,
    findings: Sequence[str] = FINDINGS,
    min_per_set: int = 2,
    metric: str = "euclidean",
) -> SilhouetteScores:
    """Silhouette score of real (label 0) vs synthetic (label 1), overall and per finding.

    Args:
        real: (N_r, D) features or images.
        synthetic: (N_s, D).
        real_labels: (N_r, F) multi-hot or N_r finding names; with ``synthetic_labels``
            gives the per-finding scores (rows carrying that finding in each set).
        synthetic_labels: (N_s, F) multi-hot or N_s finding names (a synthetic image has one).
        findings: names of the F label columns.
        min_per_set: a finding with fewer rows in either set gets None.
        metric: sklearn's distance metric (``"euclidean"``, ``"cosine"``).
    """
    r, s = _pair(real, synthetic)
    per: dict[str, float | None] = {}
    if (real_labels is None) != (synthetic_labels is None):
        raise ValueError("give both real_labels and synthetic_labels for per-finding scores, or neither")
    if real_labels is not None:
        yr = _label_matrix(real_labels, len(r), "real_labels", findings)
        ys = _label_matrix(synthetic_labels, len(s), "synthetic_labels", findings)
        for j, f in enumerate(findings):
            if not ys[:, j].any() and not yr[:, j].any():
                continue
            rr, ss = r[yr[:, j]], s[ys[:, j]]
            per[f] = _silhouette_value(rr, ss, metric) if min(len(rr), len(ss)) >= min_per_set else None
    return SilhouetteScores(_silhouette_value(r, s, metric), per, len(r), len(s))


@dataclass(frozen=True)
class IntensityHistograms:
    """Pixel-intensity histograms of both sets on the same bins over [0, 1].

    Attributes:
        edges: (bins + 1,) bin edges.
        real_counts, synthetic_counts: (bins,) pixel counts.
        intersection: sum over bins of min(p_real, p_synthetic) of the normalised
            histograms; 1 = identical, 0 = disjoint.
        wasserstein: 1-D earth mover's distance between the pixel values (intensity units).
        real_mean, synthetic_mean: mean intensities.
    """

    edges: np.ndarray
    real_counts: np.ndarray
    synthetic_counts: np.ndarray
    intersection: float
    wasserstein: float
    real_mean: float
    synthetic_mean: float

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}histogram_intersection": self.intersection,
            f"{prefix}intensity_wasserstein": self.wasserstein,
            f"{prefix}intensity_mean_real": self.real_mean,
            f"{prefix}intensity_mean_synthetic": self.synthetic_mean,
        }


def _pixels(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name} holds no pixels")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if a.min() < -1e-6 or a.max() > 1 + 1e-6:
        raise ValueError(f"{name} must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]; divide 8-bit data by 255")
    return np.clip(a, 0.0, 1.0)


def intensity_histograms(real_images: Any, synthetic_images: Any, bins: int = 64) -> IntensityHistograms:
    """Histograms of all pixel values of two image sets (any shape, values in [0, 1])."""
    from scipy.stats import wasserstein_distance

    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    r, s = _pixels(real_images, "real_images"), _pixels(synthetic_images, "synthetic_images")
    edges = np.linspace(0.0, 1.0, bins + 1)
    rc, _ = np.histogram(r, edges)
    sc, _ = np.histogram(s, edges)
    inter = float(np.minimum(rc / rc.sum(), sc / sc.sum()).sum())
    return IntensityHistograms(edges, rc, sc, inter, float(wasserstein_distance(r, s)), float(r.mean()), float(s.mean()))


@dataclass(frozen=True)
class CosineToSource:
    """Cosine similarity of each synthetic embedding to its healthy source's embedding.

    Attributes:
        values: (N,) similarities in [-1, 1].
    """

    values: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    def metrics(self, prefix: str = "") -> dict[str, float]:
        v = self.values
        return {
            f"{prefix}cosine_to_source_mean": float(v.mean()),
            f"{prefix}cosine_to_source_median": float(np.median(v)),
            f"{prefix}cosine_to_source_min": float(v.min()),
        }


def cosine_to_source(synthetic_embeddings: Any, source_embeddings: Any) -> CosineToSource:
    """Row-wise cosine similarity of (N, D) synthetic embeddings and their sources' (N, D)."""
    s, src = as_features(synthetic_embeddings, "synthetic_embeddings"), as_features(source_embeddings, "source_embeddings")
    if s.shape != src.shape:
        raise ValueError(f"synthetic {s.shape} and source {src.shape} embeddings must pair up row by row")
    if len(s) == 0:
        raise ValueError("cosine_to_source got no rows")
    num = (s * src).sum(1)
    den = np.linalg.norm(s, axis=1) * np.linalg.norm(src, axis=1)
    return CosineToSource(np.clip(num / np.maximum(den, 1e-12), -1.0, 1.0))


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def projection_figure(proj: Projection, title: str | None = None):
    """Scatter of real (blue) and synthetic (orange) points, 2-D or 3-D; returns a Figure."""
    plt = _plt()
    fig = plt.figure(figsize=(4.4, 4.0))
    ax = fig.add_subplot(111, projection="3d" if proj.dims == 3 else None)
    for sel, name, colour in ((~proj.is_synthetic, "real", "tab:blue"), (proj.is_synthetic, "synthetic", "tab:orange")):
        pts = proj.coords[sel]
        ax.scatter(*[pts[:, k] for k in range(proj.dims)], s=9, alpha=0.7, c=colour, label=f"{name} ({len(pts)})")
    if title is None:
        title = f"{proj.method.upper()} {proj.dims}-D"
        if proj.explained_variance:
            title += f" ({100 * sum(proj.explained_variance):.0f}% variance)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def histogram_figure(h: IntensityHistograms, title: str = "pixel intensities"):
    """Normalised intensity histograms of both sets; returns a Figure."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    centres = 0.5 * (h.edges[1:] + h.edges[:-1])
    width = h.edges[1] - h.edges[0]
    for counts, name, colour in ((h.real_counts, "real", "tab:blue"), (h.synthetic_counts, "synthetic", "tab:orange")):
        ax.step(centres, counts / max(counts.sum(), 1) / width, where="mid", color=colour, label=name)
    ax.set_xlabel("intensity")
    ax.set_ylabel("density")
    ax.set_title(f"{title}: intersection {h.intersection:.3f}, W1 {h.wasserstein:.4f}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
