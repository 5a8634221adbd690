"""The augmentation steps as plain callables on column batches.

A batch is a dict of equal-length columns (NumPy arrays), the format Ray Data's
``map_batches`` hands over, but nothing here imports Ray: ``jobs/augment.py`` wraps each
step in an actor pool, and :func:`run_in_process` chains the same steps in a plain loop
(the benchmark's baseline and the fallback without Ray).

Columns, as they accumulate:

* plan: ``item_id finding source source_patient seed output_name``
* :class:`RegisterStep`: ``image`` (B, S, S) float32, ``mask`` (B, S, S) uint8,
  ``base`` (B, S, S) float32 (the source with the reference's lesion carried onto it, the
  lesion coupling's start; the source itself with ``inpainting.coupling: noise``),
  ``reference`` str, ``registration_ncc`` float, ``status`` str ("" = fine, else why the
  item cannot go on: an unreadable source, an empty region)
* :class:`InpaintStep`: ``synthetic`` (B, S, S) float32
* :class:`GateStep`: ``prob_before prob_after`` float (the classifier's),
  ``verifier_before verifier_after verifier_threshold`` float (the local verifier's, NaN
  when it did not judge), ``judges`` str, ``accepted`` bool, ``reason`` str
  (the near-copy bank is an index folder it memory-maps, see :mod:`augment.quality.bank_index`)
* :class:`WriteStep`: writes each item into the pool, returns the small columns only.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from augment.synthesis.plan import PlanItem
from augment.synthesis.pool import PoolWriter, ProvenanceRow
from augment.synthesis.reference_bank import ReferenceBank
from augment.config import RunConfig
from augment.data.io import ImageReadError, read_image
from augment.data.nih import NIHIndex
from augment.findings import FINDINGS

log = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "items_to_batches",
    "RegisterStep",
    "InpaintStep",
    "GateStep",
    "WriteStep",
    "run_in_process",
]

Batch = dict[str, np.ndarray]
PLAN_COLUMNS = ("item_id", "finding", "source", "source_patient", "seed", "output_name")


def items_to_batches(items: Iterable[PlanItem], batch_size: int) -> Iterator[Batch]:
    """Group plan items into column batches."""
    buf: list[PlanItem] = []
    for it in items:
        buf.append(it)
        if len(buf) == batch_size:
            yield _to_batch(buf)
            buf = []
    if buf:
        yield _to_batch(buf)


def _to_batch(items: list[PlanItem]) -> Batch:
    return {c: np.array([getattr(i, c) for i in items]) for c in PLAN_COLUMNS}


class RegisterStep:
    """Read each healthy source, pick a reference showing the finding, carry its region over.

    Args:
        cfg: the run profile (``registration``, ``data.image_size``).
        index: the training index (the sources' folder).
        bank: the references and their attention maps.
    """

    def __init__(self, cfg: RunConfig, index: NIHIndex, bank: ReferenceBank) -> None:
        self.cfg = cfg
        self.index = index
        self.bank = bank
        self.size = cfg.data.image_size

    def __call__(self, batch: Batch) -> Batch:
        from augment.synthesis.chain import carry, pick_reference

        n = len(batch["item_id"])
        s = self.size
        image = np.zeros((n, s, s), np.float32)
        mask = np.zeros((n, s, s), np.uint8)
        reference = np.array([""] * n, dtype=object)
        ncc = np.full(n, np.nan, np.float32)
        status = np.array([""] * n, dtype=object)
        rows: list[int] = []
        refs, maps = [], []
        for i in range(n):
            try:
                image[i] = read_image(self.index.path(str(batch["source"][i])), s)
            except ImageReadError as exc:
                status[i] = f"unreadable_source: {exc}"
                continue
            f = str(batch["finding"][i])
            pick = pick_reference(torch.from_numpy(image[i])[None, None], self.bank, f, self.cfg, int(batch["seed"][i]))
            reference[i] = pick.image_id
            refs.append(self.bank.images[f][pick.index])
            maps.append(self.bank.maps[f][pick.index])
            rows.append(i)
        base = image.copy()
        if rows:
            carried = carry(torch.from_numpy(image[rows])[:, None], torch.stack(refs), torch.stack(maps), self.cfg)
            m = carried.mask[:, 0].numpy()
            base[rows] = carried.base[:, 0].numpy()
            for j, i in enumerate(rows):
                mask[i] = m[j]
                ncc[i] = float(carried.registration.ncc_after[j])
                if not m[j].any():
                    status[i] = "empty_mask"
        return {**batch, "image": image, "mask": mask, "base": base, "reference": reference, "registration_ncc": ncc,
                "status": status}


PASTE = "paste"
"""The generator argument that paints nothing: the reference's real lesion, carried to its place
with its own shape (``inpainting.coupling: lesion``), is the synthetic image (the copy-paste
control of the long-tail benchmark and the gate's positive control)."""


class InpaintStep:
    """Paint the finding into each region with the generator of any kind (loaded once), or,
    with ``generator_checkpoint`` :data:`PASTE`, keep the carried real lesion as it is."""

    def __init__(self, cfg: RunConfig, generator_checkpoint: str) -> None:
        from augment.synthesis.chain import paint, paint_settings
        from augment.device import run_device
        from augment.painter import load_painter

        self.cfg = cfg
        self.paste = str(generator_checkpoint) == PASTE
        if self.paste:
            if cfg.inpainting.coupling != "lesion":
                raise ValueError("the paste generator keeps the carried lesion: it needs inpainting.coupling 'lesion'")
            return
        self.device = run_device(cfg.resources.use_gpu)
        self.painter = load_painter(generator_checkpoint, map_location=self.device)
        self.settings = paint_settings(self.painter, cfg.inpainting)
        self._paint = paint

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["item_id"])
        synthetic = batch["image"].copy()
        ok = [i for i in range(n) if batch["status"][i] == ""]
        if ok and self.paste:
            synthetic[ok] = batch["base"][ok]
        elif ok:
            img = torch.from_numpy(batch["image"][ok])[:, None]
            msk = torch.from_numpy(batch["mask"][ok].astype(bool))[:, None]
            base = torch.from_numpy(batch["base"][ok])[:, None] if "base" in batch else None
            res = self._paint(self.painter, img, msk, [str(batch["finding"][i]) for i in ok], self.settings,
                              [int(batch["seed"][i]) for i in ok], base=base)
            synthetic[ok] = res.images[:, 0].cpu().numpy()
        return {**batch, "synthetic": synthetic}


class GateStep:
    """Judge each synthetic image with the local verifier and/or the classifier (loaded once)
    and the near-copy bank (see :mod:`augment.quality.gate`).

    Args:
        cfg: the run profile (``quality``, ``resources``).
        classifier_checkpoint: the gate's classifier.
        verifier_checkpoint: the local finding verifier (``quality.judge: verifier``); None
            judges with the classifier alone (logged).
        classifier_findings: the findings the classifier's rise is also required for under
            ``quality.classifier_judge: auto`` (those it sees on validation).
        bank_index: the near-copy bank's index folder
            (:func:`augment.quality.bank_index.build_bank_index`, built once per run by
            ``jobs/augment.py``): memory-mapped, with its own encoder; no training image is
            read here. None skips the near-copy check. An :class:`NIHIndex` (the old
            argument) still works but builds an in-memory bank from every training image in
            this actor, with the classifier's embedding: slow, and logged as such.
    """

    def __init__(self, cfg: RunConfig, classifier_checkpoint: str,
                 bank_index: "str | os.PathLike[str] | NIHIndex | None" = None,
                 verifier_checkpoint: str | None = None, classifier_findings: list[str] | None = None) -> None:
        from augment.classifier import load_classifier
        from augment.classifier.predict import embed_images, predict_proba
        from augment.quality.bank_index import load_bank_index
        from augment.quality.gate import evaluate_gate

        self.cfg = cfg
        from augment.device import run_device

        device = run_device(cfg.resources.use_gpu)
        self.model = load_classifier(classifier_checkpoint, map_location=device)
        self.prob_fn = lambda x: predict_proba(self.model, x)
        self.embed_fn = lambda x: embed_images(self.model, x)
        self._gate = evaluate_gate
        self.verifier = None
        if verifier_checkpoint:
            from augment.quality.verifier import load_verifier

            self.verifier = load_verifier(verifier_checkpoint, map_location=device)
        elif cfg.quality.judge == "verifier":
            log.warning("quality.judge is verifier but no verifier checkpoint was given: the classifier alone judges")
        self.classifier_findings = list(classifier_findings or [])
        self.bank = None
        t0 = time.perf_counter()
        if isinstance(bank_index, NIHIndex):
            log.warning("GateStep got the training index, not a near-copy bank index: reading all %d training images "
                        "in this actor; pass build_bank_index's folder instead", len(bank_index))
            self.bank = _bank_from_images(cfg, bank_index, self.embed_fn)
        elif bank_index is not None:
            self.bank = load_bank_index(bank_index)
        self.bank_seconds = time.perf_counter() - t0  # this actor's cost of its near-copy bank

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["item_id"])
        pb = np.full(n, np.nan, np.float32)
        pa = np.full(n, np.nan, np.float32)
        vb = np.full(n, np.nan, np.float32)
        va = np.full(n, np.nan, np.float32)
        vt = np.full(n, np.nan, np.float32)
        judges = np.array([""] * n, dtype=object)
        accepted = np.zeros(n, bool)
        reason = np.array([str(s).split(":")[0] for s in batch["status"]], dtype=object)
        ok = [i for i in range(n) if batch["status"][i] == ""]
        if ok:
            targets = torch.zeros(len(ok), len(FINDINGS))
            for j, i in enumerate(ok):
                targets[j, FINDINGS.index(str(batch["finding"][i]))] = 1.0
            decisions = self._gate(
                torch.from_numpy(batch["image"][ok])[:, None],
                torch.from_numpy(batch["synthetic"][ok])[:, None],
                torch.from_numpy(batch["mask"][ok].astype(np.float32))[:, None],
                targets, self.cfg.quality, self.prob_fn, self.embed_fn, self.bank,
                source_ids=[str(batch["source"][i]) for i in ok],
                verifier=self.verifier, classifier_findings=self.classifier_findings,
            )
            for j, i in enumerate(ok):
                d = decisions[j]
                pb[i], pa[i] = d.p_before[0], d.p_after[0]
                if d.verifier_after:
                    vb[i], va[i], vt[i] = d.verifier_before[0], d.verifier_after[0], d.verifier_threshold[0]
                judges[i] = "|".join(d.judges)
                accepted[i] = d.accepted
                reason[i] = "accepted" if d.accepted else "|".join(d.reasons)
        return {**batch, "prob_before": pb, "prob_after": pa, "verifier_before": vb, "verifier_after": va,
                "verifier_threshold": vt, "judges": judges, "accepted": accepted, "reason": reason}


def _bank_from_images(cfg: RunConfig, train_index: NIHIndex, embed_fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The old per-actor bank: every training image read here, embedded by the classifier."""
    from augment.quality.near_copy import TrainingBank

    arrs, ids = [], []
    for r in train_index.records:
        try:
            arrs.append(read_image(train_index.path(r), cfg.data.image_size))
            ids.append(r.image_index)
        except ImageReadError as exc:  # the register step counts it per item
            log.warning("near-copy bank skips an unreadable training image: %s", exc)
    if not arrs:
        return None
    return TrainingBank.build(torch.from_numpy(np.stack(arrs))[:, None], ids, embed_fn)


def _opt(batch: Batch, key: str, i: int) -> float | None:
    if key not in batch:
        return None
    v = float(batch[key][i])
    return None if np.isnan(v) else v


class WriteStep:
    """Write each finished item into the pool at its source's resolution (idempotent per item id);
    return the small columns.

    Each item's source is read as stored (:func:`augment.data.io.read_raw`) and the region
    painted at the working resolution is pasted back into it
    (:func:`augment.synthesis.native.paste_native`, the change over ``batch["image"]``
    carried, with a feathered edge of ``feather`` native pixels): the pool image has the
    source's size and bit depth and equals it bit for bit farther than ``feather`` pixels
    outside the mask; the mask is stored at the source's size too. Where the source cannot
    be read any more, the working-resolution image is written instead, its row says
    ``resolution: working`` and the item is rejected (``native_source_unreadable``) if the
    gate had accepted it: never a silently resampled image in ``images/``.

    Args:
        pool_uri: the pool (:class:`PoolWriter`).
        generator_run: MLflow run id of the generator, recorded per item.
        sources: the index the items' sources come from (the training :class:`NIHIndex`;
            ``sources.path(batch["source"][i])`` is each source's file).
        feather: the blend's edge in native pixels, 0 to 4.
    """

    def __init__(self, pool_uri: str, generator_run: str, sources: NIHIndex, feather: float | None = None) -> None:
        from augment.synthesis.native import FEATHER_PX, MAX_REACH_PX

        if not callable(getattr(sources, "path", None)):
            raise TypeError(f"WriteStep needs the sources' index (an NIHIndex, for its .path), got {type(sources).__name__}")
        feather = FEATHER_PX if feather is None else float(feather)
        if not 0.0 <= feather <= MAX_REACH_PX:
            raise ValueError(f"WriteStep: feather must lie in [0, {MAX_REACH_PX:g}] native pixels, got {feather}")
        self.pool = PoolWriter(pool_uri)
        self.generator_run = generator_run
        self.sources = sources
        self.feather = feather

    def _native(self, batch: Batch, i: int) -> tuple[np.ndarray, np.ndarray, int, str | None]:
        """(image, mask, bits, why not native): the item at its source's resolution, or the
        working-resolution one and the reason (the source is unreadable)."""
        from augment.synthesis.native import paste_native
        from augment.data.io import read_raw

        synthetic, mask = batch["synthetic"][i], batch["mask"][i]
        try:
            raw = read_raw(self.sources.path(str(batch["source"][i])))
        except ImageReadError as exc:
            return synthetic, mask, 8, str(exc)
        working = batch["image"][i] if "image" in batch else None
        res = paste_native(raw.pixels, synthetic, mask, working_source=working, feather=self.feather)
        return res.image, res.mask, res.bits, None

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["item_id"])
        accepted_out = np.array([bool(a) for a in batch["accepted"]])
        reason_out = np.array([str(r) for r in batch["reason"]], dtype=object)
        for i in range(n):
            image, m, bits, unreadable = self._native(batch, i)
            accepted, reason = bool(batch["accepted"][i]), str(batch["reason"][i])
            if unreadable is not None:
                log.warning("item %s: source unreadable at write time, written at the working resolution and "
                            "rejected: %s", batch["item_id"][i], unreadable)
                if accepted:
                    accepted, reason = False, "native_source_unreadable"
            accepted_out[i], reason_out[i] = accepted, reason
            pb, pa, ncc = (float(batch[k][i]) for k in ("prob_before", "prob_after", "registration_ncc"))
            row = ProvenanceRow(
                item_id=str(batch["item_id"][i]),
                image=str(batch["output_name"][i]),
                finding=str(batch["finding"][i]),
                source=str(batch["source"][i]),
                source_patient=int(batch["source_patient"][i]),
                reference=str(batch["reference"][i]),
                mask=str(batch["output_name"][i]),
                mask_area=float(np.asarray(m, dtype=np.float32).mean()) if m.size else 0.0,
                prob_before=None if np.isnan(pb) else pb,
                prob_after=None if np.isnan(pa) else pa,
                accepted=accepted,
                reason=reason,
                registration_ncc=None if np.isnan(ncc) else ncc,
                generator_run=self.generator_run,
                seed=int(batch["seed"][i]),
                verifier_before=_opt(batch, "verifier_before", i),
                verifier_after=_opt(batch, "verifier_after", i),
                verifier_threshold=_opt(batch, "verifier_threshold", i),
                judges=str(batch["judges"][i]) if "judges" in batch else None,
                width=int(image.shape[-1]),
                height=int(image.shape[-2]),
                bits=bits,
                resolution="working" if unreadable is not None else "native",
            )
            self.pool.write_item(row, image, m)
        return {"item_id": batch["item_id"], "finding": batch["finding"], "accepted": accepted_out, "reason": reason_out}


def run_in_process(
    batches: Iterable[Batch],
    steps: list[Callable[[Batch], Batch]],
    on_batch: Callable[[Batch], Any] | None = None,
) -> tuple[int, list[float]]:
    """Chain the steps over the batches in this process; return (items, seconds per step)."""
    n = 0
    seconds = [0.0] * len(steps)
    for b in batches:
        for k, step in enumerate(steps):
            t0 = time.perf_counter()
            b = step(b)
            seconds[k] += time.perf_counter() - t0
        n += len(b["item_id"])
        if on_batch is not None:
            on_batch(b)
    return n, seconds
