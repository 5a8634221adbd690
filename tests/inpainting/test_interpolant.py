"""The interpolant against its closed form: endpoints, derivative, loss weighting."""

import pytest
import torch

from augment.inpainting.interpolant import base_point, gamma_schedule, interpolate, masked_mse, sample_path


def _pair(b=3, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(b, 1, s, s, generator=g) * 2 - 1
    mask = torch.zeros(b, 1, s, s)
    mask[:, :, 2:5, 3:7] = 1
    noise = torch.randn(b, 1, s, s, generator=g)
    return x1, mask, noise, g


def test_base_point_is_target_outside_and_noise_inside():
    x1, mask, noise, _ = _pair()
    x0 = base_point(x1, mask, noise)
    assert torch.equal(x0[mask == 0], x1[mask == 0])
    assert torch.equal(x0[mask == 1], noise[mask == 1])


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_endpoints_hit_x0_at_t0_and_x1_at_t1(gamma):
    x1, mask, noise, g = _pair()
    x0 = base_point(x1, mask, noise)
    z = torch.randn(x1.shape, generator=g)
    b = x1.shape[0]
    at0 = interpolate(x0, x1, torch.zeros(b), mask, gamma=gamma, z=z)
    at1 = interpolate(x0, x1, torch.ones(b), mask, gamma=gamma, z=z)
    torch.testing.assert_close(at0.xt, x0, rtol=0, atol=1e-7)
    torch.testing.assert_close(at1.xt, x1, rtol=0, atol=1e-7)


def test_derivative_matches_finite_difference_and_is_zero_outside():
    x1, mask, noise, g = _pair()
    x0 = base_point(x1, mask, noise)
    z = torch.randn(x1.shape, generator=g)
    t = torch.tensor([0.2, 0.5, 0.8])
    h = 1e-3
    p = interpolate(x0.double(), x1.double(), t.double(), mask, gamma=0.7, z=z.double())
    hi = interpolate(x0.double(), x1.double(), (t + h).double(), mask, gamma=0.7, z=z.double()).xt
    lo = interpolate(x0.double(), x1.double(), (t - h).double(), mask, gamma=0.7, z=z.double()).xt
    torch.testing.assert_close(p.dxt, (hi - lo) / (2 * h), rtol=1e-4, atol=1e-5)
    assert torch.all(p.dxt[mask.expand_as(p.dxt) == 0] == 0)
    assert torch.equal(p.xt[mask.expand_as(p.xt) == 0], x1.double()[mask.expand_as(p.xt) == 0])


def test_gamma_schedule_closed_form():
    t = torch.tensor([0.25])
    g, dg = gamma_schedule(t, 2.0)
    torch.testing.assert_close(g, torch.tensor([2.0 * (0.25 * 0.75) ** 0.5]))
    torch.testing.assert_close(dg, torch.tensor([2.0 * 0.5 / (2 * (0.25 * 0.75) ** 0.5)]))


def test_sample_path_is_reproducible_and_times_inside_open_interval():
    x1, mask, _, _ = _pair()
    a = sample_path(x1, mask, 0.3, torch.Generator().manual_seed(5))
    b = sample_path(x1, mask, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a.xt, b.xt) and torch.equal(a.t, b.t)
    assert ((a.t > 0) & (a.t < 1)).all()


def test_masked_mse_weights_inside_the_mask():
    target = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    pred_in = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    pred_out = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    # weights 10, 1, 1, 1 -> sum 13
    assert masked_mse(pred_in, target, mask, 10.0).item() == pytest.approx(10 / 13)
    assert masked_mse(pred_out, target, mask, 10.0).item() == pytest.approx(1 / 13)


def test_bad_shapes_name_the_problem():
    x1, mask, noise, _ = _pair()
    with pytest.raises(ValueError, match="mask must have shape"):
        base_point(x1, mask[:, :, :4], noise)
    with pytest.raises(ValueError, match="latent noise z"):
        interpolate(x1, x1, torch.zeros(3), mask, gamma=1.0)
    with pytest.raises(ValueError, match=r"t must have shape"):
        interpolate(x1, x1, torch.zeros(2), mask)
