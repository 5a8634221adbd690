"""Utility over seeds (t-interval by hand), data fractions with whole patients, per-set metrics."""

import math

import numpy as np
import pytest

from augment.data.nih import Record
from augment.evaluation.synthetic_scoring import per_set_metrics, rows_to_metrics
from augment.evaluation.utility import NO_INTERVAL, aggregate_over_seeds, mean_interval, subsample_fraction, utility_figure
from augment.findings import FINDINGS


def test_t_interval_matches_a_hand_computation():
    n, mean, low, high, std, note = mean_interval([0.70, 0.75, 0.80])
    # s = 0.05, t(0.975, 2 dof) = 4.302652729911275
    half = 4.302652729911275 * 0.05 / math.sqrt(3)
    assert (n, note) == (3, "")
    assert mean == pytest.approx(0.75) and std == pytest.approx(0.05)
    assert low == pytest.approx(0.75 - half, abs=1e-9) and high == pytest.approx(0.75 + half, abs=1e-9)


def test_one_seed_has_no_interval_and_missing_values_are_skipped():
    assert mean_interval([0.7]) == (1, 0.7, None, None, None, NO_INTERVAL)
    assert mean_interval([None, None])[:2] == (0, None)
    assert mean_interval([0.6, None, 0.8])[0] == 2


def test_aggregate_over_seeds_pairs_the_difference(tmp_path):
    base = [{"Effusion": 0.70, "macro": 0.65, "loss_gap": 0.010}, {"Effusion": 0.72, "macro": 0.66, "loss_gap": 0.012},
            {"Effusion": 0.74, "macro": 0.64, "loss_gap": 0.011}]
    aug = [{"Effusion": 0.75, "macro": 0.66, "loss_gap": 0.008}, {"Effusion": 0.76, "macro": 0.68, "loss_gap": 0.009},
           {"Effusion": 0.80, "macro": 0.65, "Mass": None, "loss_gap": 0.010}]
    rows = aggregate_over_seeds(base, aug)
    keys = list(dict.fromkeys(r.key for r in rows))
    assert keys == ["Effusion", "Mass", "macro", "loss_gap"]
    get = {(r.key, r.arm): r for r in rows}
    d = get[("Effusion", "delta")]
    assert d.n_seeds == 3 and d.mean == pytest.approx(np.mean([0.05, 0.04, 0.06]))
    assert d.low == pytest.approx(0.05 - 4.302652729911275 * 0.01 / math.sqrt(3))
    assert get[("Mass", "augmented")].n_seeds == 0 and get[("Mass", "augmented")].mean is None
    one = aggregate_over_seeds(base[:1], aug[:1])
    assert all(r.low is None and r.note == NO_INTERVAL for r in one)
    with pytest.raises(ValueError, match="same number"):
        aggregate_over_seeds(base, aug[:2])
    from augment.evaluation.plots import save_figure

    assert save_figure(utility_figure(rows), tmp_path / "u.png").is_file()


def _records(n_patients=200, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for p in range(n_patients):
        for k in range(int(rng.integers(1, 4))):
            lab = ("Effusion",) if p % 5 == 0 else ("Hernia",) if p % 50 == 1 else ("No Finding",)
            recs.append(Record(f"{p:08d}_{k:03d}.png", lab, p))
    return recs


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_subsample_fraction_keeps_patients_whole(fraction):
    recs = _records()
    kept = subsample_fraction(recs, fraction, seed=1)
    assert kept
    n = len(recs)
    assert abs(len(kept) - fraction * n) <= max(3, 0.05 * fraction * n)
    pids = {r.patient_id for r in kept}
    assert sum(r.patient_id in pids for r in recs) == len(kept)  # every image of a kept patient
    assert list(kept) == [r for r in recs if r.patient_id in pids]  # original order
    if fraction == 0.1:
        share = sum("Effusion" in r.labels for r in kept) / len(kept)
        assert 0.1 < share < 0.35  # about the split's 20%
        assert subsample_fraction(recs, fraction, seed=1) == kept
        assert subsample_fraction(recs, fraction, seed=2) != kept


def test_subsample_fraction_errors():
    recs = _records(20)
    with pytest.raises(ValueError, match="keeps .* i.e. none"):
        subsample_fraction(recs, 0.01)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        subsample_fraction(recs, 0.0)
    with pytest.raises(ValueError, match="no records"):
        subsample_fraction([], 0.5)


def test_per_set_metrics_rows():
    rng = np.random.default_rng(0)
    y_r = np.zeros((40, 14))
    y_r[:20, 2] = 1
    p_r = np.clip(y_r * 0.6 + rng.uniform(0, 0.4, y_r.shape), 0, 1)
    y_s = np.zeros((10, 14))
    y_s[:, 2] = 1  # synthetic: all Effusion, no negatives
    p_s = np.full((10, 14), 0.9)
    rows = per_set_metrics(y_r, p_r, y_s, p_s)
    get = {(r.set, r.finding): r for r in rows}
    assert len(rows) == 3 * (len(FINDINGS) + 1)
    assert get[("real", "Effusion")].auc == pytest.approx(1.0) and get[("real", "Effusion")].n_pos == 20
    assert get[("synthetic", "Effusion")].auc is None  # missing, not a number
    assert get[("combined", "Effusion")].n_pos == 30 and get[("combined", "Effusion")].n_images == 50
    assert get[("real", "Mass")].auc is None
    m = rows_to_metrics(rows)
    assert m["real_auc_Effusion"] == pytest.approx(1.0) and m["real_auc_macro"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="synthetic labels"):
        per_set_metrics(y_r, p_r, y_s[:, :3], p_s)
