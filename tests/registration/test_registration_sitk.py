"""The SimpleITK backend: field convention, parameters, and agreement with the torch backend."""

import numpy as np
import pytest
import torch

sitk = pytest.importorskip("SimpleITK")

from augment.registration.demons import DemonsParams, demons_torch  # noqa: E402
from augment.registration.sitk_backend import demons_sitk, field_from_sitk, field_to_sitk, make_filter  # noqa: E402
from augment.registration.warp import ncc, warp_image  # noqa: E402


def test_field_convention_matches_sitk_warp(known_deformation):
    """A torch field handed to SimpleITK warps the image exactly like warp_image (interior)."""
    _, moving, field = known_deformation
    img = sitk.GetImageFromArray(moving[0, 0].numpy())
    disp = field_to_sitk(field[0])
    assert disp.GetNumberOfComponentsPerPixel() == 2
    assert disp.GetPixel(5, 9) == pytest.approx((field[0, 0, 9, 5].item(), field[0, 1, 9, 5].item()))
    warped = sitk.GetArrayFromImage(sitk.Warp(img, disp, sitk.sitkLinear))
    ours = warp_image(moving[:1], field[:1])[0, 0].numpy()
    assert np.abs(warped[4:-4, 4:-4] - ours[4:-4, 4:-4]).max() < 1e-4
    assert torch.equal(field_from_sitk(disp), field[0])


def test_filter_gets_the_config_parameters():
    p = DemonsParams(variant="diffeomorphic", iterations=7, alpha=2.0, sigma_field=1.5, sigma_update=0.5, max_step=3.0, tolerance=0.0)
    f = make_filter(p)
    assert isinstance(f, sitk.DiffeomorphicDemonsRegistrationFilter)
    assert f.GetNumberOfIterations() == 7
    assert f.GetMaximumRMSError() == 0.0  # SimpleITK's 0.02 default would stop early
    assert f.GetMaximumUpdateStepLength() == pytest.approx(1.5)
    assert f.GetSmoothUpdateField() and f.GetUpdateFieldStandardDeviations()[0] == pytest.approx(0.5)
    assert f.GetStandardDeviations()[0] == pytest.approx(1.5)
    assert isinstance(make_filter(DemonsParams()), sitk.FastSymmetricForcesDemonsRegistrationFilter)


@pytest.mark.parametrize("variant", ["symmetric", "diffeomorphic"])
def test_sitk_recovers_known_deformation(known_deformation, variant):
    fixed, moving, true = known_deformation
    out = demons_sitk(fixed, moving, DemonsParams(variant=variant, iterations=50, levels=2, sigma_field=2.0, max_step=1.0))
    assert out.iterations.tolist() == [100, 100]
    assert (out.field - true).pow(2).sum(dim=1).sqrt().mean().item() < 0.5


def _agree(fixed, moving, p):
    a = demons_torch(fixed, moving, p)
    b = demons_sitk(fixed, moving, p)
    ncc_a = ncc(fixed, warp_image(moving, a.field))
    ncc_b = ncc(fixed, warp_image(moving, b.field))
    diff = (a.field - b.field).pow(2).sum(dim=1).sqrt().flatten(1)
    size = b.field.pow(2).sum(dim=1).flatten(1).mean(dim=1).sqrt()
    rel = diff.pow(2).mean(dim=1).sqrt() / size
    return ncc_a, ncc_b, diff.median(dim=1).values, rel


@pytest.mark.parametrize("variant", ["symmetric", "diffeomorphic"])
def test_backends_agree_on_real_pairs(real_pairs, variant):
    fixed, moving = real_pairs[128]
    ncc_a, ncc_b, median, rel = _agree(fixed[:4], moving[:4], DemonsParams(variant=variant, iterations=50, levels=2))
    assert (ncc_a - ncc_b).abs().max().item() < 0.02
    assert median.max().item() < 0.25  # pixels
    assert rel.max().item() < 0.3 and rel.mean().item() < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["symmetric", "diffeomorphic"])
def test_backends_agree_at_benchmark_settings(real_pairs, variant):
    fixed, moving = real_pairs[256]
    ncc_a, ncc_b, median, rel = _agree(fixed[:3], moving[:3], DemonsParams(variant=variant, iterations=100, levels=1))
    assert (ncc_a - ncc_b).abs().max().item() < 0.02
    assert median.max().item() < 0.25
    assert rel.max().item() < 0.3 and rel.mean().item() < 0.1
