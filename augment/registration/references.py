"""Choose the diseased references to register onto a healthy image.

For a healthy query and a target finding, the candidates are the images whose NIH
``Finding Labels`` include that finding. They are ranked by similarity to the query:

* ``metric="ncc"``: global NCC after pre-alignment (``cfg.prealign``; none gives the raw
  NCC), computed at ``SCORE_SIDE`` pixels so that hundreds of candidates score in one
  batched call;
* ``metric="embedding"``: cosine similarity of ``embed(images)`` (for example a
  classifier's penultimate features), when such a function is given.

The ``k`` best are returned, best first. Randomness is explicit and seeded: ties are
broken by a random permutation from ``generator``, and ``max_candidates`` draws a random
subset of a large pool before scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from augment.config import RegistrationConfig
from augment.findings import ALIASES, FINDINGS, finding_index
from augment.registration.checks import check_images
from augment.registration.prealign import estimate_prealignment
from augment.registration.smoothing import downsample
from augment.registration.warp import ncc

__all__ = ["SCORE_SIDE", "ReferenceChoice", "choose_references", "similarity_scores"]

SCORE_SIDE = 64
"""Side length (pixels) at which NCC scores are computed."""


@dataclass(frozen=True)
class ReferenceChoice:
    """The chosen references for one healthy image.

    Attributes:
        indices: positions in the candidate list, best first (at most k).
        scores: (len(indices),) similarity of each chosen reference.
        finding: the finding, in NIH's spelling.
        metric: "ncc" or "embedding".
        n_eligible: candidates that show the finding (before any subsampling).
    """

    indices: tuple[int, ...]
    scores: torch.Tensor
    finding: str
    metric: str
    n_eligible: int


def _shows(labels: str, finding: str) -> bool:
    names = {ALIASES.get(n.strip(), n.strip()) for n in str(labels).split("|")}
    return finding in names


def similarity_scores(
    healthy: torch.Tensor,
    candidates: torch.Tensor,
    metric: str = "ncc",
    prealign_kind: str = "similarity",
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Similarity of each candidate to one healthy image.

    Args:
        healthy: (1, 1, H, W) in [0, 1].
        candidates: (N, 1, H, W) in [0, 1].
        metric: "ncc" or "embedding".
        prealign_kind: "none", "similarity" or "affine" (NCC only).
        embed: maps (N, 1, H, W) images to (N, D) features (embedding only).

    Returns:
        (N,) scores, higher is more similar.
    """
    if metric == "embedding":
        if embed is None:
            raise ValueError("reference_metric 'embedding' needs an embed function; pass embed= or use 'ncc'")
        q = embed(healthy)
        c = embed(candidates)
        if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1] or c.shape[0] != candidates.shape[0]:
            raise ValueError(
                f"embed must map (N, 1, H, W) images to (N, D) features; got {tuple(q.shape)} for the query "
                f"and {tuple(c.shape)} for {candidates.shape[0]} candidates"
            )
        return F.cosine_similarity(q.float(), c.float(), dim=1)
    if metric != "ncc":
        raise ValueError(f"metric must be 'ncc' or 'embedding', got {metric!r}")
    h, w = healthy.shape[-2:]
    f = min(1.0, SCORE_SIDE / max(h, w))
    size = (max(8, round(h * f)), max(8, round(w * f)))
    q = downsample(healthy, size).expand(candidates.shape[0], -1, -1, -1).contiguous()
    c = downsample(candidates, size)
    if prealign_kind == "none":
        return ncc(q, c)
    return estimate_prealignment(q, c, kind=prealign_kind).ncc_after


def choose_references(
    healthy: torch.Tensor,
    candidates: torch.Tensor,
    candidate_labels: Sequence[str],
    finding: str,
    cfg: RegistrationConfig | None = None,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    max_candidates: int | None = None,
) -> ReferenceChoice:
    """Pick the ``cfg.k_references`` diseased references most similar to a healthy image.

    Args:
        healthy: (1, 1, H, W) (or (1, H, W)) float in [0, 1], the healthy query.
        candidates: (N, 1, H, W) float in [0, 1], candidate references.
        candidate_labels: N NIH "Finding Labels" strings ("Effusion|Mass").
        finding: the target finding (NIH spelling, aliases accepted).
        cfg: uses ``k_references``, ``reference_metric`` and ``prealign``.
        embed: features for ``reference_metric="embedding"``.
        generator: seeds tie-breaking and subsampling.
        max_candidates: score at most this many eligible candidates, drawn at random.

    Returns:
        :class:`ReferenceChoice`.

    Raises:
        ValueError: unknown finding, label count not matching the candidates, no
            candidate showing the finding, or bad images.
    """
    cfg = cfg or RegistrationConfig()
    finding = FINDINGS[finding_index(finding)]
    if healthy.ndim == 3:
        healthy = healthy[None]
    healthy = check_images(healthy, "healthy")
    if healthy.shape[0] != 1:
        raise ValueError(f"healthy must be one image (1, 1, H, W), got {tuple(healthy.shape)}; call once per query")
    candidates = check_images(candidates, "candidates").to(healthy.device)
    if len(candidate_labels) != candidates.shape[0]:
        raise ValueError(
            f"candidate_labels has {len(candidate_labels)} entries for {candidates.shape[0]} candidates; give one "
            "'Finding Labels' string per candidate"
        )
    if candidates.shape[-2:] != healthy.shape[-2:]:
        raise ValueError(
            f"candidates are {tuple(candidates.shape[-2:])} but healthy is {tuple(healthy.shape[-2:])}; "
            "read them at one size"
        )
    eligible = [i for i, lab in enumerate(candidate_labels) if _shows(lab, finding)]
    if not eligible:
        raise ValueError(f"no candidate shows {finding}; pass references whose 'Finding Labels' include it")
    order = torch.randperm(len(eligible), generator=generator).tolist()
    pool = [eligible[i] for i in order]
    if max_candidates is not None:
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
        pool = pool[:max_candidates]
    scores = similarity_scores(
        healthy, candidates[pool], cfg.reference_metric, cfg.prealign, embed
    ).detach().cpu()
    ranked = torch.sort(scores, descending=True, stable=True).indices[: cfg.k_references]
    return ReferenceChoice(
        indices=tuple(pool[i] for i in ranked.tolist()),
        scores=scores[ranked],
        finding=finding,
        metric=cfg.reference_metric,
        n_eligible=len(eligible),
    )
