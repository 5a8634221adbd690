"""to_mask and the shared input checks of every attention source."""

import pytest
import torch

from augment.attention import AttentionSource, mask_from_config, mask_iou, normalize_maps, pointing_hits, to_mask
from augment.config import AttentionConfig


def _ramp(h=10, w=10):
    # values 0.00 .. 0.99 row by row: pixel k has value k / 100
    return (torch.arange(h * w, dtype=torch.float32) / (h * w)).view(1, 1, h, w)


def test_threshold_keeps_pixels_at_or_above():
    m = to_mask(_ramp(), threshold=0.9, min_area=0.0, max_area=1.0)
    assert m.dtype == torch.bool and m.shape == (1, 1, 10, 10)
    assert int(m.sum()) == 10 and bool(m[0, 0, 9].all())


def test_max_area_keeps_the_strongest_pixels():
    m = to_mask(_ramp(), threshold=0.5, min_area=0.0, max_area=0.2)
    assert int(m.sum()) == 20
    assert bool(m[0, 0, 8:].all())


def test_small_regions_and_flat_plateaus_give_empty_masks():
    assert not to_mask(_ramp(), threshold=0.99, min_area=0.05).any()  # 1 pixel < 5 pixels
    plateau = torch.zeros(1, 1, 10, 10)
    plateau[..., :6, :] = 1.0  # 60% flat: cannot be narrowed to 25%
    assert not to_mask(plateau, 0.5, 0.0, 0.25).any()
    assert not to_mask(torch.zeros(2, 1, 4, 4), 0.5, 0.0, 1.0).any()


def test_mask_from_config_and_bad_arguments():
    cfg = AttentionConfig(threshold=0.9, min_area=0.0, max_area=1.0)
    assert int(mask_from_config(_ramp(), cfg).sum()) == 10
    with pytest.raises(ValueError, match="min_area"):
        to_mask(_ramp(), 0.5, min_area=0.5, max_area=0.1)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        to_mask(torch.zeros(10, 10))
    with pytest.raises(ValueError, match="max_area"):
        AttentionConfig(min_area=0.5, max_area=0.1)


def test_normalize_maps_scales_each_map_by_its_max():
    maps = torch.stack([torch.full((1, 2, 2), 4.0), torch.zeros(1, 2, 2)])
    maps[0, 0, 0, 0] = 8.0
    out = normalize_maps(maps)
    assert out[0].max() == 1.0 and out[0, 0, 1, 1] == 0.5
    assert (out[1] == 0).all()


class _Const(AttentionSource):
    name = "const"
    needs_ids = True

    def _maps(self, image, finding, image_ids):
        return torch.full_like(image, 2.0)


def test_finding_map_checks_inputs_and_clamps_output():
    src = _Const()
    x = torch.rand(2, 1, 8, 8)
    assert src.finding_map(x, "Mass", ["a", "b"]).max() == 1.0
    with pytest.raises(ValueError, match="unknown finding"):
        src.finding_map(x, "Tumour", ["a", "b"])
    with pytest.raises(ValueError, match="image_ids"):
        src.finding_map(x, "Mass")
    with pytest.raises(ValueError, match="2 images"):
        src.finding_map(x, "Mass", ["a"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        src.finding_map(x * 255, "Mass", ["a", "b"])


def test_iou_and_pointing_game():
    true = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    true[:, :, 2:6, 2:6] = True  # 16 pixels
    pred = torch.zeros_like(true)
    pred[0, :, 2:6, 2:4] = True  # 8 inside -> IoU 0.5
    pred[1, :, 0:2, 0:2] = True  # disjoint -> 0
    iou = mask_iou(pred, true)
    assert iou[0] == pytest.approx(0.5) and iou[1] == 0 and torch.isnan(mask_iou(pred[2:], pred[2:]))[0]
    maps = torch.zeros(3, 1, 8, 8)
    maps[0, 0, 3, 3] = 1.0  # inside
    maps[1, 0, 0, 0] = 1.0  # outside, 2 px from the box
    hits = pointing_hits(maps, true)
    assert hits.tolist() == [True, False, False]  # an all-zero map is a miss
    assert pointing_hits(maps, true, tolerance=2).tolist() == [True, True, False]
