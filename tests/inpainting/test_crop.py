"""Crop boxes, coordinate maps and paste-back on hand-made masks."""

import pytest
import torch

from augment.inpainting.crop import CropBox, coord_maps, crop, crop_mask, full_boxes, mask_boxes, paste


def test_small_mask_gets_a_crop_size_box_around_it():
    mask = torch.zeros(1, 1, 256, 256)
    mask[:, :, 100:110, 50:60] = 1
    (box,) = mask_boxes(mask, crop_size=64, context=0.5)
    assert box.size == 64
    assert box.top <= 100 and box.top + box.size >= 110
    assert box.left <= 50 and box.left + box.size >= 60


def test_large_mask_box_grows_and_stays_inside_the_image():
    mask = torch.zeros(2, 1, 128, 128)
    mask[0, :, 0:80, 90:128] = 1  # touches the corner
    (b0, b1) = mask_boxes(mask, crop_size=32, context=0.5)
    assert b0.size == 128 and (b0.top, b0.left) == (0, 0)  # 80 * 2 > 128: the whole image
    assert b1 == CropBox(0, 0, 128)  # empty mask: whole image


def test_jitter_keeps_mask_inside_box():
    mask = torch.zeros(4, 1, 64, 64)
    mask[:, :, 30:40, 5:12] = 1
    jitter = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
    for b in mask_boxes(mask, 16, 0.5, jitter=jitter):
        assert b.top <= 30 and b.top + b.size >= 40 and b.left <= 5 and b.left + b.size >= 12
        assert 0 <= b.top and b.top + b.size <= 64 and 0 <= b.left and b.left + b.size <= 64


def test_coord_maps_span_the_box():
    c = coord_maps([CropBox(0, 0, 64), CropBox(32, 0, 32)], 64, 64, 4)
    assert c.shape == (2, 2, 4, 4)
    torch.testing.assert_close(c[0, 0, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # pixel centres
    torch.testing.assert_close(c[0, 1, 0, :], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    torch.testing.assert_close(c[1, 0, :, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))  # lower half
    torch.testing.assert_close(c[1, 1, 0, :], torch.tensor([-0.875, -0.625, -0.375, -0.125]))  # left half


def test_crop_mask_is_conservative_when_resampled():
    mask = torch.zeros(1, 1, 64, 64)
    mask[:, :, 10, 10] = 1  # one pixel
    m = crop_mask(mask, [CropBox(0, 0, 64)], 16)
    assert m[0, 0, 2, 2] == 1 and m.sum() == 9  # its crop pixel, dilated by one for the paste's kernel
    assert torch.equal(crop_mask(mask, [CropBox(0, 0, 64)], 64), mask)  # no resampling: exact


def test_paste_changes_only_masked_pixels():
    img = torch.rand(2, 1, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:12, 8:20] = 1
    boxes = mask_boxes(mask, 16, 0.5)
    out = paste(img, torch.zeros(2, 1, 16, 16), boxes, mask)
    assert torch.equal(out[mask == 0], img[mask == 0])
    assert torch.all(out[mask == 1] == 0)
    assert crop(img, boxes, 16).shape == (2, 1, 16, 16)


def test_full_region_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        full_boxes((1, 1, 32, 48))
