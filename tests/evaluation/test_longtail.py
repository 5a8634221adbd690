"""The long-tail benchmark's statistics: weighted AUC, patient resampling, oversampling and the arm table."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from augment.evaluation.longtail import (
    RARE_MACRO, longtail_table, oversample_index, patient_multiplicities, weighted_auc,
)
from augment.findings import FINDINGS


def test_weighted_auc_is_sklearns_auc_of_the_resampled_images_ties_included():
    rng = np.random.default_rng(0)
    y = rng.uniform(size=200) < 0.3
    s = np.round(rng.normal(size=200) + y, 1)  # rounded: many ties
    assert weighted_auc(y, s, np.ones((1, 200)))[0] == pytest.approx(roc_auc_score(y, s))
    w = patient_multiplicities(np.arange(200) // 4, 3, seed=1)
    for row in w:
        idx = np.repeat(np.arange(200), row.astype(int))
        assert weighted_auc(y, s, row[None])[0] == pytest.approx(roc_auc_score(y[idx], s[idx]))
    # no positive weight: undefined, not a number
    assert np.isnan(weighted_auc(y, s, (~y)[None].astype(float))[0])


def test_patient_resampling_draws_whole_patients():
    groups = np.repeat(np.arange(30), 3)  # 3 images per patient
    w = patient_multiplicities(groups, 50, seed=0)
    assert w.shape == (50, 90)
    # the images of one patient are always drawn together, as many times each
    assert np.all(w.reshape(50, 30, 3).std(axis=2) == 0)
    assert np.all(w.reshape(50, 30, 3)[:, :, 0].sum(axis=1) == 30)  # 30 patients per resample


def _index(make_nih_folder):
    from augment.data.nih import load_index

    rows = [("a.png", "Mass", 1), ("b.png", "Mass", 2), ("c.png", "Nodule", 3), ("d.png", "No Finding", 4),
            ("e.png", "Effusion", 5)]
    return load_index(make_nih_folder(rows, name="train"))


def test_oversampling_repeats_only_the_rare_positives_evenly(make_nih_folder):
    idx = _index(make_nih_folder)
    out = oversample_index(idx, {"Mass": 5, "Nodule": 3, "Pneumothorax": 4}, seed=0)
    extra = [r.image_index for r in out.records[len(idx):]]
    assert len(extra) == 8  # 5 Mass + 3 Nodule; no Pneumothorax positive, nothing added for it
    assert sorted(set(extra)) == ["a.png", "b.png", "c.png"] and extra.count("c.png") == 3
    assert abs(extra.count("a.png") - extra.count("b.png")) <= 1
    assert out.counts()["Mass"] == 2 + 5 and out.counts()["Effusion"] == 1
    with pytest.raises(ValueError, match="copies"):
        oversample_index(idx, {"Mass": -1})


def _toy(seed=0, n=240):
    """Labels for Mass and Nodule, 3 images per patient; base at chance, 'better' informative."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, len(FINDINGS)))
    for f in ("Mass", "Nodule"):
        y[:, FINDINGS.index(f)] = rng.uniform(size=n) < 0.3
    groups = np.arange(n) // 3

    def preds(signal, s):
        r = np.random.default_rng([seed, s, int(signal * 100)])
        return np.clip(0.5 + signal * (y - 0.5) + r.normal(0, 0.3, y.shape), 0, 1)

    return y, groups, preds


def test_table_known_answers_base_identity_gain_and_gap_closed():
    y, groups, preds = _toy()
    arms = {
        "base": [preds(0.0, s) for s in range(3)],
        "same": [preds(0.0, s) for s in range(3)],  # the base predictions again: no difference at all
        "better": [preds(0.3, s) for s in range(3)],
        "ceiling": [preds(0.6, s) for s in range(3)],
    }
    rows = longtail_table(y, groups, arms, ["Mass", "Nodule"], n_boot=200, seed=0)
    by = {(r.arm, r.key): r for r in rows}
    assert [r.key for r in rows[:3]] == ["Mass", "Nodule", RARE_MACRO]
    assert by[("base", RARE_MACRO)].delta is None and abs(by[("base", RARE_MACRO)].auc - 0.5) < 0.08
    same = by[("same", RARE_MACRO)]
    assert same.delta == 0 and same.boot_low == 0 and same.boot_high == 0 and same.gap_closed == 0
    better, ceil = by[("better", RARE_MACRO)], by[("ceiling", RARE_MACRO)]
    assert better.delta > 0.1 and better.delta_low > 0 and better.boot_low > 0
    assert 0 < better.gap_closed < 1 and ceil.gap_closed == 1.0
    assert better.gap_closed == pytest.approx(better.delta / ceil.delta)
    # a ceiling no better than base leaves no gap to close: not a huge share of a noise-sized gap
    flat = longtail_table(y, groups, {"base": arms["base"], "better": arms["better"], "ceiling": arms["same"]},
                          ["Mass", "Nodule"], n_boot=200, seed=0)
    assert all(r.gap_closed is None for r in flat)
    m = by[("better", "Mass")]
    assert m.boot_low < m.delta < m.boot_high and m.auc_low < m.auc < m.auc_high


def test_patient_bootstrap_is_wider_than_an_image_bootstrap_on_clustered_images():
    # every patient has 6 near-identical images: 40 patients, not 240 independent images
    rng = np.random.default_rng(3)
    n_pat, k = 40, 6
    y = np.zeros((n_pat * k, len(FINDINGS)))
    y[:, FINDINGS.index("Mass")] = np.repeat(rng.uniform(size=n_pat) < 0.4, k)
    pb = np.repeat(rng.uniform(size=(n_pat, len(FINDINGS))), k, axis=0)
    pa = np.clip(pb + 0.25 * (y - 0.5), 0, 1)
    arms = {"base": [pb], "aug": [pa]}
    by_patient = {r.key: r for r in longtail_table(y, np.repeat(np.arange(n_pat), k), arms, ["Mass"], n_boot=400)
                  if r.arm == "aug"}["Mass"]
    by_image = {r.key: r for r in longtail_table(y, np.arange(n_pat * k), arms, ["Mass"], n_boot=400)
                if r.arm == "aug"}["Mass"]
    assert by_patient.boot_high - by_patient.boot_low > 1.5 * (by_image.boot_high - by_image.boot_low)


def test_table_refuses_what_it_cannot_measure():
    y, groups, preds = _toy()
    one = [preds(0.0, 0)]
    with pytest.raises(ValueError, match="base arm"):
        longtail_table(y, groups, {"flow": one}, ["Mass"])
    with pytest.raises(ValueError, match="same seeds"):
        longtail_table(y, groups, {"base": one, "flow": one * 2}, ["Mass"])
    with pytest.raises(ValueError, match="no positives or no negatives of Pneumothorax"):
        longtail_table(y, groups, {"base": one}, ["Pneumothorax"])
    with pytest.raises(ValueError, match="one patient per test image"):
        longtail_table(y, groups[:10], {"base": one}, ["Mass"])
