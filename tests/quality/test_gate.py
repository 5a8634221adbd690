"""Gate decisions on hand-made cases: a fake classifier that reads the mean of a fixed region."""

import math

import pytest
import torch

from augment.config import QualityConfig
from augment.findings import FINDINGS
from augment.quality import REASONS, TrainingBank, acceptance_summary, evaluate_gate

NODULE = FINDINGS.index("Nodule")
MASS = FINDINGS.index("Mass")


def prob_fn(x):
    """P(Nodule) = mean brightness of rows 4:8, cols 4:8; P(Mass) = of rows 8:12; others 0.1."""
    p = torch.full((x.shape[0], 14), 0.1)
    p[:, NODULE] = x[:, 0, 4:8, 4:8].mean((1, 2))
    p[:, MASS] = x[:, 0, 8:12, 4:8].mean((1, 2))
    return p


def embed_fn(x):
    return torch.stack([x[:, 0, :8].mean((1, 2)), x[:, 0, 8:].mean((1, 2)), torch.ones(x.shape[0])], dim=1)


def targets(*names):
    t = torch.zeros(len(names), 14)
    for i, n in enumerate(names):
        for f in n.split("|"):
            t[i, FINDINGS.index(f)] = 1
    return t


@pytest.fixture
def case():
    src = torch.full((1, 1, 16, 16), 0.2)
    mask = torch.zeros(1, 1, 16, 16)
    mask[:, :, 4:12, 4:8] = 1
    return src, mask


def test_accepts_a_rise_and_records_numbers(case):
    src, mask = case
    syn = torch.where(mask > 0, torch.tensor(0.5), src)
    (d,) = evaluate_gate(src, syn, mask, targets("Nodule"), QualityConfig(margin=0.1), prob_fn)
    assert d.accepted and d.reasons == ()
    assert d.findings == ("Nodule",)
    assert d.p_before == pytest.approx((0.2,)) and d.p_after == pytest.approx((0.5,)) and d.rise == pytest.approx(0.3)
    assert d.outside_max_abs_diff == 0.0 and d.finite and d.in_range
    assert d.mask_fraction == pytest.approx(32 / 256)
    assert d.pixel_nn_distance is None  # no bank: not checked, and said so


def test_rejects_too_small_a_rise(case):
    src, mask = case
    syn = torch.where(mask > 0, torch.tensor(0.24), src)
    (d,) = evaluate_gate(src, syn, mask, targets("Nodule"), QualityConfig(margin=0.05), prob_fn)
    assert not d.accepted and d.reasons == ("no_rise",) and d.rise == pytest.approx(0.04)


def test_two_targets_need_both_to_rise(case):
    src, mask = case
    syn = src.clone()
    syn[:, :, 4:8, 4:8] = 0.9  # Nodule region only
    (d,) = evaluate_gate(src, syn, mask, targets("Mass|Nodule"), QualityConfig(margin=0.1), prob_fn)
    assert d.findings == ("Mass", "Nodule") and "no_rise" in d.reasons and d.rise == pytest.approx(0.0)


def test_outside_change_nan_and_range_are_rejected(case):
    src, mask = case
    good = torch.where(mask > 0, torch.tensor(0.6), src)
    outside = good.clone()
    outside[0, 0, 0, 0] += 1e-3
    nan = good.clone()
    nan[0, 0, 5, 5] = float("nan")
    high = good.clone()
    high[0, 0, 5, 5] = 1.5
    syn = torch.cat([outside, nan, high])
    ds = evaluate_gate(src.expand(3, -1, -1, -1), syn, mask.expand(3, -1, -1, -1), targets("Nodule", "Nodule", "Nodule"), QualityConfig(), prob_fn)
    assert ds[0].reasons == ("outside_changed",) and ds[0].outside_max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    assert "not_finite" in ds[1].reasons and not ds[1].finite and math.isinf(ds[1].outside_max_abs_diff)
    assert ds[2].reasons == ("out_of_range",)
    assert all(set(d.reasons) <= set(REASONS) for d in ds)


def test_near_copy_of_a_training_image_is_rejected(case):
    src, mask = case
    lesion = torch.where(mask > 0, torch.tensor(0.7), src)
    other = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    bank = TrainingBank.build(torch.cat([src, lesion, other]), ["src.png", "lesion.png", "other.png"], embed_fn, size=16)
    cfg = QualityConfig(margin=0.1, min_pixel_distance=0.01, min_embedding_distance=1e-4)
    copy = lesion.clone()
    novel = torch.where(mask > 0, torch.tensor(0.95), src)
    ds = evaluate_gate(
        torch.cat([src, src]), torch.cat([copy, novel]), torch.cat([mask, mask]), targets("Nodule", "Nodule"), cfg, prob_fn,
        embed_fn=embed_fn, bank=bank, source_ids=["src.png", "src.png"],
    )
    assert ds[0].reasons == ("pixel_near_copy", "embedding_near_copy")
    assert ds[0].pixel_nn_id == "lesion.png" and ds[0].pixel_nn_distance == pytest.approx(0.0, abs=1e-6)
    assert ds[1].accepted and ds[1].pixel_nn_distance == pytest.approx(0.25, abs=1e-4)  # 0.95 vs lesion's 0.7
    # the source itself is excluded: identical outside the mask by construction
    assert ds[1].pixel_nn_id != "src.png" and ds[1].embedding_nn_id != "src.png"


def test_summary_and_dicts(case):
    src, mask = case
    syn = torch.cat([torch.where(mask > 0, torch.tensor(v), src) for v in (0.6, 0.21)])
    ds = evaluate_gate(src.expand(2, -1, -1, -1), syn, mask.expand(2, -1, -1, -1), targets("Nodule", "Nodule"), QualityConfig(), prob_fn)
    s = acceptance_summary(ds)
    assert s["n"] == 2 and s["accepted"] == 1 and s["acceptance_rate"] == 0.5
    assert s["per_finding"]["Nodule"] == {"accepted": 1, "n": 2, "rate": 0.5} and s["reasons"] == {"no_rise": 1}
    row = ds[0].to_dict()
    assert row["findings"] == "Nodule" and row["reasons"] == "" and row["accepted"] is True


def test_bad_input_raises(case):
    src, mask = case
    with pytest.raises(ValueError, match="all zeros"):
        evaluate_gate(src, src, mask, torch.zeros(1, 14), QualityConfig(), prob_fn)
    with pytest.raises(ValueError, match="must match"):
        evaluate_gate(src, src[:, :, :8], mask, targets("Nodule"), QualityConfig(), prob_fn)
    with pytest.raises(ValueError, match=r"\(B, 14\)"):
        evaluate_gate(src, src, mask, targets("Nodule"), QualityConfig(), lambda x: torch.zeros(1, 3))
