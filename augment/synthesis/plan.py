"""Which healthy images get which finding: the augmentation plan.

Each finding asked for is brought up to ``target_count`` training positives (at most
``max_per_finding`` synthetic images each), rarest finding first. Healthy source images
are used round-robin in a seeded order, so sources are spread evenly. Every planned item
has its own seed and a stable id derived from what makes its image: the finding, the
source, the seeds and the generator's fingerprint (:func:`item_key`). A re-run of the same
plan with the same generator produces the same ids, so a resumed run skips exactly the
items already written; another seed, source or generator gives other ids, never a false
"done".
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from augment.data.nih import NIHIndex
from augment.findings import FINDINGS

__all__ = ["PlanItem", "item_key", "plan_augmentation"]


@dataclass(frozen=True)
class PlanItem:
    """One synthetic image to make.

    Attributes:
        item_id: stable id, e.g. ``"Hernia-00003-1f0c9a7be2"`` (finding, ordinal, :func:`item_key`).
        finding: target finding (NIH spelling).
        source: image index of the healthy source image.
        source_patient: its patient id (the synthetic image stays on that patient's side of a split).
        seed: per-item seed for reference choice and sampling.
        output_name: file name of the synthetic image in the pool's ``images/``.
    """

    item_id: str
    finding: str
    source: str
    source_patient: int
    seed: int
    output_name: str

    def to_dict(self) -> dict:
        return asdict(self)


def item_key(finding: str, ordinal: int, source: str, plan_seed: int, item_seed: int, generator: str) -> str:
    """Stable short hash (10 hex digits) of everything that decides an item's image.

    Args:
        finding: target finding.
        ordinal: the item's number within its finding in the plan.
        source: image index of the healthy source.
        plan_seed: the plan's seed (``augment.seed``).
        item_seed: the item's own seed.
        generator: the generator's fingerprint (:func:`augment.synthesis.fingerprint.generator_fingerprint`).
    """
    blob = json.dumps([finding, int(ordinal), source, int(plan_seed), int(item_seed), generator]).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def plan_augmentation(
    index: NIHIndex,
    findings: list[str],
    target_count: int,
    max_per_finding: int,
    seed: int = 0,
    *,
    generator: str,
) -> list[PlanItem]:
    """Plan the synthetic images for a training index.

    Args:
        index: the training split (sources are its healthy images).
        findings: findings to augment, NIH spelling, each once.
        target_count: positives per finding to reach (real + synthetic).
        max_per_finding: cap on synthetic images per finding.
        seed: seeds the order of sources and the per-item seeds (>= 0).
        generator: fingerprint of the generator that paints the items; part of every item id.

    Raises:
        ValueError: unknown or repeated finding, negative seed, empty generator
            fingerprint, or no healthy image to paint into.
    """
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; expected NIH names from {list(FINDINGS)}")
    repeated = sorted(f for f, n in Counter(findings).items() if n > 1)
    if repeated:
        raise ValueError(f"finding(s) {repeated} listed more than once in {list(findings)}; list each finding once")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}; set augment.seed to 0 or more")
    if not isinstance(generator, str) or not generator:
        raise ValueError(
            f"generator must be the generator's fingerprint (a non-empty string), got {generator!r}; "
            "compute it with augment.synthesis.generator_fingerprint(checkpoint)"
        )
    healthy = index.healthy()
    counts = index.counts()
    need = {f: max(0, min(max_per_finding, target_count - counts[f])) for f in findings}
    if any(need.values()) and not healthy:
        raise ValueError(f"{index.root}: the training split has no 'No Finding' image to paint findings into")
    rng = np.random.default_rng(seed)
    order = [healthy[i] for i in rng.permutation(len(healthy))] if healthy else []
    items: list[PlanItem] = []
    cursor = 0
    # Rarest first: when a run is cut short, the findings that need it most are done.
    for f in sorted(findings, key=lambda f: (counts[f], FINDINGS.index(f))):
        for k in range(need[f]):
            src = order[cursor % len(order)]
            cursor += 1
            item_seed = int(rng.integers(0, 2**31 - 1))
            key = item_key(f, k, src.image_index, int(seed), item_seed, generator)
            items.append(
                PlanItem(
                    item_id=f"{f}-{k:05d}-{key}",
                    finding=f,
                    source=src.image_index,
                    source_patient=src.patient_id,
                    seed=item_seed,
                    output_name=f"syn_{f.lower()}_{k:05d}_{key}_{src.image_index}",
                )
            )
    return items
