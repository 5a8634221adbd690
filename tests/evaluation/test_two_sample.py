"""Classifier two-sample test: known answers, and the source-leak artefact the grouping removes."""

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


def _textured(n, seed, size=32):
    """Each image its own smooth texture: a discriminator can memorise individual images."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (0.25 + 0.5 * x + 0.03 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)


def test_identical_distributions_give_an_interval_around_chance():
    r = two_sample_test(_images(80, False, 0), _images(80, False, 1), seed=0)
    assert r.auc is not None and r.contains_chance, r
    assert r.n_real == r.n_synthetic == 80 and r.n_test == 160 and r.n_train == 128
    assert r.folds == 5 and r.repeats == 3 and len(r.auc_repeats) == 3 and not r.grouped
    assert set(r.metrics()) == {"two_sample_image_auc", "two_sample_image_auc_low", "two_sample_image_auc_high",
                                "two_sample_image_n_test", "two_sample_image_auc_std"}


def test_a_bright_square_is_found():
    r = two_sample_test(_images(80, False, 2), _images(80, True, 3), seed=0)
    assert r.auc > 0.9 and r.low > 0.5 and not r.contains_chance


def test_exact_copies_of_the_real_images_are_chance_once_grouped_by_source():
    """Synthetic = the real images themselves. Truth: indistinguishable, AUC 0.5.

    Without groups a source trains as "real" and its copy is scored as "synthetic": the
    discriminator calls it real and the AUC falls well below 0.5 (the artefact that made
    generators look indistinguishable). Grouped by source, both land in the same test fold,
    get the same score, and the AUC is exactly 0.5.
    """
    real = _textured(60, 0)
    ids = [f"p{i}" for i in range(60)]
    leaky = two_sample_test(real, real.clone(), image_size=None, repeats=2, epochs=15, seed=0)
    grouped = two_sample_test(real, real.clone(), image_size=None, repeats=2, epochs=15, seed=0,
                              groups_real=ids, groups_synthetic=ids)
    assert leaky.auc < 0.4, leaky
    assert grouped.grouped and grouped.n_groups == 60
    assert grouped.auc == pytest.approx(0.5, abs=0.01) and grouped.contains_chance  # ties up to float noise


def test_a_painted_square_is_found_even_when_the_sources_are_in_the_real_set():
    real = _textured(60, 1)
    painted = real.clone()
    painted[:, :, 10:18, 12:20] = 0.9
    ids = [f"p{i}" for i in range(60)]
    r = two_sample_test(real, painted, image_size=None, repeats=2, seed=0, groups_real=ids, groups_synthetic=ids)
    assert r.auc > 0.9 and r.low > 0.5


def test_the_interval_is_over_groups_and_the_spread_over_repeats_is_reported():
    """Ten near-identical images per patient: the interval must reflect 12 patients, not 120 images."""
    g = torch.Generator().manual_seed(5)
    base = _textured(12, 5)
    per_patient = base.repeat_interleave(10, 0) + 0.01 * torch.rand(120, 1, 32, 32, generator=g)
    real_ids = [f"r{i // 10}" for i in range(120)]
    syn = _textured(12, 6).repeat_interleave(10, 0)
    syn_ids = [f"s{i // 10}" for i in range(120)]
    grouped = two_sample_test(per_patient.clamp(0, 1), syn, image_size=None, folds=4, repeats=2, seed=0,
                              groups_real=real_ids, groups_synthetic=syn_ids)
    assert grouped.n_groups == 24 and len(grouped.auc_repeats) == 2 and grouped.auc_std is not None
    # with 12 independent patients a side, the AUC interval is wide; a chance-level truth stays inside it
    assert grouped.high - grouped.low > 0.25, grouped


def test_crops_around_masks_find_the_painted_region():
    real, syn = _images(60, False, 4), _images(60, True, 5)
    masks = torch.zeros_like(syn)
    masks[:, :, 22:34, 26:38] = 1.0
    crops = crops_around_masks(syn, masks, size=24)
    assert crops.shape == (60, 1, 24, 24)
    r = two_sample_test_crops(real, syn, masks, crop_size=24, seed=0, repeats=1)
    assert r.region == "crop" and r.auc > 0.9
    assert "two_sample_crop_auc" in r.metrics()


def test_too_few_images_or_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 5 groups"):
        two_sample_test(_images(1, False, 0), _images(5, True, 0))
    with pytest.raises(ValueError, match="at least 3 groups"):
        two_sample_test(_images(8, False, 0), _images(8, True, 0), folds=3, groups_real=["a", "b"] * 4)
    with pytest.raises(ValueError, match=r"groups for the synthetic images: 2 given for 8"):
        two_sample_test(_images(8, False, 0), _images(8, True, 0), groups_synthetic=["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        two_sample_test(_images(5, False, 0) * 255, _images(5, True, 0))
