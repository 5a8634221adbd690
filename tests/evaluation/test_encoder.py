"""The gate-independent encoder: it learns to reconstruct, and its features separate what differs."""

import pytest
import torch

from augment.evaluation.distance import fid, kid
from augment.evaluation.encoder import Autoencoder, fit_encoder

torch.set_num_threads(1)


def _chests(n, seed, square=False, size=32):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    lungs = ((xx.abs() - 0.45) ** 2 / 0.08 + yy**2 / 0.5 < 1).float()
    x = 0.7 - 0.4 * lungs + 0.05 * torch.rand(n, 1, size, size, generator=g)
    x = x * (0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g))
    if square:
        x[:, :, 10:18, 6:14] = 0.95
    return x.clamp(0, 1)


def test_the_encoder_learns_to_reconstruct_and_is_reproducible():
    imgs = _chests(48, 0)
    enc = fit_encoder(imgs, size=32, dim=16, epochs=25, seed=0)
    assert enc.losses[-1] < 0.3 * enc.losses[0], enc.losses
    assert enc.n_train == 48 and enc(imgs).shape == (48, 16)
    again = fit_encoder(imgs, size=32, dim=16, epochs=25, seed=0)
    assert torch.allclose(torch.from_numpy(enc(imgs)), torch.from_numpy(again(imgs)), atol=1e-5)


def test_its_features_tell_a_painted_square_from_real_and_not_real_from_real():
    enc = fit_encoder(_chests(64, 1), size=32, dim=16, epochs=25, seed=0)
    real_a, real_b, painted = enc(_chests(60, 2)), enc(_chests(60, 3)), enc(_chests(60, 4, square=True))
    same, diff = kid(real_a, real_b, subset_size=50, n_subsets=30), kid(real_a, painted, subset_size=50, n_subsets=30)
    assert diff.kid > 10 * max(same.kid, 0.01), (same, diff)
    assert fid(real_a, painted, n_boot=0).fid > 3 * fid(real_a, real_b, n_boot=0).fid


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of 16"):
        Autoencoder(size=40)
    with pytest.raises(ValueError, match="at least 4 real training images"):
        fit_encoder(_chests(2, 0))
