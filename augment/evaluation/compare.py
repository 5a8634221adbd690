"""Base vs augmented classifier on the same held-out images, with paired bootstrap intervals.

Both classifiers are scored on the same test images, so the difference in AUC is judged by
resampling *patients* (with replacement, each with all of its images) and recomputing both
AUCs on each resample: the 95% interval of the difference says whether augmentation helped,
hurt, or cannot be told apart on this many test patients. Resampling images instead treats
a patient's follow-ups as independent and gives intervals that are too narrow.

The findings compared are fixed once, on the full test split (those with positives and
negatives); a resample in which one of them has no positives (or no negatives) has no AUC
for it. Such resamples are counted and reported in ``n_missing``, never silently dropped:
a finding's interval is given when at least 90% of resamples could score it, and the macro
row's resample counts only when every fixed finding could be scored (the same set of
findings in every resample). Findings without positives (or negatives) in the test split
are reported as missing, never as a number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from augment.findings import FINDINGS

__all__ = ["AUCComparison", "compare_auc", "comparison_figure"]


@dataclass(frozen=True)
class AUCComparison:
    """One finding (or ``"macro"``): AUC of each model, their difference and its interval."""

    finding: str
    n_positive: int
    auc_base: float | None
    auc_augmented: float | None
    delta: float | None
    delta_low: float | None
    delta_high: float | None
    n_missing: int = 0
    n_boot: int = 0
    resampled: str = "patient"

    @property
    def verdict(self) -> str:
        if self.delta is None:
            return "missing"
        if self.delta_low is None or self.delta_high is None:
            return "too few positives for an interval"
        if self.delta_low > 0:
            return "better"
        if self.delta_high < 0:
            return "worse"
        return "no clear difference"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def _aucs(y: np.ndarray, p: np.ndarray, cols: list[int]) -> np.ndarray:
    out = np.full(len(cols), np.nan)
    for k, j in enumerate(cols):
        yj = y[:, j]
        if 0 < yj.sum() < len(yj):
            out[k] = roc_auc_score(yj, p[:, j])
    return out


def compare_auc(
    y_true: np.ndarray,
    p_base: np.ndarray,
    p_aug: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence | None = None,
) -> list[AUCComparison]:
    """Per-finding and macro AUC of two models on the same images, with paired bootstrap CIs.

    Args:
        y_true: (N, 14) multi-hot labels.
        p_base, p_aug: (N, 14) probabilities of the two models on the same images.
        n_boot: bootstrap resamples.
        seed: seeds the resampling.
        alpha: 0.05 gives 95% intervals.
        groups: (N,) the patient of each image; resampling draws whole patients. None
            resamples images (only right when every image is its own patient).

    Returns:
        One row per finding (in :data:`FINDINGS` order), then a ``"macro"`` row (mean over
        the findings that have an AUC on the full set).

    Raises:
        ValueError: shapes that do not match, ``groups`` of another length.
    """
    y = np.asarray(y_true)
    pb, pa = np.asarray(p_base, np.float64), np.asarray(p_aug, np.float64)
    if not (y.shape == pb.shape == pa.shape) or y.ndim != 2 or y.shape[1] != len(FINDINGS):
        raise ValueError(f"y_true, p_base, p_aug must all be (N, {len(FINDINGS)}); got {y.shape}, {pb.shape}, {pa.shape}")
    n = y.shape[0]
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups must give one patient per image: {len(groups)} for {n} images")
    _, codes = np.unique(np.asarray([str(g) for g in groups]) if groups is not None else np.arange(n), return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)] if n else []
    cols = list(range(len(FINDINGS)))
    base, aug = _aucs(y, pb, cols), _aucs(y, pa, cols)
    valid = [j for j in cols if not np.isnan(base[j])]
    rng = np.random.default_rng(seed)
    deltas = np.full((n_boot, len(cols)), np.nan)
    macro = np.full(n_boot, np.nan)
    for b in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        d = _aucs(y[idx], pa[idx], valid) - _aucs(y[idx], pb[idx], valid)
        deltas[b, valid] = d
        if valid and not np.any(np.isnan(d)):
            macro[b] = np.mean(d)
    lo_q, hi_q = 100 * alpha / 2, 100 * (1 - alpha / 2)

    def interval(samples: np.ndarray) -> tuple[float | None, float | None, int]:
        s = samples[~np.isnan(samples)]
        missing = n_boot - len(s)
        if n_boot == 0 or len(s) < 0.9 * n_boot:
            return None, None, missing
        return float(np.percentile(s, lo_q)), float(np.percentile(s, hi_q)), missing

    how = "patient" if groups is not None else "image"
    rows = []
    for j, f in enumerate(FINDINGS):
        ok = j in valid
        lo, hi, miss = interval(deltas[:, j]) if ok else (None, None, 0)
        rows.append(
            AUCComparison(
                finding=f,
                n_positive=int(y[:, j].sum()),
                auc_base=float(base[j]) if ok else None,
                auc_augmented=float(aug[j]) if ok else None,
                delta=float(aug[j] - base[j]) if ok else None,
                delta_low=lo,
                delta_high=hi,
                n_missing=miss,
                n_boot=n_boot if ok else 0,
                resampled=how,
            )
        )
    if valid:
        mb, ma = float(np.mean(base[valid])), float(np.mean(aug[valid]))
        lo, hi, miss = interval(macro)
        rows.append(AUCComparison("macro", int(y.sum()), mb, ma, ma - mb, lo, hi, miss, n_boot, how))
    else:
        rows.append(AUCComparison("macro", int(y.sum()), None, None, None, None, None, 0, 0, how))
    return rows


def comparison_figure(rows: list[AUCComparison], title: str = "base vs augmented (test split)"):
    """Bar chart of per-finding AUC, base vs augmented, with the delta's interval as text."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.auc_base is not None]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(shown) + 2), 3.6))
    if not shown:
        ax.text(0.5, 0.5, "no finding has positives and negatives in the test split", ha="center", va="center")
        ax.axis("off")
        return fig
    x = np.arange(len(shown))
    ax.bar(x - 0.2, [r.auc_base for r in shown], 0.4, label="base (real)")
    ax.bar(x + 0.2, [r.auc_augmented for r in shown], 0.4, label="augmented (real + synthetic)")
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xticks(x, [r.finding for r in shown], rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AUC")
    ax.set_title(title, fontsize=9)
    for k, r in enumerate(shown):
        if r.delta_low is not None:
            ax.text(k, 1.0, f"{r.delta:+.2f}\n[{r.delta_low:+.2f},{r.delta_high:+.2f}]", ha="center", va="bottom", fontsize=5.5)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
