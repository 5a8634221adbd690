"""The method's one chain, typed: choose a reference -> carry its region -> paint.

The batch job (:mod:`augment.synthesis.steps`, on Ray Data column batches) and the service
(:func:`augment.generation.generate_batch`, on requests) both call these functions, so the same
source, finding and seed give the same image through either (a test holds them to it). The gate
that follows is :func:`augment.quality.gate.evaluate_gate` in both.

One seeding rule: every random choice an item makes is drawn from :func:`item_generator` of its
seed and the stage (:class:`Stage`), on the CPU, so an item's result does not depend on what it
is batched with. A service request's sample ``j`` is the item with seed ``request.seed + j``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Sequence

import torch

from augment.synthesis.reference_bank import ReferenceBank
from augment.config import InpaintingConfig, RunConfig
from augment.device import run_device
from augment.inpainting.sampler import InpaintResult, findings_tensor
from augment.painter import Painter
from augment.registration import choose_references, transfer_region
from augment.registration.api import Registration
from augment.registration.lesion import carry_lesion

__all__ = ["Stage", "item_generator", "ReferencePick", "pick_reference", "Carried", "carry", "paint_settings", "paint"]


class Stage(IntEnum):
    """Which random choice of an item a generator seeds (the salt of :func:`item_generator`)."""

    CHOOSE = 1  # tie-breaking and subsampling among candidate references
    PICK = 2  # which of the k most similar references
    PAINT = 3  # the generator's noise


def item_generator(seed: int, stage: Stage) -> torch.Generator:
    """The CPU generator of one item's ``stage``: the one seeding rule of the chain."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(stage)) % (2**63 - 1))


@dataclass(frozen=True)
class ReferencePick:
    """The reference an item takes: ``index`` into ``bank.images[finding]``, its ``rank`` among
    the k most similar, its similarity ``score``, and its id (the bank's image index)."""

    finding: str
    index: int
    rank: int
    score: float
    image_id: str


def pick_reference(image: torch.Tensor, bank: ReferenceBank, finding: str, cfg: RunConfig, seed: int) -> ReferencePick:
    """Rank the bank's references of ``finding`` by similarity to ``image`` ((1, 1, S, S) at the
    bank's size) and let the item's seed pick one of the ``registration.k_references`` best:
    variety across items, the same pick for the same seed.

    Raises:
        UnknownFindingError, ValueError: see :func:`augment.registration.choose_references`.
    """
    choice = choose_references(image, bank.images[finding], bank.labels[finding], finding, cfg.registration,
                               generator=item_generator(seed, Stage.CHOOSE))
    rank = int(torch.randint(len(choice.indices), (1,), generator=item_generator(seed, Stage.PICK)))
    index = int(choice.indices[rank])
    return ReferencePick(finding, index, rank, float(choice.scores[rank]), bank.ids[finding][index])


@dataclass(frozen=True)
class Carried:
    """What registration carried onto each source.

    Attributes:
        mask: (B, 1, S, S) bool, the region to paint.
        base: (B, 1, S, S) float in [0, 1]: with ``inpainting.coupling: lesion`` the source with
            the reference's real lesion moved to the carried place with its own shape (the
            flow's start, and the copy-paste control as it is); else the source itself.
        registration: the Demons registration of each pair (its NCC and MSE before and after).
        region_fraction: (B,) share of the image the region covers.
    """

    mask: torch.Tensor
    base: torch.Tensor
    registration: Registration
    region_fraction: torch.Tensor


def carry(sources: torch.Tensor, references: torch.Tensor, maps: torch.Tensor, cfg: RunConfig) -> Carried:
    """Register each reference onto its source and carry its finding's region (and, under the
    lesion coupling, its lesion) over, on the run's device (``resources.use_gpu``). All tensors
    (B, 1, S, S) in [0, 1]; the result is on the CPU."""
    att, reg = cfg.attention, cfg.registration
    dev = run_device(cfg.resources.use_gpu)
    sources, references, maps = sources.to(dev), references.to(dev), maps.to(dev)
    tr = transfer_region(sources, references, maps, reg, min_area=att.min_area, max_area=att.max_area)
    mask, base = tr.mask, sources.float()
    if cfg.inpainting.coupling == "lesion":
        moved = carry_lesion(sources, references, maps, tr, reg.mask_threshold, cfg.inpainting.region_margin)
        mask, base = moved.region, moved.base
    mask = mask.bool().cpu()
    return Carried(mask, base.float().cpu(), tr.registration, mask.flatten(1).float().mean(1))


def paint_settings(painter: Painter, profile: InpaintingConfig, steps: int | None = None,
                   guidance: float | None = None) -> InpaintingConfig:
    """The profile's inpainting settings with the checkpoint's own architecture (its crop size and
    network) and, where given, a request's ``steps`` and ``guidance``."""
    icfg = painter.settings(profile)
    update = {k: v for k, v in (("steps", steps), ("guidance", guidance)) if v is not None}
    return icfg.model_copy(update=update) if update else icfg


def paint(painter: Painter, sources: torch.Tensor, masks: torch.Tensor, findings: Sequence[str | Sequence[str]],
          icfg: InpaintingConfig, seeds: Sequence[int], base: torch.Tensor | None = None) -> InpaintResult:
    """Paint each item's finding(s) into its region, its noise from its own seed.

    Args:
        painter: the generator, of any kind.
        sources: (B, 1, H, W) in [0, 1].
        masks: (B, 1, H, W) bool.
        findings: per item a finding name or a list of them.
        icfg: from :func:`paint_settings`.
        seeds: one per item.
        base: the lesion coupling's start images (:attr:`Carried.base`), or None.
    """
    if len(seeds) != sources.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {sources.shape[0]} images; give one seed per image")
    gens = [item_generator(s, Stage.PAINT) for s in seeds]
    cond = findings_tensor([[f] if isinstance(f, str) else list(f) for f in findings])
    return painter.paint(sources, masks, cond, icfg, generator=gens, base=base)
