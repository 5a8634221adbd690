"""One generation request, start to end, through the method's one chain
(:mod:`augment.synthesis.chain`, the batch job's too): reference, Demons transfer,
painting, gate.

For each healthy radiograph and target finding(s):

1. the healthy image is resized to the working size S (``data.image_size``); sample ``j``
   is the chain's item with seed ``request.seed + j``: for each finding it ranks the bank's
   references by similarity and its seed picks one of the ``k`` best
   (:func:`~augment.synthesis.chain.pick_reference`);
2. each reference's region (and, under the lesion coupling, its lesion) is carried onto the
   healthy image (:func:`~augment.synthesis.chain.carry`: Demons at S, the region kept
   inside the body); the regions of several findings are merged;
3. the merged region is brought back to the image's own size: it is repainted at the
   image's resolution (crops around the mask) with the findings as a multi-hot condition
   and the sample's own seed (:func:`~augment.synthesis.chain.paint`);
4. the classifier scores the healthy image and each sample; the quality gate
   (:func:`~augment.quality.evaluate_gate`, the batch job's) judges each sample.

:func:`generate_batch` runs many requests as one batch (registration, painting and the
classifier each run once per batch); each sample's result depends only on its own request
and seed, not on the batch it landed in. A one-finding request at the working size gives,
for the same source and seed, the batch job's image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from augment.classifier import predict_proba
from augment.config import InpaintingConfig, RunConfig
from augment.data.io import resize, validate_batch
from augment.errors import NoContrastError, UnknownFindingError
from augment.findings import FINDINGS, finding_index
from augment.generation.bundle import ModelBundle
from augment.synthesis.chain import ReferencePick, carry, paint, paint_settings, pick_reference
from augment.inpainting.sampler import findings_tensor
from augment.quality import GateDecision, evaluate_gate

__all__ = [
    "GenerationRequest",
    "ReferenceUsed",
    "GeneratedSample",
    "GenerationResult",
    "check_request",
    "generate",
    "generate_batch",
    "sampling_config",
    "probabilities",
]


@dataclass(frozen=True)
class GenerationRequest:
    """What a caller asks for.

    Attributes:
        image: (1, 1, H, W) (or (H, W)) healthy radiograph, float32 in [0, 1].
        findings: one or more NIH finding names to paint in.
        seed: seed of sample 0; sample ``j`` uses ``seed + j``.
        n_samples: how many synthetic images to make from this radiograph.
        steps: ODE steps (default: the profile's ``inpainting.steps``).
        guidance: classifier-free guidance weight (default: ``inpainting.guidance``).
    """

    image: torch.Tensor
    findings: tuple[str, ...]
    seed: int = 0
    n_samples: int = 1
    steps: int | None = None
    guidance: float | None = None


@dataclass(frozen=True)
class ReferenceUsed:
    """The diseased reference one finding of a sample was carried from.

    Attributes:
        finding: the finding.
        image_index: the reference's NIH ``Image Index``.
        rank: its rank among the references of that finding (0 = most similar).
        similarity: its similarity score to the healthy image (NCC after pre-alignment).
        mse_before, mse_after, ncc_before, ncc_after: registration quality at the working size.
        region_fraction: share of the image its carried region (the region painted) covers: the
            transferred region, or under the lesion coupling the moved lesion with its margin.
    """

    finding: str
    image_index: str
    rank: int
    similarity: float
    mse_before: float
    mse_after: float
    ncc_before: float
    ncc_after: float
    region_fraction: float


@dataclass(frozen=True)
class GeneratedSample:
    """One synthetic radiograph.

    Attributes:
        image: (1, 1, H, W) float32 in [0, 1], the input's size; equal to it outside ``mask``.
        mask: (1, 1, H, W) bool, the repainted pixels.
        references: one :class:`ReferenceUsed` per target finding.
        proba_after: classifier probability of each of the 14 findings.
        decision: the quality gate's :class:`~augment.quality.GateDecision` (verdict,
            reasons, rise, outside change; no near-copy check in this path).
        seed: the seed of its base noise.
    """

    image: torch.Tensor
    mask: torch.Tensor
    references: tuple[ReferenceUsed, ...]
    proba_after: dict[str, float]
    decision: GateDecision
    seed: int

    @property
    def accepted(self) -> bool:
        return self.decision.accepted


@dataclass(frozen=True)
class GenerationResult:
    """The answer to one :class:`GenerationRequest`.

    Attributes:
        findings: the target findings (NIH spelling).
        proba_before: classifier probabilities of the healthy input.
        samples: ``n_samples`` :class:`GeneratedSample`.
        steps, guidance: the sampling settings used.
        seconds: wall time of the batch this request ran in.
    """

    findings: tuple[str, ...]
    proba_before: dict[str, float]
    samples: tuple[GeneratedSample, ...]
    steps: int
    guidance: float
    seconds: float = field(default=0.0)


def sampling_config(bundle: ModelBundle, cfg: RunConfig, steps: int | None = None, guidance: float | None = None) -> InpaintingConfig:
    """The profile's inpainting settings with the generator's own architecture and the request's
    ``steps`` and ``guidance`` (:func:`augment.synthesis.chain.paint_settings`, as the batch job)."""
    return paint_settings(bundle.generator, cfg.inpainting, steps, guidance)


def probabilities(bundle: ModelBundle, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Classifier probabilities (N, 14) of images in [0, 1].

    Args:
        bundle: holds the classifier.
        images: (B, 1, H, W), or a list of (1, 1, H_i, W_i) of any sizes; each is resized
            to the classifier's input side and all go through one batched pass.
    """
    side = int(getattr(bundle.classifier, "image_size", 0)) or None
    batch = [images] if isinstance(images, torch.Tensor) else list(images)
    resized = []
    for x in batch:
        x = x.float()
        if side and x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
        resized.append(x)
    return predict_proba(bundle.classifier, torch.cat(resized))


def _as_dict(p: torch.Tensor) -> dict[str, float]:
    return {f: round(float(v), 6) for f, v in zip(FINDINGS, p.tolist())}


def check_request(req: GenerationRequest, bundle: ModelBundle) -> GenerationRequest:
    """Validate and normalise a request (image as (1, 1, H, W), findings in NIH spelling).

    Raises:
        ValueError: unknown finding or one without references, bad image, bad counts.
    """
    image = req.image
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[None, None]
    validate_batch(image, "image")
    if image.shape[0] != 1:
        raise ValueError(f"one radiograph per request, got a batch of {image.shape[0]}")
    if float(image.std()) < 1e-4:
        raise NoContrastError("the image is constant (no contrast): registration needs a radiograph")
    if not req.findings:
        raise ValueError(f"name at least one finding, one of {bundle.available_findings}")
    names = tuple(dict.fromkeys(FINDINGS[finding_index(f)] for f in req.findings))
    missing = [f for f in names if f not in bundle.available_findings]
    if missing:
        raise UnknownFindingError(f"no reference shows {missing}; findings with references: {bundle.available_findings}")
    if req.n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {req.n_samples}")
    if req.steps is not None and req.steps < 1:
        raise ValueError(f"steps must be >= 1, got {req.steps}")
    if req.guidance is not None and not req.guidance >= 0:
        raise ValueError(f"guidance must be >= 0, got {req.guidance}")
    return GenerationRequest(image.float().contiguous(), names, int(req.seed), int(req.n_samples), req.steps, req.guidance)


def generate_batch(bundle: ModelBundle, cfg: RunConfig, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
    """Run several requests as one batch.

    Args:
        bundle: the loaded models and references.
        cfg: the run profile (``registration``, ``inpainting`` sampling, ``quality``).
        requests: the requests; each is validated with :func:`check_request`.

    Returns:
        One :class:`GenerationResult` per request, in order.

    Raises:
        ValueError, TypeError: a request is invalid (the first one found).
    """
    t0 = time.perf_counter()
    reqs = [check_request(r, bundle) for r in requests]
    if not reqs:
        return []
    size = bundle.work_size
    bank = bundle.references
    small = [torch.from_numpy(resize(r.image[0, 0].cpu().numpy(), size))[None, None] for r in reqs]

    # 1. references: sample j of a request is the chain's item with seed request.seed + j, and
    #    picks its reference for each finding as the batch job does (augment.synthesis.chain).
    pairs: dict[tuple[int, str, int], int] = {}  # (request, finding, bank index) -> pair number
    plan: list[list[dict[str, ReferencePick]]] = []  # per request, per sample: finding -> pick
    for ri, r in enumerate(reqs):
        per_sample = []
        for j in range(r.n_samples):
            picks = {f: pick_reference(small[ri], bank, f, cfg, r.seed + j) for f in r.findings}
            for f, pk in picks.items():
                pairs.setdefault((ri, f, pk.index), len(pairs))
            per_sample.append(picks)
        plan.append(per_sample)

    # 2. Demons transfer of every distinct (request, reference) pair in one call.
    keys = list(pairs)
    fixed = torch.cat([small[ri] for ri, _, _ in keys])
    moving = torch.stack([bank.images[f][idx] for _, f, idx in keys])
    ref_maps = torch.stack([bank.maps[f][idx] for _, f, idx in keys])
    carried = carry(fixed, moving, ref_maps, cfg)
    reg = carried.registration
    lesion_coupling = cfg.inpainting.coupling == "lesion"
    added = carried.base - fixed.float().cpu()  # (P, 1, S, S) the carried lesion's contrast; zero without one

    # 3. masks at each image's own size, then painting grouped by (size, steps, guidance).
    items = []  # (request, sample, seed, mask (1,1,H,W) bool, references, base (1,1,H,W) or None)
    for ri, r in enumerate(reqs):
        h, w = r.image.shape[-2:]
        same_size = (h, w) == (size, size)
        for j, picks in enumerate(plan[ri]):
            ps = [pairs[(ri, f, pk.index)] for f, pk in picks.items()]
            used = tuple(
                ReferenceUsed(
                    finding=f,
                    image_index=pk.image_id,
                    rank=pk.rank,
                    similarity=round(pk.score, 6),
                    mse_before=round(float(reg.mse_before[p]), 6),
                    mse_after=round(float(reg.mse_after[p]), 6),
                    ncc_before=round(float(reg.ncc_before[p]), 6),
                    ncc_after=round(float(reg.ncc_after[p]), 6),
                    region_fraction=round(float(carried.region_fraction[p]), 6),
                )
                for (f, pk), p in zip(picks.items(), ps)
            )
            merged = carried.mask[ps].any(dim=0, keepdim=True)
            base = None
            if lesion_coupling and same_size and len(ps) == 1:
                base = carried.base[ps[0] : ps[0] + 1]  # exactly the batch job's start image
            elif lesion_coupling:
                delta = added[ps].sum(0, keepdim=True)
                if not same_size:
                    delta = F.interpolate(delta, size=(h, w), mode="bilinear", align_corners=False)
                base = (r.image.float() + delta).clamp(0.0, 1.0)
            if not same_size:
                merged = F.interpolate(merged.float(), size=(h, w), mode="bilinear", align_corners=False) >= 0.5
            items.append((ri, j, r.seed + j, merged, used, base))

    outputs: dict[tuple[int, int], torch.Tensor] = {}
    groups: dict[tuple, list[int]] = {}
    for k, (ri, j, seed, mask, _, _) in enumerate(items):
        if bool(mask.any()):
            r = reqs[ri]
            groups.setdefault((tuple(r.image.shape[-2:]), r.steps, r.guidance), []).append(k)
        else:
            outputs[(ri, j)] = reqs[ri].image
    for (_, steps, guidance), ks in groups.items():
        icfg = sampling_config(bundle, cfg, steps, guidance)
        res = paint(
            bundle.generator,
            torch.cat([reqs[items[k][0]].image for k in ks]),
            torch.cat([items[k][3] for k in ks]),
            [list(reqs[items[k][0]].findings) for k in ks],
            icfg,
            [items[k][2] for k in ks],
            base=torch.cat([items[k][5] for k in ks]) if lesion_coupling else None,
        )
        for n, k in enumerate(ks):
            outputs[(items[k][0], items[k][1])] = res.images[n : n + 1].float().cpu()

    # 4. classifier on the inputs, then the gate (which scores the samples) per image size.
    before = probabilities(bundle, [r.image for r in reqs])
    samples: dict[int, list[GeneratedSample]] = {ri: [] for ri in range(len(reqs))}
    by_shape: dict[tuple[int, int], list[int]] = {}
    for k, (ri, *_rest) in enumerate(items):
        by_shape.setdefault(tuple(reqs[ri].image.shape[-2:]), []).append(k)
    done: dict[int, GeneratedSample] = {}
    for ks in by_shape.values():
        seen: list[torch.Tensor] = []

        def prob_fn(x: torch.Tensor) -> torch.Tensor:
            p = probabilities(bundle, x)
            seen.append(p)
            return p

        decisions = evaluate_gate(
            sources=torch.cat([reqs[items[k][0]].image for k in ks]),
            synthetic=torch.cat([outputs[(items[k][0], items[k][1])] for k in ks]),
            masks=torch.cat([items[k][3] for k in ks]),
            targets=findings_tensor([list(reqs[items[k][0]].findings) for k in ks]),
            cfg=cfg.quality,
            prob_fn=prob_fn,
            p_before=torch.stack([before[items[k][0]] for k in ks]),
            verifier=bundle.verifier,
        )
        after = seen[-1]
        for n, k in enumerate(ks):
            ri, j, seed, mask, used, _ = items[k]
            done[k] = GeneratedSample(outputs[(ri, j)], mask, used, _as_dict(after[n]), decisions[n], seed)
    results: list[GenerationResult] = []
    for k, (ri, *_rest) in enumerate(items):
        samples[ri].append(done[k])
    seconds = time.perf_counter() - t0
    for ri, r in enumerate(reqs):
        icfg = sampling_config(bundle, cfg, r.steps, r.guidance)
        results.append(
            GenerationResult(r.findings, _as_dict(before[ri]), tuple(samples[ri]), icfg.steps, icfg.guidance, round(seconds, 4))
        )
    return results


def generate(bundle: ModelBundle, cfg: RunConfig, request: GenerationRequest) -> GenerationResult:
    """One request (see :func:`generate_batch`)."""
    return generate_batch(bundle, cfg, [request])[0]
