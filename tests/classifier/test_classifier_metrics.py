"""Metrics against hand-computed answers on small arrays."""

import numpy as np
import pytest

from augment.classifier.metrics import classification_metrics, finding_metrics, loss_gap, youden_threshold, youden_thresholds
from augment.findings import FINDINGS

# 4 negatives, 3 positives. AUC: the positives 0.5, 0.7, 0.9 beat 3, 4 and 4 of the
# negatives 0.1, 0.2, 0.3, 0.65 -> 11/12. Youden J along the ROC (threshold: TPR - FPR):
# 0.9: 1/3; 0.7: 2/3; 0.65: 2/3 - 1/4; 0.5: 1 - 1/4 = 3/4 (max); 0.3: 1 - 2/4.
Y = np.array([0, 0, 0, 0, 1, 1, 1])
S = np.array([0.1, 0.2, 0.3, 0.65, 0.5, 0.7, 0.9])


def test_auc_and_youden_match_hand_computation():
    m = finding_metrics("Mass", Y, S)
    assert m.auc == pytest.approx(11 / 12)
    assert m.youden_threshold == pytest.approx(0.5)
    # At >= 0.5: TP 3, FP 1 (0.65), TN 3, FN 0.
    assert m.accuracy_at_youden == pytest.approx(6 / 7)
    assert m.precision_at_youden == pytest.approx(3 / 4)
    assert m.sensitivity_at_youden == pytest.approx(1.0)
    assert m.specificity_at_youden == pytest.approx(3 / 4)
    assert (m.n_positive, m.n_negative) == (3, 4)


def test_fixed_threshold_differs_from_youden():
    s = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.45])  # perfectly ranked, all under 0.5
    m = finding_metrics("Mass", Y, s)
    assert m.auc == pytest.approx(1.0)
    assert m.youden_threshold == pytest.approx(0.3)
    assert m.accuracy_at_05 == pytest.approx(4 / 7)  # predicts nothing positive
    assert m.precision_at_05 is None  # nothing predicted positive: undefined, not 0
    assert m.accuracy_at_youden == pytest.approx(1.0)


def test_youden_tie_takes_the_highest_threshold():
    # J = 0.5 at 0.8 (TPR 1/2, FPR 0) and at 0.35 (TPR 1, FPR 1/2).
    assert youden_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.8)


def test_finding_without_positives_is_missing_not_a_number():
    rng = np.random.default_rng(0)
    y = np.zeros((10, len(FINDINGS)), dtype=int)
    y[:5, 0] = 1  # Atelectasis has positives, every other finding none
    y[5:, 1] = 1  # Cardiomegaly too
    p = rng.uniform(size=y.shape)
    m = classification_metrics(y, p, loss=0.3)
    assert m.finding("Hernia").auc is None
    assert m.finding("Hernia").youden_threshold is None
    assert m.finding("Hernia").precision_at_05 is None
    assert m.finding("Hernia").missing
    assert set(m.missing_findings) == set(FINDINGS) - {"Atelectasis", "Cardiomegaly"}
    expected = np.mean([m.finding("Atelectasis").auc, m.finding("Cardiomegaly").auc])
    assert m.macro_auc == pytest.approx(expected)
    flat = m.flat("val")
    assert flat["val_auc_Hernia"] is None and flat["val_loss"] == pytest.approx(0.3)
    assert m.to_dict()["per_finding"][13]["auc"] is None


def test_no_positives_anywhere_gives_no_macro_auc():
    m = classification_metrics(np.zeros((4, 14)), np.full((4, 14), 0.2))
    assert m.macro_auc is None
    assert len(m.missing_findings) == 14


def test_loss_gap_is_validation_minus_training():
    assert loss_gap(0.20, 0.25) == pytest.approx(0.05)


@pytest.mark.parametrize(
    "y, p",
    [
        (np.zeros((3, 14)), np.zeros((3, 13))),
        (np.full((3, 14), 2), np.zeros((3, 14))),
        (np.zeros((3, 14)), np.full((3, 14), np.nan)),
    ],
)
def test_bad_input_is_a_value_error(y, p):
    with pytest.raises(ValueError):
        classification_metrics(y, p)


def test_a_validation_threshold_is_applied_on_test_not_retuned():
    """Chosen on validation (0.5 above), scored on a test split whose own Youden cut is 0.3."""
    s_test = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.45])
    tuned = finding_metrics("Mass", Y, s_test)  # the optimistic number: threshold tuned on test
    honest = finding_metrics("Mass", Y, s_test, threshold=finding_metrics("Mass", Y, S).youden_threshold)
    assert tuned.accuracy_at_youden == pytest.approx(1.0) and tuned.threshold_source == "same split"
    assert honest.youden_threshold == pytest.approx(0.5) and honest.threshold_source == "validation"
    assert honest.accuracy_at_youden == pytest.approx(4 / 7)  # nothing reaches 0.5: the 4 negatives only
    assert honest.sensitivity_at_youden == 0.0


def test_classification_metrics_takes_the_validation_thresholds():
    rng = np.random.default_rng(1)
    y_val = np.zeros((20, 14), dtype=int)
    y_val[:10, 0] = 1  # Atelectasis has positives in validation; no other finding does
    p_val = np.clip(y_val * 0.4 + 0.5 * rng.uniform(size=y_val.shape), 0, 1)
    thr = youden_thresholds(y_val, p_val)
    assert thr[0] is not None and all(t is None for t in thr[1:])
    y_test = np.zeros((20, 14), dtype=int)
    y_test[:10, 0] = y_test[10:, 1] = 1
    m = classification_metrics(y_test, rng.uniform(size=y_test.shape), thresholds=thr)
    a, c = m.finding("Atelectasis"), m.finding("Cardiomegaly")
    assert a.youden_threshold == pytest.approx(thr[0]) and a.threshold_source == "validation"
    # no validation positives: no threshold to carry over, so no Youden numbers (AUC stays)
    assert c.auc is not None and c.youden_threshold is None and c.accuracy_at_youden is None
    assert c.threshold_source == "none on validation"
    with pytest.raises(ValueError, match="one value per finding: 3 for 14"):
        classification_metrics(y_test, y_test * 0.5, thresholds=[0.5] * 3)
