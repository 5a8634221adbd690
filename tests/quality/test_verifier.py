"""The local finding verifier: crops, thresholds, fills, and a known-answer fit with controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augment.config import QualityConfig, VerifierConfig
from augment.findings import FINDINGS
from augment.quality.gate import evaluate_gate
from augment.quality.verifier import (
    CropSet,
    Verifier,
    VerifierNet,
    crop_at,
    false_pass_threshold,
    fill,
    fit_verifier,
    load_verifier,
    region_centres,
    predict,
    save_verifier,
    separating_threshold,
    standardise,
)


def test_region_centre_of_a_crescent_lies_on_it():
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    r = ((yy - 32) ** 2 + (xx - 32) ** 2).float().sqrt()
    crescent = ((r > 20) & (r < 24) & (xx < 32))[None, None]  # the left half of a ring
    c = region_centres(crescent)[0]
    assert bool(crescent[0, 0, c[0], c[1]])  # the centroid itself (about (32, 18)) is off the ring
    assert region_centres(torch.zeros(1, 1, 8, 8, dtype=torch.bool)).tolist() == [[-1, -1]]


def test_crop_at_centres_and_replicates_edges():
    img = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)
    c = crop_at(img, torch.tensor([[5, 5]]), 4, 4)
    assert torch.equal(c[0, 0], img[0, 0, 3:7, 3:7])
    corner = crop_at(img, torch.tensor([[0, 0]]), 4, 4)
    assert float(corner[0, 0, 0, 0]) == 0.0 and float(corner[0, 0, 3, 3]) == float(img[0, 0, 1, 1])
    assert crop_at(img, torch.tensor([[5, 5]]), 4, 8).shape == (1, 1, 8, 8)


def test_separating_threshold_sits_between_the_classes():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.9, 0.99])
    t = separating_threshold(y, s)
    assert 0.3 < t < 0.9
    # logit midpoint of 0.3 and 0.9
    lo, hi = np.log(0.3 / 0.7), np.log(0.9 / 0.1)
    assert t == pytest.approx(1 / (1 + np.exp(-(lo + hi) / 2)))
    assert separating_threshold(np.array([1, 1]), np.array([0.2, 0.3])) is None
    # an overlapping case still picks the best cut
    t2 = separating_threshold(np.array([0, 1, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.8, 0.9]))
    assert 0.3 < t2 < 0.8
    # few positives: J's best cut (all 3 positives, 30% of the negatives) passes too many negatives;
    # capped at 10% of them, the cut moves above all but one negative (and gives up one positive)
    y = np.array([0] * 10 + [1] * 3)
    s = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.7, 0.42, 0.6, 0.8])
    loose = separating_threshold(y, s)
    assert loose < 0.42 and (s[:10] >= loose).mean() == pytest.approx(0.3)
    strict = separating_threshold(y, s, max_false_pass=0.1)
    assert (s[:10] >= strict).mean() <= 0.1 and 0.5 < strict < 0.6
    # no cut meets the cap: the strictest one
    assert separating_threshold(np.array([0, 1, 0]), np.array([0.1, 0.5, 0.9]), max_false_pass=0.0) > 0.5


def test_false_pass_threshold_passes_the_allowed_share_of_negatives():
    neg = np.linspace(0.01, 0.99, 40)
    t = false_pass_threshold(neg, 0.1)
    assert (neg >= t).mean() == pytest.approx(0.1)  # 4 of 40 pass
    lo, hi = np.log(neg[35] / (1 - neg[35])), np.log(neg[36] / (1 - neg[36]))
    assert t == pytest.approx(1 / (1 + np.exp(-(lo + hi) / 2)))  # midway between the 5th and 4th highest
    # a cap of 0 rejects every negative; ties are not split, so fewer pass than allowed
    assert (neg >= false_pass_threshold(neg, 0.0)).sum() == 0
    tied = np.array([0.1] * 30 + [0.8] * 10)
    assert (tied >= false_pass_threshold(tied, 0.1)).sum() == 0
    # nothing to choose by: no negatives, or no cap
    assert false_pass_threshold(np.array([]), 0.1) is None and false_pass_threshold(neg, 1.0) is None


def test_fills_change_only_the_region():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 1, 32, 32, generator=g) * 0.2 + 0.4
    region = torch.zeros(2, 1, 32, 32)
    region[:, :, 10:16, 10:16] = 1
    for how in ("noise", "mean", "blur"):
        out = fill(img, region, how, generator=g)
        assert torch.equal(out[region == 0], img[region == 0]), how
        assert not torch.equal(out[region == 1], img[region == 1]), how
    flat = fill(img, region, "mean")
    assert float(flat[0, 0, 10:16, 10:16].std()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="noise, mean or blur"):
        fill(img, region, "paint")


def _disc_images(n: int, bright: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Textured backgrounds with a bright disc (or none) at a random place; the disc's mask."""
    g = torch.Generator().manual_seed(seed)
    img = 0.4 + 0.1 * torch.rand(n, 1, 48, 48, generator=g)
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    masks = torch.zeros(n, 1, 48, 48)
    for i in range(n):
        cy, cx = (int(v) for v in torch.randint(14, 34, (2,), generator=g))
        d = (((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt() < 5).float()
        masks[i, 0] = d
        if bright:
            img[i, 0] += 0.3 * d
    return img.clamp(0, 1), masks


def _cropset(seed: int, n: int = 40) -> CropSet:
    cfg = VerifierConfig(crop_size=24, input_size=24)
    pos, pm = _disc_images(n, True, seed)
    neg, nm = _disc_images(n, False, seed + 100)
    noise = fill(neg, nm, "noise", generator=torch.Generator().manual_seed(seed))
    x = torch.cat([pos, neg, noise])
    m = torch.cat([pm, nm, nm])
    crops = standardise(crop_at(x, region_centres(m), cfg.crop_size, cfg.input_size))
    kinds = np.array(["positive"] * n + ["place"] * n + ["noise"] * n)
    return CropSet(crops=crops.numpy(), targets=(kinds == "positive").astype(np.float32)[:, None],
                   kinds=kinds, finding=np.array(["Mass"] * (3 * n)), groups=np.arange(3 * n), findings=["Mass"])


@pytest.fixture(scope="module")
def fitted():
    cfg = VerifierConfig(crop_size=24, input_size=24, epochs=12, batch_size=32, channels=[8, 16])
    return fit_verifier(_cropset(0), _cropset(1), cfg), cfg


def test_fit_separates_discs_from_noise_fills(fitted):
    fit, _ = fitted
    row = fit.report["Mass"]
    assert row["auc"] > 0.95
    assert row["pass.positive"] >= 0.9  # positive control: real discs pass
    assert row["pass.noise"] <= 0.1  # negative control: the disc's region filled with noise fails
    assert row["pass.place"] <= 0.1
    assert fit.threshold_source["Mass"].startswith("Youden")


def _subset(cs: CropSet, keep: np.ndarray) -> CropSet:
    return CropSet(crops=cs.crops[keep], targets=cs.targets[keep], kinds=cs.kinds[keep], finding=cs.finding[keep],
                   groups=cs.groups[keep], findings=cs.findings)


def test_a_finding_without_validation_regions_is_cut_on_its_negatives(fitted):
    """Two validation regions cannot place Youden's J; the cut then caps the false-pass rate on the
    validation negatives, and real discs it never saw still pass (a default of 0.5 measured nothing)."""
    _, cfg = fitted
    val = _cropset(1)
    few = np.flatnonzero(val.kinds == "positive")[2:]
    fit = fit_verifier(_cropset(0), _subset(val, np.setdiff1d(np.arange(len(val.kinds)), few)), cfg)
    assert fit.threshold_source["Mass"].startswith("false-pass cut on 80 validation negative crops")
    thr = fit.thresholds["Mass"]
    assert thr != 0.5 and fit.report["Mass"]["pass.noise"] <= 0.1 and fit.report["Mass"]["pass.place"] <= 0.1
    held = _cropset(2)
    net = VerifierNet(1, cfg.channels)
    net.load_state_dict(fit.state_dict)
    p = predict(net, held.crops)[:, 0]
    assert (p[held.kinds == "positive"] >= thr).mean() >= 0.9
    assert (p[held.kinds != "positive"] >= thr).mean() <= 0.15
    # too few negatives as well: the 0.5 default, said so
    tiny = _subset(val, np.concatenate([np.flatnonzero(val.kinds == "positive")[:2], np.flatnonzero(val.kinds == "place")[:5]]))
    fit2 = fit_verifier(_cropset(0), tiny, cfg.model_copy(update={"epochs": 1}))
    assert fit2.thresholds["Mass"] == 0.5 and fit2.threshold_source["Mass"].startswith("default 0.5")


def test_checkpoint_round_trip_and_gate_with_the_verifier(fitted, tmp_path):
    fit, cfg = fitted
    path = save_verifier(tmp_path / "verifier.pt", fit, cfg, ["Mass"], image_size=48)
    ver = load_verifier(path)
    assert ver.knows("Mass") and not ver.knows("Nodule")
    src, masks = _disc_images(6, False, 7)
    painted = (src + 0.3 * masks).clamp(0, 1)
    noisy = fill(src, masks, "noise", generator=torch.Generator().manual_seed(3))
    s_p, s_s = ver.score(painted, masks, ["Mass"] * 6), ver.score(src, masks, ["Mass"] * 6)
    assert (s_p > s_s).all() and (s_p >= ver.threshold("Mass")).mean() >= 5 / 6
    targets = torch.zeros(6, len(FINDINGS))
    targets[:, FINDINGS.index("Mass")] = 1
    flat = lambda x: torch.full((x.shape[0], len(FINDINGS)), 0.5)  # noqa: E731 - a classifier that sees nothing
    q = QualityConfig(outside_tolerance=1.0)
    ok = evaluate_gate(src, painted, masks, targets, q, flat, verifier=ver)
    bad = evaluate_gate(src, noisy, masks, targets, q, flat, verifier=ver)
    assert sum(d.accepted for d in ok) >= 5 and all(d.judges == ("verifier",) for d in ok)
    assert not any(d.accepted for d in bad) and all("not_seen" in d.reasons or "no_verifier_rise" in d.reasons for d in bad)
    # the classifier as a second judge: a flat classifier never rises
    both = evaluate_gate(src, painted, masks, targets, q, flat, verifier=ver, classifier_findings=["Mass"])
    assert not any(d.accepted for d in both) and all("no_rise" in d.reasons for d in both)
    assert all(d.judges == ("verifier", "classifier") for d in both)
    # a target the verifier never learned is rejected as unverifiable, not passed
    t2 = torch.zeros(6, len(FINDINGS))
    t2[:, FINDINGS.index("Nodule")] = 1
    assert all("unverifiable" in d.reasons for d in evaluate_gate(src, painted, masks, t2, q, flat, verifier=ver))
    # judge: classifier ignores the verifier
    qc = QualityConfig(outside_tolerance=1.0, judge="classifier", margin=0.0)
    assert all(d.judges == ("classifier",) for d in evaluate_gate(src, noisy, masks, targets, qc, flat, verifier=ver))


def test_verifier_scores_other_resolutions_at_its_own(fitted, tmp_path):
    fit, cfg = fitted
    ver = load_verifier(save_verifier(tmp_path / "v.pt", fit, cfg, ["Mass"], image_size=48))
    src, masks = _disc_images(4, True, 11)
    big = torch.nn.functional.interpolate(src, size=(96, 96), mode="bilinear", align_corners=False)
    bigm = torch.nn.functional.interpolate(masks, size=(96, 96), mode="nearest")
    a, b = ver.score(src, masks, ["Mass"] * 4), ver.score(big, bigm, ["Mass"] * 4)
    assert np.allclose(a, b, atol=0.15)
    with pytest.raises(ValueError, match="not trained on Nodule"):
        ver.score(src, masks, ["Nodule"] * 4)


def test_load_refuses_other_checkpoints(tmp_path):
    from augment.checkpoint import CheckpointError

    torch.save({"kind": "classifier", "state_dict": {}, "config": {}, "version": 1, "findings": [], "thresholds": {}},
               tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="not a verifier"):
        load_verifier(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_verifier(tmp_path / "missing.pt")
    net = VerifierNet(1, [8])
    ver = Verifier(net, VerifierConfig(channels=[8]), ["Mass"], {"Mass": None}, 64)
    assert not ver.knows("Mass")
    with pytest.raises(ValueError, match="no threshold for Mass"):
        ver.threshold("Mass")
