"""A classifier scored on a real test set, a synthetic test set, and both together.

If synthetic images carry their finding the way real ones do, a classifier trained on real
images should find it in them about as well: per-finding AUC, and accuracy and precision at
the Youden threshold (chosen on each set), for each set. A much higher AUC on synthetic
images says the painted findings are easier (exaggerated) than real ones; a much lower one,
that they are not recognisable. Computed with
:func:`augment.classifier.metrics.classification_metrics`; findings without positives (or
negatives) in a set are reported as missing (None), never as a number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from augment.classifier.metrics import classification_metrics
from augment.findings import FINDINGS

__all__ = ["SetRow", "SETS", "per_set_metrics", "score_sets", "rows_to_metrics"]

SETS = ("real", "synthetic", "combined")


@dataclass(frozen=True)
class SetRow:
    """One finding (or ``"macro"``) on one set; None = cannot be computed on this set."""

    finding: str
    set: str
    n_images: int
    n_pos: int
    auc: float | None
    youden_threshold: float | None
    accuracy_youden: float | None
    precision_youden: float | None
    sensitivity_youden: float | None
    specificity_youden: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(y: Any, p: Any, name: str, n_findings: int) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != n_findings or y.shape != p.shape:
        raise ValueError(f"{name} labels and probabilities must both be (N, {n_findings}); got {y.shape} and {p.shape}")
    return y, p


def per_set_metrics(
    y_real: Any,
    p_real: Any,
    y_synthetic: Any,
    p_synthetic: Any,
    findings: Sequence[str] = FINDINGS,
) -> list[SetRow]:
    """Per-finding rows (and a ``"macro"`` AUC row) for the real, synthetic and combined sets.

    Args:
        y_real, p_real: (N_r, F) multi-hot labels and probabilities of the real test set.
        y_synthetic, p_synthetic: (N_s, F) of the synthetic test set.
        findings: names of the F columns.

    Returns:
        Rows in set order (real, synthetic, combined), findings in ``findings`` order, each
        set ending with its macro row (mean AUC over findings that have one).
    """
    yr, pr = _check(y_real, p_real, "real", len(findings))
    ys, ps = _check(y_synthetic, p_synthetic, "synthetic", len(findings))
    data = {"real": (yr, pr), "synthetic": (ys, ps), "combined": (np.concatenate([yr, ys]), np.concatenate([pr, ps]))}
    rows: list[SetRow] = []
    for name in SETS:
        y, p = data[name]
        if len(y) == 0:
            continue
        m = classification_metrics(y, p, findings=findings)
        for f in m.per_finding:
            rows.append(
                SetRow(f.finding, name, len(y), f.n_positive, f.auc, f.youden_threshold, f.accuracy_at_youden,
                       f.precision_at_youden, f.sensitivity_at_youden, f.specificity_at_youden)
            )
        rows.append(SetRow("macro", name, len(y), int(y.sum()), m.macro_auc, None, None, None, None, None))
    return rows


def score_sets(
    model: nn.Module,
    real_images: torch.Tensor,
    real_labels: Any,
    synthetic_images: torch.Tensor,
    synthetic_labels: Any,
    batch_size: int = 32,
) -> list[SetRow]:
    """:func:`per_set_metrics` with the classifier's probabilities (``predict_proba``).

    Args:
        model: a classifier mapping (B, 1, H, W) in [0, 1] to (B, 14) logits; images are
            resized to its ``image_size`` when it has one.
        real_images, synthetic_images: (N, 1, H, W) in [0, 1].
        real_labels, synthetic_labels: (N, 14) multi-hot.
    """
    import torch.nn.functional as F

    from augment.classifier.predict import predict_proba

    s = getattr(model, "image_size", None)

    def probs(x: torch.Tensor) -> np.ndarray:
        if s and x.shape[-2:] != (s, s):
            x = F.interpolate(x.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        return predict_proba(model, x, batch_size=batch_size).numpy()

    return per_set_metrics(real_labels, probs(real_images), synthetic_labels, probs(synthetic_images))


def rows_to_metrics(rows: Sequence[SetRow], prefix: str = "") -> dict[str, float | None]:
    """``{prefix}{set}_auc_<finding>``, ``{prefix}{set}_acc_youden_<finding>``, ... for MLflow."""
    out: dict[str, float | None] = {}
    for r in rows:
        out[f"{prefix}{r.set}_auc_{r.finding}"] = r.auc
        if r.finding != "macro":
            out[f"{prefix}{r.set}_acc_youden_{r.finding}"] = r.accuracy_youden
            out[f"{prefix}{r.set}_precision_youden_{r.finding}"] = r.precision_youden
    return out
