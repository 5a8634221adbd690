"""The bank of diseased reference images that findings are carried from.

For each target finding, up to ``per_finding`` training images that show it are read once
(at the run's image size) with their attention maps for that finding. Registration then
picks, for each healthy source, the most similar references in the bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from augment.attention.base import AttentionSource
from augment.data.io import read_image
from augment.data.nih import NIHIndex

__all__ = ["ReferenceBank", "build_reference_bank"]


@dataclass(frozen=True)
class ReferenceBank:
    """Diseased references per finding.

    Attributes:
        ids: finding -> image indices.
        labels: finding -> their NIH "Finding Labels" strings.
        images: finding -> (N, 1, S, S) float32 in [0, 1].
        maps: finding -> (N, 1, S, S) attention maps of that finding, in [0, 1].
    """

    ids: dict[str, list[str]]
    labels: dict[str, list[str]]
    images: dict[str, torch.Tensor]
    maps: dict[str, torch.Tensor]

    def findings(self) -> list[str]:
        return list(self.ids)


def build_reference_bank(
    index: NIHIndex,
    findings: list[str],
    size: int,
    attention: AttentionSource,
    per_finding: int = 32,
    seed: int = 0,
) -> ReferenceBank:
    """Read the references of each finding and their attention maps.

    References whose map is empty (the source found nothing) are dropped.

    Raises:
        ValueError: a finding with no usable reference in ``index``.
    """
    rng = np.random.default_rng(seed)
    ids: dict[str, list[str]] = {}
    labels: dict[str, list[str]] = {}
    images: dict[str, torch.Tensor] = {}
    maps: dict[str, torch.Tensor] = {}
    for f in findings:
        recs = index.with_finding(f)
        if not recs:
            raise ValueError(f"no training image shows {f}: it cannot be carried onto healthy images; drop it from augment.findings")
        if len(recs) > per_finding:
            recs = [recs[i] for i in sorted(rng.choice(len(recs), per_finding, replace=False))]
        imgs = torch.from_numpy(np.stack([read_image(index.path(r), size) for r in recs]))[:, None]
        m = attention.finding_map(imgs, f, image_ids=[r.image_index for r in recs])
        keep = m.flatten(1).amax(dim=1) > 0
        if not bool(keep.any()):
            raise ValueError(f"the {attention.name} attention source gave empty maps for every {f} reference")
        ids[f] = [r.image_index for r, k in zip(recs, keep.tolist()) if k]
        labels[f] = ["|".join(r.labels) for r, k in zip(recs, keep.tolist()) if k]
        images[f] = imgs[keep].contiguous()
        maps[f] = m[keep].contiguous()
    return ReferenceBank(ids, labels, images, maps)
