"""compare_auc: paired bootstrap of the AUC difference, by patient, with known answers."""

import numpy as np
import pytest

from augment.evaluation.compare import compare_auc
from augment.findings import FINDINGS

EFF = FINDINGS.index("Effusion")
MASS = FINDINGS.index("Mass")


def _labels(n: int, col: int, pos: np.ndarray) -> np.ndarray:
    y = np.zeros((n, len(FINDINGS)), np.int64)
    y[pos, col] = 1
    return y


def _row(rows, name):
    return next(r for r in rows if r.finding == name)


def test_identical_models_differ_by_exactly_zero():
    rng = np.random.default_rng(0)
    y = _labels(60, EFF, np.arange(0, 60, 3))
    p = rng.random(y.shape)
    r = _row(compare_auc(y, p, p.copy(), n_boot=200), "Effusion")
    assert r.delta == 0 and r.delta_low == 0 and r.delta_high == 0 and r.verdict == "no clear difference"
    assert r.n_missing == 0 and r.n_boot == 200 and r.resampled == "image"


def test_a_perfect_model_beats_a_random_one_and_absent_findings_are_missing():
    rng = np.random.default_rng(1)
    y = _labels(200, EFF, np.arange(0, 200, 2))
    base = rng.random(y.shape)
    aug = base.copy()
    aug[:, EFF] = y[:, EFF] * 0.5 + 0.25 * rng.random(200)
    rows = compare_auc(y, base, aug, n_boot=300, groups=np.arange(200))
    eff = _row(rows, "Effusion")
    assert eff.auc_augmented == 1.0 and eff.delta_low > 0.3 and eff.verdict == "better"
    assert _row(rows, "Mass").verdict == "missing" and _row(rows, "Mass").delta is None
    macro = _row(rows, "macro")
    assert macro.delta == pytest.approx(eff.delta) and macro.resampled == "patient"


def test_image_level_interval_is_too_narrow_when_patients_repeat():
    """20 patients with 10 identical follow-ups each: the information is 20 patients, not 200 images."""
    rng = np.random.default_rng(2)
    n_pat, per = 20, 10
    pat_y = np.zeros(n_pat, np.int64)
    pat_y[::2] = 1
    pb, pa = rng.random(n_pat), rng.random(n_pat)
    y = _labels(n_pat * per, EFF, np.flatnonzero(np.repeat(pat_y, per)))
    base = np.full(y.shape, 0.5)
    aug = np.full(y.shape, 0.5)
    base[:, EFF], aug[:, EFF] = np.repeat(pb, per), np.repeat(pa, per)
    groups = np.repeat(np.arange(n_pat), per)
    by_image = _row(compare_auc(y, base, aug, n_boot=400, seed=0), "Effusion")
    by_patient = _row(compare_auc(y, base, aug, n_boot=400, seed=0, groups=groups), "Effusion")
    assert by_image.delta == by_patient.delta
    w_img, w_pat = by_image.delta_high - by_image.delta_low, by_patient.delta_high - by_patient.delta_low
    assert w_pat > 2.0 * w_img, (w_img, w_pat)  # about sqrt(10) = 3.2 times in theory


def test_resamples_that_lose_a_findings_positives_are_counted_not_dropped():
    rng = np.random.default_rng(3)
    n = 100
    y = _labels(n, EFF, np.arange(0, n, 2))
    y[7, MASS] = 1  # one Mass patient: most resamples of 100 patients still hold it, ~37% do not
    base, aug = rng.random(y.shape), rng.random(y.shape)
    rows = compare_auc(y, base, aug, n_boot=300, seed=0, groups=np.arange(n))
    mass, macro = _row(rows, "Mass"), _row(rows, "macro")
    assert 60 < mass.n_missing < 170, mass.n_missing
    assert mass.delta_low is None and mass.verdict == "too few positives for an interval"
    # the macro row keeps one set of findings: resamples without Mass are missing for it too
    assert macro.n_missing == mass.n_missing and macro.delta_low is None
    assert _row(rows, "Effusion").n_missing == 0 and _row(rows, "Effusion").delta_low is not None


def test_bad_shapes_and_groups_are_clear_errors():
    y = _labels(10, EFF, np.arange(0, 10, 2))
    with pytest.raises(ValueError, match="must all be"):
        compare_auc(y, np.zeros((10, 3)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="one patient per image: 3 for 10"):
        compare_auc(y, np.zeros(y.shape), np.zeros(y.shape), groups=[1, 2, 3])
