"""The batched torch Demons: known answers on synthetic deformations, options, kernels."""

import pytest
import torch

from augment.registration.demons import DemonsParams, demons_torch, exp_steps
from augment.registration.smoothing import gaussian_kernel1d, pyramid_shapes, upsample_field
from augment.registration.warp import folded_fraction


def _mean_error(field, true):
    return (field - true).pow(2).sum(dim=1).sqrt().mean().item()


@pytest.mark.parametrize("variant", ["symmetric", "diffeomorphic"])
@pytest.mark.parametrize("levels", [1, 2])
def test_recovers_known_smooth_deformation(known_deformation, variant, levels):
    fixed, moving, true = known_deformation
    p = DemonsParams(variant=variant, iterations=50, levels=levels, sigma_field=2.0, max_step=1.0)
    out = demons_torch(fixed, moving, p)
    assert out.field.shape == (2, 2, 128, 128)
    assert out.iterations.tolist() == [50 * levels] * 2
    assert _mean_error(out.field, true) < 0.5
    assert folded_fraction(out.field).max().item() == 0.0


def test_identical_images_give_zero_field(texture):
    out = demons_torch(texture, texture, DemonsParams(iterations=20, levels=1))
    assert out.field.abs().max().item() < 1e-6


def test_chunking_does_not_change_the_result(known_deformation):
    fixed, moving, _ = known_deformation
    p = DemonsParams(iterations=20, levels=2)
    one = demons_torch(fixed, moving, p, chunk_size=1)
    both = demons_torch(fixed, moving, p, chunk_size=2)
    assert torch.allclose(one.field, both.field, atol=1e-4)


def test_tolerance_stops_each_pair_early(known_deformation):
    fixed, moving, true = known_deformation
    # the raw force settles near 0.08 px on this pair; 0.09 stops after about 20 iterations
    p = DemonsParams(iterations=300, levels=1, sigma_field=2.0, max_step=1.0, tolerance=0.09)
    out = demons_torch(fixed, moving, p)
    assert (out.iterations < 100).all() and (out.iterations > 5).all()
    assert (out.rms_change < 0.09).all()
    assert _mean_error(out.field, true) < 0.5
    # a pair that stops keeps its field while the other goes on
    mixed = demons_torch(torch.cat([fixed[:1], moving[:1]]), torch.cat([moving[:1], moving[:1]]), p)
    assert mixed.iterations[1] < mixed.iterations[0]


def test_update_smoothing_and_step_bound(known_deformation):
    fixed, moving, true = known_deformation
    one_step = demons_torch(fixed, moving, DemonsParams(iterations=1, levels=1, sigma_field=0.0, max_step=0.3))
    assert one_step.field.pow(2).sum(dim=1).sqrt().max().item() <= 0.3 + 1e-4  # |du| <= max_step / alpha
    halved = demons_torch(fixed, moving, DemonsParams(iterations=1, levels=1, sigma_field=0.0, max_step=0.3, alpha=2.0))
    assert halved.field.pow(2).sum(dim=1).sqrt().max().item() <= 0.15 + 1e-4
    smoothed = demons_torch(fixed, moving, DemonsParams(iterations=60, levels=1, sigma_field=1.0, sigma_update=1.0))
    assert _mean_error(smoothed.field, true) < 0.5


def test_itk_kernel_matches_simpleitk():
    sitk = pytest.importorskip("SimpleITK")
    import numpy as np

    for sigma in (1.0, 1.5, 3.0):
        k = gaussian_kernel1d(sigma)
        assert k.sum().item() == pytest.approx(1.0, abs=1e-6) and torch.equal(k, k.flip(0))
        delta = np.zeros((41, 41), np.float32)
        delta[20, 20] = 1
        img = sitk.DiscreteGaussian(sitk.GetImageFromArray(delta), sigma * sigma, 30, 0.1, False)
        row = torch.from_numpy(sitk.GetArrayFromImage(img))[20]
        r = k.numel() // 2
        expected = torch.zeros(41)
        expected[20 - r : 21 + r] = k * k[r]
        assert torch.allclose(row, expected, atol=2e-4), sigma
    assert gaussian_kernel1d(1.5).numel() == 5
    assert gaussian_kernel1d(0.0).tolist() == [1.0]


@pytest.mark.parametrize("norm, steps", [(0.0, 0), (0.2, 0), (0.3, 1), (1.0, 3), (2.0, 4), (1e9, 20)])
def test_exp_steps_follow_itk(norm, steps):
    assert exp_steps(norm) == steps


def test_pyramid_geometry():
    assert pyramid_shapes(256, 256, 3) == [(256, 256), (128, 128), (64, 64)]
    assert pyramid_shapes(40, 40, 4) == [(40, 40), (20, 20)]
    assert pyramid_shapes(64, 48, 1) == [(64, 48)]
    up = upsample_field(torch.ones(1, 2, 16, 32), (32, 64))
    assert up.shape == (1, 2, 32, 64) and torch.allclose(up, torch.full_like(up, 2.0))


@pytest.mark.parametrize("variant", ["symmetric", "diffeomorphic"])
def test_real_pairs_get_closer(real_pairs, variant):
    fixed, moving = real_pairs[128]
    out = demons_torch(fixed, moving, DemonsParams(variant=variant, iterations=50, levels=2))
    from augment.registration.warp import mse, warp_image

    assert (mse(fixed, warp_image(moving, out.field)) < mse(fixed, moving)).all()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"variant": "elastic"}, "variant"),
        ({"iterations": 0}, "iterations"),
        ({"max_step": 0.0}, "max_step"),
        ({"alpha": -1.0}, "alpha"),
        ({"sigma_field": -0.5}, "sigma_field"),
        ({"tolerance": float("nan")}, "tolerance"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, words):
    with pytest.raises(ValueError, match=words):
        DemonsParams(**kwargs)
