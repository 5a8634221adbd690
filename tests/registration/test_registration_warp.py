"""Warping, Jacobians, similarity measures and the field convention, on hand-made cases."""

import pytest
import torch

from augment.registration.prealign import affine_field, compose_with_affine
from augment.registration.warp import (
    field_to_grid,
    folded_fraction,
    jacobian_determinant,
    mse,
    ncc,
    warp_image,
    warp_mask,
    warp_tensor,
)


def test_zero_field_is_identity(texture):
    zero = torch.zeros(2, 2, 64, 64)
    assert torch.allclose(warp_image(texture, zero), texture, atol=1e-6)
    mask = texture > 0.5
    assert torch.equal(warp_mask(mask, zero), mask)
    assert torch.equal(warp_mask(mask, zero, threshold=None), mask)
    grid = field_to_grid(zero)
    assert grid.shape == (2, 64, 64, 2)
    assert grid[0, 0, 0].tolist() == [-1.0, -1.0] and grid[0, -1, -1].tolist() == [1.0, 1.0]


def test_field_convention_integer_shift(texture):
    # field x = +3, y = -2: warped(y, x) = moving(y - 2, x + 3)
    field = torch.zeros(2, 2, 64, 64)
    field[:, 0] = 3.0
    field[:, 1] = -2.0
    out = warp_image(texture, field)
    assert torch.allclose(out[:, :, 2:, :-3], texture[:, :, :-2, 3:], atol=1e-5)


def test_outside_samples_take_the_edge_value():
    img = torch.linspace(0, 1, 16).repeat(16, 1)[None, None]
    field = torch.zeros(1, 2, 16, 16)
    field[:, 0] = -100.0
    assert torch.allclose(warp_tensor(img, field), torch.zeros_like(img))


@pytest.mark.parametrize(
    "ux, uy, expected",
    [
        (lambda x, y: 0 * x, lambda x, y: 0 * y, 1.0),  # identity
        (lambda x, y: 0.5 * x, lambda x, y: 0 * y, 1.5),  # stretch along x
        (lambda x, y: 0.2 * x, lambda x, y: 0.2 * y, 1.44),  # isotropic scaling 1.2
        (lambda x, y: -2.0 * x, lambda x, y: 0 * y, -1.0),  # mirrored: folded everywhere
    ],
)
def test_jacobian_of_linear_fields(ux, uy, expected):
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")
    field = torch.stack([ux(xx, yy), uy(xx, yy)])[None]
    det = jacobian_determinant(field)
    assert det.shape == (1, 1, 16, 20)
    assert torch.allclose(det, torch.full_like(det, expected), atol=1e-5)
    assert folded_fraction(field).item() == (1.0 if expected <= 0 else 0.0)


def test_similarity_measures_known_values(texture):
    a = texture
    assert torch.allclose(mse(a, a), torch.zeros(2))
    assert torch.allclose(mse(a, a + 0.1), torch.full((2,), 0.01), atol=1e-6)
    assert torch.allclose(ncc(a, 0.5 * a + 0.2), torch.ones(2), atol=1e-5)
    assert torch.allclose(ncc(a, 1 - a), -torch.ones(2), atol=1e-5)
    assert torch.equal(ncc(a, torch.full_like(a, 0.3)), torch.zeros(2))


def test_affine_field_and_composition():
    matrix = torch.tensor([[[1.0, 0.0, 4.0], [0.0, 1.0, -1.5]]])  # pure shift
    u = affine_field(matrix, 8, 10)
    assert torch.allclose(u[:, 0], torch.full((1, 8, 10), 4.0)) and torch.allclose(u[:, 1], torch.full((1, 8, 10), -1.5))
    # scaling by 2 about the origin composed with a constant field: A(p + f) - p
    scale = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    f = torch.ones(1, 2, 8, 10)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(10.0), indexing="ij")
    total = compose_with_affine(f, scale)
    assert torch.allclose(total[:, 0], 2 * (xx + 1) - xx) and torch.allclose(total[:, 1], 2 * (yy + 1) - yy)
