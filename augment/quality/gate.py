"""The acceptance gate: keep a synthetic image only when a judge now sees the finding there.

The judge (``quality.judge``) is the local finding verifier by default
(:mod:`augment.quality.verifier`): its probability of each target finding on the crop around
the painted region must reach the threshold chosen for that finding on validation crops
(``not_seen`` otherwise) and rise over the source's crop by more than
``quality.verifier_margin`` (``no_verifier_rise``); a target the verifier was not trained on is
``unverifiable``. The whole-image classifier's rise (the source paper's criterion) is then a
second judge for the findings the caller names (``classifier_findings``: with
``quality.classifier_judge: auto`` those whose validation AUC reaches
``quality.classifier_auc_floor``), or the only judge with ``quality.judge: classifier`` or
without a verifier.

A synthetic image is accepted when all of these hold (each is recorded with its number):

* ``finite``: no NaN or infinite pixel;
* ``in_range``: every pixel in [0, 1];
* ``outside_unchanged``: the largest change outside the mask is at most
  ``outside_tolerance``;
* the judges above (``rise``: the classifier's probability of each judged target rose by at
  least ``margin`` over the healthy source; with several targets the smallest rise counts);
* ``not a near-copy``: the nearest training image (the source's patient excluded) is at
  least ``min_pixel_distance`` away in RMS over the mask, and at least
  min(``min_embedding_distance``, the ``near_copy_quantile`` of real-to-real distances
  between different patients) away in cosine distance of embeddings in the bank's feature
  space: the bank's own encoder when it carries one (a bank index, see
  :mod:`augment.quality.bank_index`: a space the gate does not select in), else the
  ``embed_fn`` given (see :mod:`augment.quality.near_copy`; skipped, and recorded as
  None, without a bank).

The classifier comes in as callables, so the gate does not depend on its internals.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

from augment.config import QualityConfig
from augment.findings import FINDINGS
from augment.quality.near_copy import EmbedFn, TrainingBank

__all__ = ["ProbFn", "GateDecision", "evaluate_gate", "acceptance_summary", "REASONS"]

ProbFn = Callable[[torch.Tensor], torch.Tensor]
"""prob_fn(images (B, 1, H, W) in [0, 1]) -> (B, 14) probabilities over FINDINGS."""

REASONS = ("not_finite", "out_of_range", "outside_changed", "empty_mask", "no_rise", "not_seen", "no_verifier_rise",
           "unverifiable", "pixel_near_copy", "embedding_near_copy")
"""Every reason a decision can give for a rejection."""


@dataclass(frozen=True)
class GateDecision:
    """One synthetic image's verdict and the numbers behind it.

    Attributes:
        accepted: all checks passed.
        reasons: the failed checks (names from :data:`REASONS`); empty when accepted.
        findings: the target findings.
        p_before, p_after: the classifier's probability of each target finding on the
            healthy source and on the synthetic image.
        rise: smallest ``p_after - p_before`` over the targets (NaN when not computed).
        margin: the required rise.
        finite, in_range: pixel checks.
        outside_max_abs_diff: largest |synthetic - source| outside the mask.
        mask_fraction: share of the image repainted.
        pixel_nn_distance, pixel_nn_id: nearest training image over the mask (None: no bank).
        embedding_nn_distance, embedding_nn_id: nearest training embedding (None: not checked).
        source_id: the healthy source's id, when given.
        verifier_before, verifier_after: the verifier's probability of each target on the
            source's and the synthetic image's crop (empty when it did not judge).
        verifier_threshold: its threshold for each target.
        judges: which judges decided (``verifier``, ``classifier``).
    """

    accepted: bool
    reasons: tuple[str, ...]
    findings: tuple[str, ...]
    p_before: tuple[float, ...]
    p_after: tuple[float, ...]
    rise: float
    margin: float
    finite: bool
    in_range: bool
    outside_max_abs_diff: float
    mask_fraction: float
    pixel_nn_distance: float | None = None
    pixel_nn_id: str | None = None
    embedding_nn_distance: float | None = None
    embedding_nn_id: str | None = None
    source_id: str | None = None
    verifier_before: tuple[float, ...] = ()
    verifier_after: tuple[float, ...] = ()
    verifier_threshold: tuple[float, ...] = ()
    judges: tuple[str, ...] = ("classifier",)

    def to_dict(self) -> dict[str, Any]:
        """A flat, JSON-ready dict (tuples as lists, findings joined by ``|``)."""
        d = asdict(self)
        d["reasons"] = "|".join(self.reasons)
        d["findings"] = "|".join(self.findings)
        d["p_before"] = list(self.p_before)
        d["p_after"] = list(self.p_after)
        for k in ("verifier_before", "verifier_after", "verifier_threshold"):
            d[k] = list(getattr(self, k))
        d["judges"] = "|".join(self.judges)
        return d


def _check_inputs(sources: torch.Tensor, synthetic: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor) -> None:
    if not all(isinstance(x, torch.Tensor) for x in (sources, synthetic, masks, targets)):
        raise TypeError("sources, synthetic, masks and targets must be torch tensors")
    if sources.ndim != 4 or sources.shape[1] != 1:
        raise ValueError(f"sources must have shape (B, 1, H, W), got {tuple(sources.shape)}")
    if synthetic.shape != sources.shape or masks.shape != sources.shape:
        raise ValueError(
            f"synthetic {tuple(synthetic.shape)} and masks {tuple(masks.shape)} must match sources {tuple(sources.shape)}"
        )
    if targets.shape != (sources.shape[0], len(FINDINGS)):
        raise ValueError(
            f"targets must be (B, 14) = ({sources.shape[0]}, {len(FINDINGS)}) multi-hot, got {tuple(targets.shape)}; "
            "build it with augment.inpainting.findings_tensor"
        )
    if (targets.sum(1) <= 0).any():
        raise ValueError("every synthetic image needs at least one target finding (a row of targets is all zeros)")


def _probs(prob_fn: ProbFn, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        p = prob_fn(x)
    p = torch.as_tensor(p).float().cpu()
    if p.shape != (x.shape[0], len(FINDINGS)):
        raise ValueError(f"prob_fn must return (B, 14) probabilities, returned {tuple(p.shape)}")
    return p


def evaluate_gate(
    sources: torch.Tensor,
    synthetic: torch.Tensor,
    masks: torch.Tensor,
    targets: torch.Tensor,
    cfg: QualityConfig,
    prob_fn: ProbFn,
    embed_fn: EmbedFn | None = None,
    bank: TrainingBank | None = None,
    source_ids: Sequence[str | None] | None = None,
    p_before: torch.Tensor | None = None,
    verifier: Any = None,
    classifier_findings: Sequence[str] | None = None,
) -> list[GateDecision]:
    """Decide on each synthetic image.

    Args:
        sources: (B, 1, H, W) the healthy images the findings were painted into, in [0, 1].
        synthetic: (B, 1, H, W) the inpainted images.
        masks: (B, 1, H, W) the repainted regions (``> 0.5``).
        targets: (B, 14) multi-hot target findings.
        cfg: margin, tolerances, near-copy thresholds.
        prob_fn: classifier probabilities, (B, 1, H, W) -> (B, 14).
        embed_fn: embeddings, (B, 1, H, W) -> (B, D), in the space of the bank's
            embeddings; used for the embedding near-copy check when the bank carries no
            ``embed_fn`` of its own (a bank index does, and wins).
        bank: training images to search for near-copies; None skips that check.
        source_ids: the sources' ids, excluded from the near-copy search.
        p_before: (B, 14) probabilities on the sources if already computed.
        verifier: a :class:`~augment.quality.verifier.Verifier`; with ``cfg.judge ==
            "verifier"`` it judges every target (None: the classifier alone judges).
        classifier_findings: with the verifier judging, the targets the classifier's rise
            is also required for (``cfg.classifier_judge``: ``always`` = all, ``never`` =
            none, ``auto`` = these; None = none).

    Returns:
        One :class:`GateDecision` per image, in order.
    """
    _check_inputs(sources, synthetic, masks, targets)
    b = sources.shape[0]
    if source_ids is not None and len(source_ids) != b:
        raise ValueError(f"got {len(source_ids)} source_ids for a batch of {b}")
    syn = synthetic.detach().float().cpu()
    src = sources.detach().float().cpu()
    m = masks.detach().cpu() > 0.5
    finite = torch.isfinite(syn).flatten(1).all(1)
    clean = torch.nan_to_num(syn, nan=0.0, posinf=1.0, neginf=0.0)
    tol = 1e-6
    in_range = ((clean >= -tol) & (clean <= 1 + tol)).flatten(1).all(1) & finite
    diff = (clean - src).abs().masked_fill(m, 0.0)
    outside = diff.flatten(1).amax(1)
    outside = torch.where(finite, outside, torch.full_like(outside, math.inf))
    frac = m.float().flatten(1).mean(1)
    classifier_input = clean.clamp(0.0, 1.0)
    pb = _probs(prob_fn, src) if p_before is None else torch.as_tensor(p_before).float().cpu()
    if pb.shape != (b, len(FINDINGS)):
        raise ValueError(f"p_before must be (B, 14), got {tuple(pb.shape)}")
    pa = _probs(prob_fn, classifier_input)
    use_verifier = verifier is not None and cfg.judge == "verifier"
    tmask = targets.detach().cpu() > 0.5
    vb = va = None
    if use_verifier:
        pairs = [(i, FINDINGS[j]) for i in range(b) for j in torch.nonzero(tmask[i]).flatten().tolist()
                 if verifier.knows(FINDINGS[j])]
        vb, va = {}, {}
        if pairs:
            rows = [i for i, _ in pairs]
            names = [f for _, f in pairs]
            sb = verifier.score(src[rows], m[rows].float(), names)
            sa = verifier.score(classifier_input[rows], m[rows].float(), names)
            for k, key in enumerate(pairs):
                vb[key], va[key] = float(sb[k]), float(sa[k])
    nn = None
    if bank is not None:
        emb = None
        space = bank.embed_fn if bank.embed_fn is not None else embed_fn
        if space is not None and bank.embeddings is not None:
            with torch.no_grad():
                emb = torch.as_tensor(space(classifier_input)).float().cpu()
        nn = bank.nearest(classifier_input, m, emb, exclude=source_ids)
    emb_threshold = cfg.min_embedding_distance
    floor = None if bank is None else bank.embedding_floor(cfg.near_copy_quantile)
    if floor is not None:
        emb_threshold = min(emb_threshold, floor)
    out: list[GateDecision] = []
    for i in range(b):
        idx = torch.nonzero(tmask[i]).flatten().tolist()
        before = tuple(float(pb[i, j]) for j in idx)
        after = tuple(float(pa[i, j]) for j in idx)
        names = [FINDINGS[j] for j in idx]
        reasons: list[str] = []
        v_before: tuple[float, ...] = ()
        v_after: tuple[float, ...] = ()
        v_thr: tuple[float, ...] = ()
        if use_verifier:
            judges = ["verifier"]
            if cfg.classifier_judge == "always":
                judged = list(range(len(idx)))
            elif cfg.classifier_judge == "auto":
                judged = [k for k, f in enumerate(names) if f in set(classifier_findings or ())]
            else:
                judged = []
            if any(not verifier.knows(f) for f in names):
                reasons.append("unverifiable")
            known = [f for f in names if verifier.knows(f)]
            v_before = tuple(vb[(i, f)] for f in known)
            v_after = tuple(va[(i, f)] for f in known)
            v_thr = tuple(verifier.threshold(f) for f in known)
            if any(a < t for a, t in zip(v_after, v_thr)):
                reasons.append("not_seen")
            if any(not (a - p > cfg.verifier_margin) for a, p in zip(v_after, v_before)):
                reasons.append("no_verifier_rise")
            if judged:
                judges.append("classifier")
        else:
            judges = ["classifier"]
            judged = list(range(len(idx)))
        rise = min(after[k] - before[k] for k in judged) if judged else min(a - p for a, p in zip(after, before))
        if not bool(finite[i]):
            reasons.append("not_finite")
        if not bool(in_range[i]):
            reasons.append("out_of_range")
        if float(outside[i]) > cfg.outside_tolerance:
            reasons.append("outside_changed")
        if float(frac[i]) <= 0.0:
            reasons.append("empty_mask")
        if judged and not rise >= cfg.margin:
            reasons.append("no_rise")
        pd = pid = ed = eid = None
        if nn is not None:
            if int(nn.pixel_index[i]) >= 0:
                pd, pid = float(nn.pixel_distance[i]), bank.ids[int(nn.pixel_index[i])]
                if pd < cfg.min_pixel_distance:
                    reasons.append("pixel_near_copy")
            if nn.embedding_distance is not None and int(nn.embedding_index[i]) >= 0:
                ed, eid = float(nn.embedding_distance[i]), bank.ids[int(nn.embedding_index[i])]
                if ed < emb_threshold:
                    reasons.append("embedding_near_copy")
        out.append(
            GateDecision(
                accepted=not reasons,
                reasons=tuple(reasons),
                findings=tuple(FINDINGS[j] for j in idx),
                p_before=before,
                p_after=after,
                rise=rise,
                margin=cfg.margin,
                finite=bool(finite[i]),
                in_range=bool(in_range[i]),
                outside_max_abs_diff=float(outside[i]),
                mask_fraction=float(frac[i]),
                pixel_nn_distance=pd,
                pixel_nn_id=pid,
                embedding_nn_distance=ed,
                embedding_nn_id=eid,
                source_id=None if source_ids is None else source_ids[i],
                verifier_before=v_before,
                verifier_after=v_after,
                verifier_threshold=v_thr,
                judges=tuple(judges),
            )
        )
    return out


def acceptance_summary(decisions: Sequence[GateDecision]) -> dict[str, Any]:
    """Acceptance rate overall and per target finding, and how often each check failed."""
    n = len(decisions)
    per: dict[str, list[int]] = {}
    for d in decisions:
        for f in d.findings:
            per.setdefault(f, [0, 0])
            per[f][0] += int(d.accepted)
            per[f][1] += 1
    reasons = Counter(r for d in decisions for r in d.reasons)
    rises = [d.rise for d in decisions if math.isfinite(d.rise)]
    return {
        "n": n,
        "accepted": sum(d.accepted for d in decisions),
        "acceptance_rate": (sum(d.accepted for d in decisions) / n) if n else math.nan,
        "per_finding": {f: {"accepted": a, "n": t, "rate": a / t} for f, (a, t) in sorted(per.items())},
        "reasons": dict(reasons),
        "mean_rise": (sum(rises) / len(rises)) if rises else math.nan,
    }
