"""Fidelity measures: projections, silhouette, intensity histograms, cosine to source."""

import numpy as np
import pytest
import torch

from augment.evaluation.fidelity import (
    cosine_to_source,
    histogram_figure,
    intensity_histograms,
    pca_projection,
    projection_figure,
    silhouette,
    tsne_projection,
)
from augment.evaluation.plots import save_figure

torch.set_num_threads(1)


def _clusters(n=40, d=8, gap=20.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal((n, d)) + gap


def test_identical_sets_have_silhouette_near_zero_or_below():
    x = np.random.default_rng(0).standard_normal((40, 8))
    s = silhouette(x, x.copy())
    assert s.overall <= 0.02 and s.n_real == s.n_synthetic == 40


def test_separated_clusters_have_high_silhouette_per_finding_too():
    r, s = _clusters()
    y_r = np.zeros((40, 14))
    y_r[:20, 2] = 1  # Effusion in the first 20 real rows
    names = ["Effusion"] * 10 + ["Mass"] * 29 + ["Hernia"]
    sil = silhouette(r, s, y_r, names)
    assert sil.overall > 0.5
    assert sil.per_finding["Effusion"] > 0.5
    assert sil.per_finding["Mass"] is None  # no real Mass rows
    assert sil.per_finding["Hernia"] is None  # one synthetic row only
    m = sil.metrics("emb_")
    assert m["emb_silhouette"] == sil.overall and "emb_silhouette_Effusion" in m


def test_pca_and_tsne_projections(tmp_path):
    r, s = _clusters(n=12, d=30)
    p2, p3 = pca_projection(r, s, 2), pca_projection(r, s, 3)
    assert p2.coords.shape == (24, 2) and p3.coords.shape == (24, 3)
    assert p2.is_synthetic.sum() == 12 and p2.real.shape == (12, 2)
    assert 0.9 < sum(p2.explained_variance) <= 1.0  # the gap dominates
    assert set(p3.metrics()) == {"pca3d_explained_variance"}
    t = tsne_projection(r[:4], s[:3], seed=0)  # 7 points: perplexity clipped to 6
    assert t.coords.shape == (7, 2) and t.perplexity == 6
    # images are flattened to features
    imgs = torch.rand(5, 1, 8, 8)
    assert pca_projection(imgs, imgs * 0.5).coords.shape == (10, 2)
    for proj, name in ((p2, "p2.png"), (p3, "p3.png"), (t, "t.png")):
        assert save_figure(projection_figure(proj), tmp_path / name).stat().st_size > 1000


def test_intensity_histograms_known_answers(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 0.5, (20, 1, 16, 16))
    same = intensity_histograms(a, a)
    assert same.intersection == pytest.approx(1.0) and same.wasserstein == pytest.approx(0.0, abs=1e-12)
    shifted = intensity_histograms(a, a + 0.25)
    assert shifted.wasserstein == pytest.approx(0.25, abs=1e-9)
    assert shifted.intersection == pytest.approx(0.5, abs=0.05)
    assert shifted.real_counts.sum() == a.size and len(shifted.edges) == 65
    assert set(shifted.metrics()) >= {"histogram_intersection", "intensity_wasserstein"}
    assert save_figure(histogram_figure(shifted), tmp_path / "h.png").is_file()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        intensity_histograms(a * 255, a)


def test_cosine_to_source():
    e = np.random.default_rng(0).standard_normal((6, 5))
    assert np.allclose(cosine_to_source(e, 3 * e).values, 1.0)
    orth = cosine_to_source(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]]))
    assert orth.values[0] == pytest.approx(0.0) and orth.metrics()["cosine_to_source_min"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="pair up"):
        cosine_to_source(e, e[:3])


def test_bad_inputs_name_the_problem():
    r = np.zeros((4, 3))
    with pytest.raises(ValueError, match="features per row"):
        silhouette(r, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        pca_projection(np.full((4, 3), np.nan), r)
    with pytest.raises(ValueError, match="both real_labels and synthetic_labels"):
        silhouette(r, r, real_labels=np.zeros((4, 14)))
    with pytest.raises(ValueError, match="n_components"):
        pca_projection(r, r, 4)
