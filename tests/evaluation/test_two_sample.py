"""Classifier two-sample test: chance on identical distributions, near 1 on an obvious difference."""

import pytest
import torch

from augment.evaluation.two_sample import crops_around_masks, two_sample_test, two_sample_test_crops

torch.set_num_threads(1)


def _images(n, square, seed, size=64):
    g = torch.Generator().manual_seed(seed)
    x = 0.35 + 0.2 * torch.rand(n, 1, size, size, generator=g)
    if square:
        x[:, :, 20:36, 24:40] = 0.95
    return x


def test_identical_distributions_give_an_interval_around_chance():
    r = two_sample_test(_images(80, False, 0), _images(80, False, 1), seed=0)
    assert r.auc is not None and r.contains_chance, r
    assert r.n_real == r.n_synthetic == 80 and r.n_test == 48 and r.n_train == 112
    assert set(r.metrics()) == {"two_sample_image_auc", "two_sample_image_auc_low", "two_sample_image_auc_high", "two_sample_image_n_test"}


def test_a_bright_square_is_found():
    r = two_sample_test(_images(80, False, 2), _images(80, True, 3), seed=0)
    assert r.auc > 0.9 and r.low > 0.5 and not r.contains_chance


def test_crops_around_masks_find_the_painted_region():
    real, syn = _images(60, False, 4), _images(60, True, 5)
    masks = torch.zeros_like(syn)
    masks[:, :, 22:34, 26:38] = 1.0
    crops = crops_around_masks(syn, masks, size=24)
    assert crops.shape == (60, 1, 24, 24)
    r = two_sample_test_crops(real, syn, masks, crop_size=24, seed=0)
    assert r.region == "crop" and r.auc > 0.9
    assert "two_sample_crop_auc" in r.metrics()


def test_too_few_images_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 images of each set"):
        two_sample_test(_images(1, False, 0), _images(5, True, 0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        two_sample_test(_images(5, False, 0) * 255, _images(5, True, 0))
