"""Classifier metrics as the source papers report them, with scikit-learn underneath.

Per finding: ROC AUC, and accuracy and precision at the fixed threshold 0.5 and at the
Youden-optimal threshold (maximising sensitivity + specificity - 1). A test split's numbers
at "the Youden threshold" are honest only when the threshold was chosen on another split:
pass the validation split's thresholds (``thresholds=``, from :func:`youden_thresholds`) and
the result says so (``threshold_source="validation"``); without them the threshold is chosen
on the scored split itself (``"same split"``), which flatters accuracy and precision.
Macro AUC averages the findings that have both positives and negatives. A finding without
positives (or without negatives) in a split has no AUC and no Youden threshold: those
entries are ``None`` ("missing"), never a made-up 0.5 or 0. Precision is ``None`` when
nothing is predicted positive or the split has no positives.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from augment.findings import FINDINGS

__all__ = ["FindingMetrics", "ClassifierMetrics", "youden_threshold", "youden_thresholds", "finding_metrics",
           "classification_metrics", "loss_gap"]


@dataclass(frozen=True)
class FindingMetrics:
    """Metrics of one finding on one split; ``None`` means "cannot be computed here"."""

    finding: str
    n_positive: int
    n_negative: int
    auc: float | None
    accuracy_at_05: float
    precision_at_05: float | None
    youden_threshold: float | None
    accuracy_at_youden: float | None
    precision_at_youden: float | None
    sensitivity_at_youden: float | None
    specificity_at_youden: float | None
    threshold_source: str = "same split"

    @property
    def missing(self) -> bool:
        """True when the split has no positives or no negatives (no AUC, no threshold)."""
        return self.auc is None


@dataclass(frozen=True)
class ClassifierMetrics:
    """Metrics of one split: per finding, the macro AUC and the mean BCE loss."""

    per_finding: tuple[FindingMetrics, ...]
    macro_auc: float | None
    loss: float | None
    n_images: int

    @property
    def missing_findings(self) -> tuple[str, ...]:
        """Findings without an AUC on this split (no positives or no negatives)."""
        return tuple(m.finding for m in self.per_finding if m.missing)

    def finding(self, name: str) -> FindingMetrics:
        for m in self.per_finding:
            if m.finding == name:
                return m
        raise KeyError(f"no metrics for finding {name!r}; have {[m.finding for m in self.per_finding]}")

    def table(self) -> list[dict[str, Any]]:
        """One row per finding (for CSV/JSON artifacts)."""
        return [asdict(m) for m in self.per_finding]

    def flat(self, prefix: str = "val") -> dict[str, float | None]:
        """``{prefix}_loss``, ``{prefix}_macro_auc``, ``{prefix}_auc_<finding>``, ... for MLflow.

        Missing values stay ``None``; :func:`augment.tracking.metrics_to_mlflow` skips them.
        """
        out: dict[str, float | None] = {f"{prefix}_loss": self.loss, f"{prefix}_macro_auc": self.macro_auc}
        for m in self.per_finding:
            out[f"{prefix}_auc_{m.finding}"] = m.auc
            out[f"{prefix}_acc_youden_{m.finding}"] = m.accuracy_at_youden
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "loss": self.loss,
            "macro_auc": self.macro_auc,
            "missing_findings": list(self.missing_findings),
            "per_finding": self.table(),
        }


def _check(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must have the same shape")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1 (multi-hot labels)")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score holds NaN or infinite values")
    return y_true.astype(np.int64), y_score


def youden_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """The score threshold maximising Youden's J = TPR - FPR (predict positive at ``>=``).

    Ties go to the highest threshold (the first ROC point reaching the maximum). Returns
    ``None`` when ``y_true`` lacks positives or negatives.
    """
    y_true, y_score = _check(y_true, y_score)
    if y_true.min() == y_true.max():
        return None
    fpr, tpr, thr = roc_curve(y_true, y_score, drop_intermediate=False)
    j = tpr - fpr
    best = int(np.argmax(j))
    t = float(thr[best])
    if not math.isfinite(t):  # sklearn's first point (inf) predicts nothing positive
        t = float(np.nextafter(y_score.max(), np.inf))
    return t


def _acc_prec(y_true: np.ndarray, pred: np.ndarray) -> tuple[float, float | None, float | None, float | None]:
    tp = int(((pred == 1) & (y_true == 1)).sum())
    tn = int(((pred == 0) & (y_true == 0)).sum())
    fp = int(((pred == 1) & (y_true == 0)).sum())
    fn = int(((pred == 0) & (y_true == 1)).sum())
    acc = (tp + tn) / max(len(y_true), 1)
    prec = tp / (tp + fp) if tp + fp > 0 and tp + fn > 0 else None
    sens = tp / (tp + fn) if tp + fn > 0 else None
    spec = tn / (tn + fp) if tn + fp > 0 else None
    return acc, prec, sens, spec


def youden_thresholds(y_true: np.ndarray, y_prob: np.ndarray) -> list[float | None]:
    """:func:`youden_threshold` of every column of (N, F) labels and probabilities (a validation split's)."""
    y_true, y_prob = _check(y_true, y_prob)
    if y_true.ndim != 2:
        raise ValueError(f"expected (N, F) arrays, got {y_true.shape}")
    return [youden_threshold(y_true[:, i], y_prob[:, i]) for i in range(y_true.shape[1])]


def finding_metrics(finding: str, y_true: np.ndarray, y_score: np.ndarray, threshold: float | None = None,
                    threshold_source: str = "validation") -> FindingMetrics:
    """Metrics of one finding from its (N,) labels and probabilities.

    Args:
        threshold: the operating threshold, chosen elsewhere (on validation); None chooses
            Youden's threshold on these scores themselves (``threshold_source="same split"``).
        threshold_source: where ``threshold`` was chosen, recorded in the result.
    """
    y_true, y_score = _check(y_true, y_score)
    if y_true.ndim != 1:
        raise ValueError(f"finding_metrics expects 1-D arrays, got shape {y_true.shape}")
    n_pos = int(y_true.sum())
    n_neg = int(len(y_true) - n_pos)
    acc05, prec05, _, _ = _acc_prec(y_true, (y_score >= 0.5).astype(np.int64))
    source = "same split" if threshold is None else threshold_source
    if n_pos == 0 or n_neg == 0:
        return FindingMetrics(finding, n_pos, n_neg, None, acc05, prec05, None, None, None, None, None, source)
    auc = float(roc_auc_score(y_true, y_score))
    thr = youden_threshold(y_true, y_score) if threshold is None else float(threshold)
    acc_y, prec_y, sens_y, spec_y = _acc_prec(y_true, (y_score >= thr).astype(np.int64))
    return FindingMetrics(finding, n_pos, n_neg, auc, acc05, prec05, thr, acc_y, prec_y, sens_y, spec_y, source)


def classification_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    loss: float | None = None,
    findings: Sequence[str] = FINDINGS,
    thresholds: Sequence[float | None] | None = None,
) -> ClassifierMetrics:
    """Per-finding and macro metrics of a split.

    Args:
        y_true: (N, F) multi-hot labels.
        y_prob: (N, F) probabilities (sigmoid of the logits).
        loss: the split's mean BCE loss, carried along.
        findings: names of the F columns.
        thresholds: F operating thresholds chosen on the validation split
            (:func:`youden_thresholds`); a None entry (no positives in validation) leaves
            that finding without Youden numbers rather than tuning on this split. Without
            ``thresholds`` each is chosen on this split (for training curves, not reports).
    """
    y_true, y_prob = _check(y_true, y_prob)
    if y_true.ndim != 2 or y_true.shape[1] != len(findings):
        raise ValueError(f"expected (N, {len(findings)}) arrays, got {y_true.shape}")
    if thresholds is not None and len(thresholds) != len(findings):
        raise ValueError(f"thresholds must give one value per finding: {len(thresholds)} for {len(findings)}")
    per = []
    for i, f in enumerate(findings):
        m = finding_metrics(f, y_true[:, i], y_prob[:, i], None if thresholds is None else thresholds[i])
        if thresholds is not None and thresholds[i] is None and m.auc is not None:
            m = replace(m, youden_threshold=None, accuracy_at_youden=None, precision_at_youden=None,
                        sensitivity_at_youden=None, specificity_at_youden=None, threshold_source="none on validation")
        per.append(m)
    aucs = [m.auc for m in per if m.auc is not None]
    macro = float(np.mean(aucs)) if aucs else None
    return ClassifierMetrics(tuple(per), macro, None if loss is None else float(loss), int(y_true.shape[0]))


def loss_gap(train_loss: float, val_loss: float) -> float:
    """The source paper's overfitting measure: validation minus training loss.

    The issue calls it the "train minus validation loss gap"; the paper's numbers (a gap
    shrinking from 0.0083 to 0.0076) are the distance between the curves, which is positive
    when the model overfits, so the sign is ``val - train``.
    """
    return float(val_loss) - float(train_loss)
