"""Train/validation/test splits by patient (no patient on two sides)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from augment.data.nih import DataError, NIHIndex

log = logging.getLogger(__name__)

__all__ = ["Split", "split_index"]


@dataclass(frozen=True)
class Split:
    """Three disjoint subsets of one index, and how they were made."""

    train: NIHIndex
    val: NIHIndex
    test: NIHIndex
    method: str  # "official" or "patient-seeded"

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _patient_partition(pids: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple[set[int], set[int]]:
    """Pick patients for (val, test) so that each holds about its fraction of the images."""
    uniq, counts = np.unique(pids, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    total = int(counts.sum())
    val_target, test_target = fractions[0] * total, fractions[1] * total
    val: set[int] = set()
    test: set[int] = set()
    n_val = n_test = 0
    for i in order:
        pid, c = int(uniq[i]), int(counts[i])
        if n_test < test_target:
            test.add(pid)
            n_test += c
        elif n_val < val_target:
            val.add(pid)
            n_val += c
    return val, test


def split_index(
    index: NIHIndex,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    use_official_lists: bool = True,
) -> Split:
    """Split an index by ``Patient ID``.

    With NIH's ``test_list.txt`` present (and ``use_official_lists``), its images form the
    test set and validation patients are drawn from the rest; otherwise test and validation
    patients are drawn with ``seed``. Either way no patient appears on two sides.

    Raises:
        DataError: too few patients to give every side at least one.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) with sum < 1"
        )
    recs = index.records
    pids = np.array([r.patient_id for r in recs])
    if len(np.unique(pids)) < 3:
        raise DataError(f"{index.root}: {len(np.unique(pids))} patient(s); a patient-wise split needs at least 3")
    if use_official_lists and index.official_test is not None:
        test_names = {r.image_index for r in recs if r.image_index in index.official_test}
        test_pids = {r.patient_id for r in recs if r.image_index in test_names}
        rest = np.array([r.patient_id for r in recs if r.patient_id not in test_pids])
        if len(rest) == 0:
            raise DataError(f"{index.root}: every patient is in test_list.txt; nothing left to train on")
        val_pids, _ = _patient_partition(rest, (val_fraction / (1 - test_fraction), 0.0), seed)
        method = "official"
    else:
        val_pids, test_pids = _patient_partition(pids, (val_fraction, test_fraction), seed)
        method = "patient-seeded"
    held_out = val_pids | test_pids  # once: rebuilding the union per row made NIH scale take a minute
    train = [r.image_index for r in recs if r.patient_id not in held_out]
    val = [r.image_index for r in recs if r.patient_id in val_pids]
    test = [r.image_index for r in recs if r.patient_id in test_pids]
    if not train or not val or not test:
        raise DataError(
            f"{index.root}: split gave train/val/test sizes {len(train)}/{len(val)}/{len(test)}; "
            "add images or change data.split fractions"
        )
    split = Split(index.subset(train), index.subset(val), index.subset(test), method)
    log.info("split %s: %s", method, split.sizes())
    return split
