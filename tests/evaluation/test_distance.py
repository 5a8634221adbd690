"""FID (known answers, bootstrap interval), feature extractors and MS-SSIM."""

import numpy as np
import pytest
import torch

from augment.evaluation.distance import (
    MS_SSIM_WEIGHTS,
    ClassifierFeatures,
    XRVFeatures,
    fid,
    kid,
    frechet_distance,
    mean_pairwise_ms_ssim,
    ms_ssim,
)

torch.set_num_threads(1)


def _gauss(x):
    return x.mean(0), np.cov(x, rowvar=False)


def test_identical_sets_give_zero_fid():
    x = np.random.default_rng(0).standard_normal((300, 16)) * 3.0
    scale = float(np.trace(np.cov(x, rowvar=False)))
    assert fid(x, x.copy(), n_boot=0).fid < 1e-3 * scale
    assert frechet_distance(*_gauss(x), *_gauss(x)) < 1e-3 * scale


def test_fid_of_shifted_gaussians_is_the_squared_shift():
    rng = np.random.default_rng(1)
    mu = np.array([1.0, 2.0, 0.0, -1.0])
    r = fid(rng.standard_normal((20000, 4)), rng.standard_normal((20000, 4)) + mu, n_boot=0)
    assert r.fid == pytest.approx(float(mu @ mu), abs=0.1)
    assert (r.n_real, r.n_synthetic, r.feature_dim, r.low) == (20000, 20000, 4, None)


def test_nuclear_norm_route_matches_the_sqrtm_formula():
    rng = np.random.default_rng(2)
    for n1, n2, d in ((200, 150, 10), (30, 25, 60)):  # more samples than dims, and fewer
        x = rng.standard_normal((n1, d))
        y = rng.standard_normal((n2, d)) @ rng.standard_normal((d, d)) * 0.5 + 0.3
        assert fid(x, y, n_boot=0).fid == pytest.approx(frechet_distance(*_gauss(x), *_gauss(y)), rel=1e-5)


def test_frechet_distance_handles_singular_covariances():
    s = np.diag([1.0, 0.0, 0.0])
    v = frechet_distance(np.zeros(3), s, np.ones(3), np.diag([0.0, 1.0, 0.0]))
    assert np.isfinite(v) and v == pytest.approx(3.0 + 2.0, abs=1e-4)
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


def test_separated_sets_have_large_fid_with_an_interval_around_it():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((200, 8)), rng.standard_normal((200, 8)) + 5.0
    r = fid(x, y, n_boot=100, seed=0, features="pixels")
    assert r.fid > 150
    assert r.low <= r.fid <= r.high and r.high - r.low < 0.5 * r.fid
    assert r.metrics()["fid_pixels"] == r.fid and r.metrics()["fid_pixels_n_real"] == 200
    assert fid(x, y, n_boot=100, seed=0) == fid(x, y, n_boot=100, seed=0)  # seeded
    with pytest.raises(ValueError, match="same extractor"):
        fid(x, y[:, :4])


def test_ms_ssim_known_answers():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 64, 64, generator=g)
    b = torch.rand(3, 1, 64, 64, generator=g)
    assert torch.allclose(ms_ssim(a, a), torch.ones(3), atol=1e-5)
    assert (ms_ssim(a, b) < 0.3).all()
    assert torch.allclose(ms_ssim(a, b), ms_ssim(b, a), atol=1e-6)
    smooth = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 1, 64, 64)
    assert ms_ssim(smooth, smooth * 0.95 + 0.02).item() > 0.95
    # five scales on images large enough, the standard weights
    big = torch.rand(1, 1, 176, 176, generator=g)
    other = (big + 0.1 * torch.rand(1, 1, 176, 176, generator=g)).clamp(0, 1)
    assert torch.allclose(ms_ssim(big, other), ms_ssim(big, other, weights=MS_SSIM_WEIGHTS))
    # tiny images still work (fewer scales, smaller window)
    assert ms_ssim(a[:, :, :8, :8], a[:, :, :8, :8]).allclose(torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="fewer weights"):
        ms_ssim(a, b, weights=MS_SSIM_WEIGHTS)


def test_mean_pairwise_ms_ssim():
    g = torch.Generator().manual_seed(0)
    same = torch.rand(1, 1, 32, 32, generator=g).expand(5, 1, 32, 32).contiguous()
    d = mean_pairwise_ms_ssim(same)
    assert d.mean == pytest.approx(1.0, abs=1e-5) and d.n_pairs == 10 and d.n_images == 5
    noise = mean_pairwise_ms_ssim(torch.rand(20, 1, 32, 32, generator=g), max_pairs=15)
    assert noise.n_pairs == 15 and noise.mean < 0.3
    assert mean_pairwise_ms_ssim(same[:1]).mean is None


def test_feature_extractors(tmp_path):
    from augment.classifier import build_classifier
    from augment.config import ClassifierConfig

    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch="efficientnet-b0", image_size=32)).eval()
    f = ClassifierFeatures(model)(torch.rand(3, 1, 48, 48))  # resized to the model's 32
    assert f.shape == (3, model.num_features) and np.isfinite(f).all()
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        XRVFeatures("densenet121-res224-nih", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="neither"):
        XRVFeatures(tmp_path / "weights.pt")


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel():
    """Known answers: the estimator equals a hand-written double sum; ~0 for one distribution."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same = kid(a, b, subset_size=100, n_subsets=50)
    assert abs(same.kid) < 3 * same.std / np.sqrt(50) + 0.02, same
    shifted = kid(a, b + 1.0, subset_size=100, n_subsets=50)
    assert shifted.kid > 0.5 and shifted.kid > 10 * shifted.std / np.sqrt(50), shifted
    # one subset holding every row is the textbook statistic, computed here term by term
    x, y = a[:20], b[:20] + 0.5
    mu, sd = x.mean(0), x.std(0) + 1e-8
    xs, ys = (x - mu) / sd, (y - mu) / sd
    k = lambda u, v: (u @ v / 8 + 1) ** 3  # noqa: E731
    m = 20
    xx = sum(k(xs[i], xs[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(ys[i], ys[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(xs[i], ys[j]) for i in range(m) for j in range(m)) / (m * m)
    r = kid(x, y, subset_size=20, n_subsets=1)
    assert r.kid == pytest.approx(xx + yy - 2 * xy) and r.subset_size == 20 and r.std == 0.0
    assert set(r.metrics("p_")) == {"p_kid_features", "p_kid_features_std", "p_kid_features_subset_size"}


def test_kid_is_unbiased_at_small_n_where_fid_is_not():
    """Same distribution, 30 rows a side: FID is far above 0, KID is not."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 16)), rng.normal(size=(30, 16))
    assert fid(a, b, n_boot=0).fid > 3.0
    r = kid(a, b, subset_size=30, n_subsets=20)
    assert abs(r.kid) < 0.15, r
    with pytest.raises(ValueError, match="same extractor"):
        kid(a, b[:, :3])
