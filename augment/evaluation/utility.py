"""Utility of augmentation over repeated runs: mean and t-interval over seeds; data fractions.

One base-vs-augmented comparison on one seed mixes the effect of augmentation with the
noise of training. :func:`aggregate_over_seeds` takes per-seed results (per-finding AUC,
macro AUC, train-val loss gap) of both arms and reports, per key, the mean and a 95%
Student-t interval over seeds for each arm and for the paired difference (augmented minus
base, seed by seed). With one seed there is no interval: it is reported as unavailable,
never invented. :func:`subsample_fraction` keeps a fraction (1%, 10%, 100%) of a training
split with whole patients, for the low-data settings where augmentation should matter most.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from augment.data.nih import Record
from augment.findings import FINDINGS, NO_FINDING

__all__ = ["SeedAggregate", "mean_interval", "seed_values", "aggregate_over_seeds", "subsample_fraction", "utility_figure"]

NO_INTERVAL = "interval unavailable: needs at least 2 seeds"


@dataclass(frozen=True)
class SeedAggregate:
    """Mean over seeds of one key (a finding, ``"macro"``, ``"loss_gap"``) for one arm.

    Attributes:
        key: what was measured.
        arm: ``"base"``, ``"augmented"`` or ``"delta"`` (augmented - base, paired by seed).
        n_seeds: seeds with a value (missing values are left out, not zero).
        mean: mean over those seeds, or None without any.
        low, high: (1 - alpha) t-interval of the mean, None with fewer than 2 seeds.
        std: sample standard deviation (ddof 1), None with fewer than 2 seeds.
        note: why an entry is None.
    """

    key: str
    arm: str
    n_seeds: int
    mean: float | None
    low: float | None
    high: float | None
    std: float | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_interval(values: Sequence[float | None], alpha: float = 0.05) -> tuple[int, float | None, float | None, float | None, float | None, str]:
    """(n, mean, low, high, std, note) of the non-missing values; t-interval with n - 1 dof.

    ``low, high = mean -/+ t_{1 - alpha/2, n-1} * std / sqrt(n)``; None with n < 2.
    """
    from scipy import stats

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    v = np.array([float(x) for x in values if x is not None and math.isfinite(float(x))], dtype=np.float64)
    n = len(v)
    if n == 0:
        return 0, None, None, None, None, "no seed has a value"
    mean = float(v.mean())
    if n < 2:
        return 1, mean, None, None, None, NO_INTERVAL
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * std / math.sqrt(n)
    return n, mean, mean - half, mean + half, std, ""


def seed_values(metrics: Any, loss_gap: float | None = None) -> dict[str, float | None]:
    """One seed's entry from a :class:`augment.classifier.metrics.ClassifierMetrics`.

    Returns:
        ``{finding: auc, ..., "macro": macro_auc, "loss_gap": loss_gap}``.
    """
    out: dict[str, float | None] = {m.finding: m.auc for m in metrics.per_finding}
    out["macro"] = metrics.macro_auc
    if loss_gap is not None:
        out["loss_gap"] = float(loss_gap)
    return out


def _keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {k for r in runs for k in r}
    ordered = [f for f in FINDINGS if f in present] + [k for k in ("macro", "loss_gap") if k in present]
    return ordered + sorted(present - set(ordered))


def aggregate_over_seeds(
    base: Sequence[Mapping[str, float | None]],
    augmented: Sequence[Mapping[str, float | None]],
    alpha: float = 0.05,
) -> list[SeedAggregate]:
    """Mean and t-interval over seeds per key, for each arm and their paired difference.

    Args:
        base: one mapping per seed, e.g. ``{"Effusion": 0.81, ..., "macro": 0.74,
            "loss_gap": 0.008}`` (see :func:`seed_values`); None or absent = missing.
        augmented: the same for the augmented arm; entry i must be the same seed as
            ``base[i]`` (the difference is paired), so both need the same length.
        alpha: 0.05 gives 95% intervals.

    Returns:
        For each key (findings in :data:`FINDINGS` order, then macro, loss_gap, others),
        three rows: base, augmented, delta.
    """
    if len(base) == 0 or len(base) != len(augmented):
        raise ValueError(
            f"need the same number (>= 1) of seeds for both arms, paired by position; got {len(base)} base and {len(augmented)} augmented"
        )
    rows: list[SeedAggregate] = []
    for key in _keys(list(base) + list(augmented)):
        b = [r.get(key) for r in base]
        a = [r.get(key) for r in augmented]
        d = [None if x is None or y is None else float(y) - float(x) for x, y in zip(b, a)]
        for arm, vals in (("base", b), ("augmented", a), ("delta", d)):
            rows.append(SeedAggregate(key, arm, *mean_interval(vals, alpha)))
    return rows


def _stratum(recs: list[Record], rarity: dict[str, int]) -> str:
    labels = {lab for r in recs for lab in r.labels if lab != NO_FINDING}
    if not labels:
        return NO_FINDING
    return min(labels, key=lambda lab: (rarity[lab], lab))


def subsample_fraction(records: Sequence[Record], fraction: float, seed: int = 0) -> tuple[Record, ...]:
    """Keep about ``fraction`` of the images of a training split, whole patients only.

    Patients are grouped by their rarest finding (or No Finding), so that rare findings keep
    their share; within each group whole patients are drawn at random (``seed``) until the
    group holds the nearest count to ``fraction`` of its images; groups too small for a
    whole patient are then made up for from the remaining patients, towards ``fraction``
    of all images. At least one patient is kept.

    Args:
        records: the training split's records.
        fraction: in (0, 1]; 1 keeps everything.
        seed: picks the patients.

    Returns:
        The kept records, in their original order.

    Raises:
        ValueError: ``fraction`` outside (0, 1], no records, or a fraction that keeps less
            than one image.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1] (e.g. 0.01, 0.1, 1.0), got {fraction}")
    n = len(records)
    if n == 0:
        raise ValueError("subsample_fraction got no records; check the training split")
    if fraction * n < 1:
        raise ValueError(
            f"fraction {fraction} of {n} images keeps {fraction * n:.2g} images, i.e. none; "
            f"use a fraction >= {1 / n:.3g} or a larger training split"
        )
    if fraction == 1:
        return tuple(records)
    by_patient: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_patient[r.patient_id].append(r)
    rarity = Counter(lab for r in records for lab in r.labels)
    groups: dict[str, list[int]] = defaultdict(list)
    for pid, recs in by_patient.items():
        groups[_stratum(recs, rarity)].append(pid)
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for name in sorted(groups):
        pids = sorted(groups[name])
        target = fraction * sum(len(by_patient[p]) for p in pids)
        count = 0
        for k in rng.permutation(len(pids)):
            size = len(by_patient[pids[k]])
            if abs(count + size - target) < abs(count - target):  # only while it brings us closer
                keep.add(pids[k])
                count += size
    # groups too small for one patient each can leave the total short: top up from the rest
    total = sum(len(by_patient[p]) for p in keep)
    rest = sorted(set(by_patient) - keep)
    for k in rng.permutation(len(rest)):
        size = len(by_patient[rest[k]])
        if abs(total + size - fraction * n) < abs(total - fraction * n):
            keep.add(rest[k])
            total += size
    if not keep:  # every patient has more images than the target: keep the smallest one
        keep.add(min(by_patient, key=lambda p: (len(by_patient[p]), p)))
    return tuple(r for r in records if r.patient_id in keep)


def utility_figure(rows: Sequence[SeedAggregate], title: str = "AUC over seeds (mean, 95% t-interval)"):
    """Per-key means of both arms with their intervals as error bars; a Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = [k for k in dict.fromkeys(r.key for r in rows) if k != "loss_gap"]
    get = {(r.key, r.arm): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(keys) + 2), 3.6))
    x = np.arange(len(keys))
    for off, arm in ((-0.2, "base"), (0.2, "augmented")):
        means = [get[(k, arm)].mean if get.get((k, arm)) and get[(k, arm)].mean is not None else np.nan for k in keys]
        err = np.array([
            [m - r.low, r.high - m] if (r := get.get((k, arm))) and r.low is not None and r.mean is not None else [0.0, 0.0]
            for k, m in zip(keys, means)
        ]).T.reshape(2, len(keys))
        ax.bar(x + off, means, 0.4, yerr=err, capsize=2, label=arm)
    ax.set_xticks(x, keys, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_ylabel("AUC")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
