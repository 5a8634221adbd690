"""Training data: finding masks, random masks, batches, and the loop on a tiny phantom set."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from augment.config import InpaintingConfig, PhantomConfig
from augment.data.nih import load_index
from augment.findings import FINDINGS
from augment.inpainting.model import build_model, make_ema
from augment.inpainting.train import (
    build_training_set,
    fit_generator,
    preview_inputs,
    random_masks,
    sample_batch,
)

TINY = dict(crop_size=16, block_out_channels=[8, 16], layers_per_block=1, mid_attention=False, bf16=False, batch_size=6)


def test_random_masks_are_blobs_and_boxes_of_sensible_size():
    m = random_masks(40, 32, torch.Generator().manual_seed(0))
    assert m.dtype == torch.bool and m.shape == (40, 1, 32, 32)
    area = m.float().mean((1, 2, 3))
    assert (area > 0).all() and float(area.max()) < 0.5 and 0.01 < float(area.mean()) < 0.2
    assert torch.equal(m, random_masks(40, 32, torch.Generator().manual_seed(0)))


@pytest.fixture
def folder(make_nih_folder):
    rows = [
        ("00000001_000.png", "No Finding", 1),
        ("00000002_000.png", "Nodule", 2),
        ("00000003_000.png", "Mass|Nodule", 3),
        ("00000004_000.png", "No Finding", 4),
        ("00000005_000.png", "Hernia", 5),
    ]
    return load_index(make_nih_folder(rows, size=32))


def box_mask_fn(rec, image, finding):
    """Nodule: top-left box; Mass: overlapping box; anything else: no mask."""
    m = np.zeros((32, 32), dtype=np.float32)
    if finding == "Nodule":
        m[4:10, 4:10] = 1
    elif finding == "Mass":
        m[8:16, 8:16] = 1
    else:
        return None
    return m


def test_training_set_collects_finding_masks_with_overlapping_labels(folder):
    ts = build_training_set(folder, 32, mask_fn=box_mask_fn)
    assert ts.images.shape == (5, 1, 32, 32) and ts.labels.shape == (5, 14)
    assert ts.healthy_rows.tolist() == [0, 3]
    assert ts.masks.shape == (3, 1, 32, 32)  # Nodule on 2 images, Mass on 1; Hernia has no mask
    names = [tuple(FINDINGS[j] for j in torch.nonzero(c).flatten()) for c in ts.mask_findings]
    assert sorted(names) == [("Mass", "Nodule"), ("Mass", "Nodule"), ("Nodule",)]
    assert ts.summary()["masks"] == 3


def test_batches_crop_around_masks_and_drop_labels(folder):
    ts = build_training_set(folder, 32, mask_fn=box_mask_fn)
    cfg = InpaintingConfig(**{**TINY, "label_dropout": 0.5, "finding_fraction": 0.5, "batch_size": 64})
    b = sample_batch(ts, cfg, torch.Generator().manual_seed(0))
    assert b.x1.shape == (64, 1, 16, 16) and b.cond.coords.shape == (64, 2, 16, 16)
    assert (b.cond.mask.flatten(1).sum(1) > 0).all()
    assert float(b.x1.min()) >= -1 and float(b.x1.max()) <= 1
    assert torch.equal(b.cond.known, b.x1 * (1 - b.cond.mask))
    n_find = int((b.cond.findings.sum(1) > 0).sum())
    assert 16 < n_find < 48
    assert 16 < int(b.cond.null.sum()) < 48


def test_without_masks_only_healthy_examples(folder):
    ts = build_training_set(folder, 32, mask_fn=lambda r, i, f: None)
    assert ts.masks.shape[0] == 0
    b = sample_batch(ts, InpaintingConfig(**TINY), torch.Generator().manual_seed(0))
    assert b.cond.findings.sum() == 0
    imgs, masks, f = preview_inputs(ts, 3, torch.Generator().manual_seed(0))
    assert imgs.shape == masks.shape == (3, 1, 32, 32) and f.sum() == 0


def test_fit_generator_on_phantom_ground_truth(tmp_path):
    from augment.data.phantom import generate_phantom

    root = generate_phantom(PhantomConfig(n_images=10, image_size=64, seed=1, healthy_fraction=0.3), tmp_path / "ph", progress=False)
    index = load_index(root)
    ts = build_training_set(index, 32)  # default mask_fn: the phantom's ground truth
    assert ts.masks.shape[0] > 0 and ts.healthy_rows.numel() > 0
    cfg = InpaintingConfig(**TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    seen = []
    res = fit_generator(model, ts, cfg, steps=3, generator=torch.Generator().manual_seed(0), ema=make_ema(model, 0.9),
                        start_step=5, callback=lambda s, l: seen.append(s), progress=False)
    assert len(res.losses) == 3 and all(np.isfinite(res.losses)) and seen == [6, 7, 8]
    assert (res.start_step, res.end_step) == (5, 8)
    imgs, masks, f = preview_inputs(ts, 2, torch.Generator().manual_seed(0))
    assert f.sum(1).min() >= 1


def test_healthy_examples_also_get_finding_shaped_masks(folder):
    ts = build_training_set(folder, 32, mask_fn=box_mask_fn)
    cfg = InpaintingConfig(
        **{**TINY, "finding_fraction": 0.0, "batch_size": 40, "crop_size": 32, "region_margin": 0}
    )  # region_margin 0: training regions are the finding masks themselves, not grown ones
    b = sample_batch(ts, cfg, torch.Generator().manual_seed(0))
    assert b.cond.findings.sum() == 0  # all healthy: no label
    # crop_size 32 on 32-pixel images: boxes are the whole image, so crop masks are the masks
    finding_shaped = sum(any(torch.equal(m, fm.float()) for fm in ts.masks) for m in b.cond.mask)
    assert 10 < finding_shaped < 30  # about half (HEALTHY_FINDING_MASK_SHARE)


def test_balanced_sampling_draws_rare_findings_as_often_as_common_ones():
    from augment.inpainting.train import _pick_masks

    n_common, n_rare = 90, 10
    mf = torch.zeros(n_common + n_rare, 14)
    mf[:n_common, 0] = 1
    mf[n_common:, 5] = 1
    data = SimpleNamespace(mask_findings=mf, masks=torch.zeros(n_common + n_rare, 1, 4, 4, dtype=torch.bool))
    g = torch.Generator().manual_seed(0)
    rare_share = (_pick_masks(data, 4000, "balanced", g) >= n_common).float().mean()
    assert abs(float(rare_share) - 0.5) < 0.05
    rare_share = (_pick_masks(data, 4000, "proportional", g) >= n_common).float().mean()
    assert abs(float(rare_share) - 0.1) < 0.03


def test_focus_findings_are_drawn_focus_weight_times_as_often():
    from augment.findings import FINDINGS
    from augment.inpainting.train import _pick_masks, grow_masks

    mf = torch.zeros(100, 14)
    mf[:50, 0] = 1
    mf[50:, 5] = 1
    data = SimpleNamespace(mask_findings=mf, masks=torch.zeros(100, 1, 4, 4, dtype=torch.bool))
    g = torch.Generator().manual_seed(0)
    share = (_pick_masks(data, 8000, "balanced", g, [FINDINGS[5]], 3.0) >= 50).float().mean()
    assert abs(float(share) - 0.75) < 0.03  # 3 : 1
    # regions with a margin: each mask grows by its own number of pixels
    m = torch.zeros(2, 1, 9, 9, dtype=torch.bool)
    m[:, :, 4, 4] = True
    grown = grow_masks(m, torch.tensor([0, 2]))
    assert int(grown[0].sum()) == 1 and int(grown[1].sum()) == 25
