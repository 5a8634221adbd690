"""The long-tail benchmark's statistics: many arms against one base, over seeds and patients.

Every arm (real only, oversampling, loss weighting, copy-paste, a generator's pool, more real
data) trains the classifier with the same seeds and is scored on one test set. For each arm
and each finding (plus the rare-finding macro AUC) :func:`longtail_table` reports

- the mean AUC over seeds with its 95% t-interval;
- the paired difference against ``base`` (seed by seed) with two intervals: a t-interval over
  seeds (training noise) and a patient-level bootstrap of the test set (which patients happened
  to be tested), where each resample draws whole patients and the difference is averaged over
  seeds on that resample;
- the share of the base-to-ceiling gap the arm closes on the rare macro AUC.

The bootstrap is vectorised: a resample is a vector of image multiplicities (how many times
each image's patient was drawn), and a weighted AUC (Mann-Whitney with ties counted half) is
computed for all resamples at once from one sort of the scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from augment.data.nih import NIHIndex
from augment.evaluation.utility import mean_interval
from augment.findings import FINDINGS

__all__ = ["ArmRow", "oversample_index", "weighted_auc", "patient_multiplicities", "longtail_table", "longtail_figure"]

RARE_MACRO = "rare macro"


def oversample_index(index: NIHIndex, copies: Mapping[str, int], seed: int = 0) -> NIHIndex:
    """``index`` plus ``copies[f]`` repeated rows of each finding f's positives (round-robin over
    a seeded shuffle, so every positive is repeated about equally).

    The copies are the same rows: the classifier's training augmentation (random affine and
    intensity per draw) makes each pass differ. A finding without a positive adds nothing.
    """
    bad = {f: c for f, c in copies.items() if c < 0}
    if bad:
        raise ValueError(f"copies must be >= 0, got {bad}")
    rng = np.random.default_rng([seed, 17])
    extra = []
    for f, n in copies.items():
        pos = index.with_finding(f)
        if not pos:
            continue
        order = rng.permutation(len(pos))
        extra.extend(pos[order[k % len(pos)]] for k in range(n))
    return replace(index, records=index.records + tuple(extra))


def patient_multiplicities(groups: Sequence[Any], n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, N) how many times each image is drawn when whole patients are resampled."""
    _, codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    n_pat = int(codes.max()) + 1 if len(codes) else 0
    rng = np.random.default_rng([seed, 29])
    draws = rng.integers(0, n_pat, size=(n_boot, n_pat))
    counts = np.zeros((n_boot, n_pat), np.float64)
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_pat), draws.ravel()), 1.0)
    return counts[:, codes]


def weighted_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of ``score`` for binary ``y`` under each row of ``weights`` (R, N); ties count half.

    Returns (R,) AUCs, NaN where a row has no positive or no negative weight.
    """
    y = np.asarray(y).astype(bool)
    w = np.atleast_2d(np.asarray(weights, np.float64))
    uniq, inv = np.unique(np.asarray(score, np.float64), return_inverse=True)
    k = len(uniq)
    onehot = np.zeros((len(y), k))
    onehot[np.arange(len(y)), inv] = 1.0
    pos = (w * y) @ onehot  # (R, K) positive weight at each distinct score
    neg = (w * ~y) @ onehot
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


@dataclass(frozen=True)
class ArmRow:
    """One arm's result on one key (a finding or ``"rare macro"``).

    Attributes:
        arm, key: what was measured.
        n_seeds: seeds with a value.
        auc, auc_low, auc_high: mean AUC over seeds and its 95% t-interval.
        delta, delta_low, delta_high: mean paired difference against base over seeds, t-interval.
        boot_low, boot_high: the difference's 95% patient-level bootstrap interval of the test
            set (seed-averaged on each resample); None for base or without resamples.
        boot_missing: resamples in which the key had no AUC (no positive drawn): counted, left out.
        gap_closed: (arm - base) / (ceiling - base) on this key, only where the ceiling arm ran
            and its gain over base has an interval above zero (else None: no gap to close).
    """

    arm: str
    key: str
    n_seeds: int
    auc: float | None
    auc_low: float | None
    auc_high: float | None
    delta: float | None = None
    delta_low: float | None = None
    delta_high: float | None = None
    boot_low: float | None = None
    boot_high: float | None = None
    boot_missing: int = 0
    gap_closed: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_seed_aucs(y: np.ndarray, preds: Sequence[np.ndarray], cols: Sequence[int], w: np.ndarray) -> np.ndarray:
    """(S, len(cols), R) AUC of every seed's predictions on every key under each weight row."""
    return np.stack([np.stack([weighted_auc(y[:, j], p[:, j], w) for j in cols]) for p in preds])


def longtail_table(
    y_true: np.ndarray,
    groups: Sequence[Any],
    preds: Mapping[str, Sequence[np.ndarray]],
    rare: Sequence[str],
    base: str = "base",
    ceiling: str = "ceiling",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[ArmRow]:
    """Every arm against ``base`` on the rare findings and their macro AUC.

    Args:
        y_true: (N, 14) multi-hot labels of the test images.
        groups: (N,) the patient of each test image (the bootstrap draws whole patients).
        preds: arm -> one (N, 14) probability array per seed, seed i of every arm trained with
            the same seed (the difference is paired by position).
        rare: the findings to report (each must have positives and negatives in ``y_true``).
        base, ceiling: the reference arm and the upper bound (absent: no gap column).
        n_boot: bootstrap resamples (0: no bootstrap interval).

    Returns:
        Rows arm by arm (in ``preds`` order), each arm's findings then ``"rare macro"``.
    """
    y = np.asarray(y_true)
    if base not in preds:
        raise ValueError(f"the base arm {base!r} is needed: every difference is against it; got {list(preds)}")
    n_seeds = len(preds[base])
    bad = {a: len(p) for a, p in preds.items() if len(p) != n_seeds}
    if bad:
        raise ValueError(f"every arm needs the same seeds as {base} ({n_seeds}), paired by position; got {bad}")
    unknown = [f for f in rare if f not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; use NIH's spelling")
    cols = [FINDINGS.index(f) for f in rare]
    for f, j in zip(rare, cols):
        if not 0 < y[:, j].sum() < len(y):
            raise ValueError(f"the test set has no positives or no negatives of {f}: its AUC is undefined")
    if len(groups) != len(y):
        raise ValueError(f"groups must give one patient per test image: {len(groups)} for {len(y)}")
    full = np.ones((1, len(y)))
    wb = patient_multiplicities(groups, n_boot, seed) if n_boot else np.zeros((0, len(y)))
    point = {a: _per_seed_aucs(y, p, cols, full)[:, :, 0] for a, p in preds.items()}  # (S, K)
    boot = {a: _per_seed_aucs(y, p, cols, wb) for a, p in preds.items()} if n_boot else {}  # (S, K, R)
    keys = list(rare) + [RARE_MACRO]

    def with_macro(a: np.ndarray, axis: int) -> np.ndarray:
        return np.concatenate([a, a.mean(axis=axis, keepdims=True)], axis=axis)

    pts = {a: with_macro(v, 1) for a, v in point.items()}
    bts = {a: with_macro(v, 1) for a, v in boot.items()}
    lo_q, hi_q = 100 * alpha / 2, 100 * (1 - alpha / 2)
    rows: list[ArmRow] = []
    for arm in preds:
        for k, key in enumerate(keys):
            n, m, lo, hi, _, _ = mean_interval(list(pts[arm][:, k]), alpha)
            row = ArmRow(arm, key, n, m, lo, hi)
            if arm != base:
                d = pts[arm][:, k] - pts[base][:, k]
                _, dm, dlo, dhi, _, _ = mean_interval(list(d), alpha)
                blo = bhi = None
                missing = 0
                if n_boot:
                    bd = np.nanmean(bts[arm][:, k, :] - bts[base][:, k, :], axis=0) if n_seeds else np.full(n_boot, np.nan)
                    ok = bd[~np.isnan(bd)]
                    missing = n_boot - len(ok)
                    if len(ok) >= 0.9 * n_boot:
                        blo, bhi = float(np.percentile(ok, lo_q)), float(np.percentile(ok, hi_q))
                row = replace(row, delta=dm, delta_low=dlo, delta_high=dhi, boot_low=blo, boot_high=bhi,
                              boot_missing=missing)
            rows.append(row)
    # The gap is only a yardstick where the ceiling clearly beats base: its interval (the
    # patient bootstrap, else the one over seeds) above zero. A ceiling within noise of base
    # would turn any small difference into a huge "share of the gap".
    ceil = {r.key: r for r in rows if r.arm == ceiling}
    out = []
    for r in rows:
        c = ceil.get(r.key)
        low = None if c is None else (c.boot_low if c.boot_low is not None else c.delta_low)
        if r.arm != base and c is not None and low is not None and low > 0 and r.delta is not None:
            r = replace(r, gap_closed=r.delta / c.delta)
        out.append(r)
    return out


def longtail_figure(rows: Sequence[ArmRow], title: str = "rare-finding AUC by arm (mean over seeds, 95% t-interval)"):
    """One group of bars per key, one bar per arm, t-interval whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(r.key for r in rows))
    arms = list(dict.fromkeys(r.arm for r in rows))
    by = {(r.arm, r.key): r for r in rows}
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(keys) * max(1, len(arms)) / 4, 4))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        xs, ms, errs = [], [], [[], []]
        for k, key in enumerate(keys):
            r = by.get((arm, key))
            if r is None or r.auc is None:
                continue
            xs.append(k + (i - (len(arms) - 1) / 2) * width)
            ms.append(r.auc)
            errs[0].append(0.0 if r.auc_low is None else r.auc - r.auc_low)
            errs[1].append(0.0 if r.auc_high is None else r.auc_high - r.auc)
        ax.bar(xs, ms, width, yerr=errs, capsize=2, label=arm)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(range(len(keys)), keys)
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel("test AUC")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="lower center")
    fig.tight_layout()
    return fig
