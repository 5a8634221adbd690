"""Carrying a reference's lesion: its position from the field, its shape kept."""

from __future__ import annotations

import torch

from augment.config import RegistrationConfig
from augment.registration.lesion import carry_lesion, lesion_contrast
from augment.registration.transfer import RegionTransfer, transfer_region


def _disc(cy: int, cx: int, r: float, s: int = 64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    return ((((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt()) < r).float()[None, None]


def _transfer(mask: torch.Tensor) -> RegionTransfer:
    """A transfer whose carried region is ``mask`` (stretched on purpose), the whole image as body."""
    return RegionTransfer(mask=mask > 0.5, map=mask, body=torch.ones_like(mask, dtype=torch.bool),
                          outside_fraction=torch.zeros(mask.shape[0]), registration=None)


def test_lesion_moves_to_the_carried_centroid_with_its_own_shape():
    healthy = torch.full((1, 1, 64, 64), 0.3)
    lesion = _disc(20, 20, 6)
    reference = (0.3 + 0.4 * lesion).clamp(0, 1)
    stretched = torch.zeros(1, 1, 64, 64)
    stretched[:, :, 36:44, 26:54] = 1  # the field smeared it: a 8 x 28 bar centred at (39.5, 39.5)
    out = carry_lesion(healthy, reference, lesion, _transfer(stretched), margin=3)
    assert torch.allclose(out.shift[0], torch.tensor([19.5, 19.5]), atol=0.01)
    # shape kept: the moved lesion has the disc's area, not the bar's
    assert abs(int(out.lesion.sum()) - int(lesion.sum())) <= 4
    assert abs(int(out.lesion.sum()) - int(stretched.sum())) > 50
    # the lesion's contrast is added inside the region; outside it the image is untouched
    assert float(out.base[0, 0, 39, 39]) > 0.6
    assert torch.equal(out.base[~out.region], healthy[~out.region])
    assert bool((out.region | ~out.lesion).all())  # the region holds the lesion
    assert int(out.region.sum()) > int(out.lesion.sum())  # and a margin around it


def test_empty_carried_region_gives_an_empty_lesion():
    healthy = torch.full((1, 1, 32, 32), 0.3)
    lesion = _disc(10, 10, 4, 32)
    out = carry_lesion(healthy, healthy + 0.2 * lesion, lesion, _transfer(torch.zeros(1, 1, 32, 32)))
    assert not bool(out.region.any()) and torch.equal(out.base, healthy)


def test_contrast_is_zero_away_from_the_lesion():
    g = torch.Generator().manual_seed(0)
    ref = 0.3 + 0.05 * torch.rand(1, 1, 64, 64, generator=g)
    lesion = _disc(32, 32, 5)
    c = lesion_contrast((ref + 0.3 * lesion).clamp(0, 1), lesion)
    far = _disc(32, 32, 12) < 0.5
    assert float(c[far].abs().max()) == 0.0
    assert float(c[lesion > 0.5].mean()) > 0.2


def test_with_a_real_registration():
    healthy = (0.2 + 0.5 * _disc(32, 32, 26)).clamp(0, 1)  # a round "body"
    lesion = _disc(26, 40, 4)
    reference = (0.2 + 0.5 * _disc(30, 30, 24) + 0.25 * lesion).clamp(0, 1)
    cfg = RegistrationConfig(iterations=10, pyramid_levels=1)
    tr = transfer_region(healthy, reference, lesion, cfg)
    out = carry_lesion(healthy, reference, lesion, tr, margin=2)
    assert bool(out.lesion.any())
    assert abs(int(out.lesion.sum()) - int(lesion.sum())) <= 6
    assert bool((out.region <= tr.body).all())
