"""Which healthy images get which finding: the augmentation plan.

Each finding asked for is brought up to ``target_count`` training positives (at most
``max_per_finding`` synthetic images each), rarest finding first. Healthy source images
are used round-robin in a seeded order, so sources are spread evenly. Every planned item
has a stable id and its own seed: a re-run of the same plan produces the same items, and
a resumed run can skip the ones already written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from augment.data.nih import NIHIndex
from augment.findings import FINDINGS

__all__ = ["PlanItem", "plan_augmentation"]


@dataclass(frozen=True)
class PlanItem:
    """One synthetic image to make.

    Attributes:
        item_id: stable id, e.g. ``"Hernia-00003"``.
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


def plan_augmentation(
    index: NIHIndex,
    findings: list[str],
    target_count: int,
    max_per_finding: int,
    seed: int = 0,
) -> list[PlanItem]:
    """Plan the synthetic images for a training index.

    Args:
        index: the training split (sources are its healthy images).
        findings: findings to augment, NIH spelling.
        target_count: positives per finding to reach (real + synthetic).
        max_per_finding: cap on synthetic images per finding.
        seed: seeds the order of sources and the per-item seeds.

    Raises:
        ValueError: unknown finding, or no healthy image to paint into.
    """
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; expected NIH names from {list(FINDINGS)}")
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
            item_id = f"{f}-{k:05d}"
            items.append(
                PlanItem(
                    item_id=item_id,
                    finding=f,
                    source=src.image_index,
                    source_patient=src.patient_id,
                    seed=item_seed,
                    output_name=f"syn_{f.lower()}_{k:05d}_{src.image_index}",
                )
            )
    return items
