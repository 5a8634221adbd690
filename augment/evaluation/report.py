"""Evaluate a synthetic pool against real images: fidelity, FID and KID, diversity, the
two-sample test and memorisation; ``evaluation.json`` and figures (``python -m jobs.evaluate``
is its command line and MLflow run).

``real`` and ``synthetic`` are NIH-layout folders (``Data_Entry_2017.csv`` + ``images/``);
a pool written by ``jobs.augment`` also has ``provenance.csv`` and ``masks/``, which give each
synthetic image's healthy source (for the cosine-to-source measure and to skip the source
in the near-copy search) and its painted region (for the crop two-sample test and the
masked memorisation distance). At most ``max_images`` images per set are used (a seeded
random subset), read at ``image_size`` for the pixel-space measures and at the
classifier's own size for embeddings.

Measures that cannot flatter: the real side leaves out every patient that gave a source to
the pool (so ``real`` may be the whole data folder); the two-sample test is cross-validated
with folds grouped by patient (a synthetic image counts as its source's patient); FID comes
with KID (unbiased at small N) in spaces the gate never selected in (32x32 pixels, and an
autoencoder trained on the ``generator_train`` images, :mod:`augment.evaluation.encoder`),
beside the gate classifier's embedding (read that one as the gate's own view, not as
realism); the near-copy search covers every image of ``generator_train``, in pixels and in
the autoencoder's features (torchxrayvision's with ``xrv_weights``), never in the gate's. Writes ``evaluation.json`` and PNG figures into
``out`` (atomically).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from augment.data.io import atomic_write_bytes, read_batch, read_image
from augment.data.nih import DataError, NIHIndex, Record, load_index
from augment.evaluation.encoder import fit_encoder
from augment.findings import FINDINGS, NO_FINDING

log = logging.getLogger("cxr.evaluate")

__all__ = ["evaluate", "EVALUATION_KEYS", "PoolRow", "read_provenance"]

EVALUATION_KEYS = ("inputs", "fidelity", "fid", "diversity", "two_sample", "memorisation", "classifier_sets", "metrics", "figures")


def _sample(records: Sequence[Record], n: int, seed: int) -> list[Record]:
    if len(records) <= n:
        return list(records)
    keep = np.sort(np.random.default_rng(seed).choice(len(records), n, replace=False))
    return [records[i] for i in keep]


def _read(index: NIHIndex, records: Sequence[Record], size: int) -> torch.Tensor:
    return read_batch([index.path(r) for r in records], size)


@dataclass(frozen=True)
class PoolRow:
    """What the measures need of one ``provenance.csv`` row of a pool (written by
    :class:`augment.synthesis.pool.PoolWriter`): the image, its planned finding, its healthy
    source and the source's patient, its mask file, and the gate's verdict."""

    image: str
    finding: str
    source: str | None
    source_patient: str | None
    mask: str | None
    accepted: bool

    @classmethod
    def from_csv(cls, row: dict[str, str]) -> "PoolRow":
        return cls(image=row["image"], finding=row.get("finding") or "", source=row.get("source") or None,
                   source_patient=row.get("source_patient") or None, mask=row.get("mask") or None,
                   accepted=row.get("accepted") == "True")


def read_provenance(root: str | Path) -> dict[str, PoolRow]:
    """image name -> its provenance row (empty without ``provenance.csv``)."""
    path = Path(root) / "provenance.csv"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as fh:
        return {row["image"]: PoolRow.from_csv(row) for row in csv.DictReader(fh) if row.get("image")}


def _with_rejected(syn_idx: NIHIndex, prov: dict[str, PoolRow], root: Path) -> tuple[NIHIndex, int]:
    """The pool's accepted images followed by the ones the gate rejected (``rejected/``).

    A rejected image has no ``Data_Entry_2017.csv`` row; its record is made from the
    provenance row: the planned finding as its label, the healthy source's patient.

    Raises:
        DataError: the pool has no ``provenance.csv`` to say which images were rejected.
    """
    if not prov:
        raise DataError(f"--include-rejected needs the pool's provenance.csv, and {root} has none (is it a jobs.augment pool?)")
    folder = root / "rejected"
    recs = tuple(
        Record(image_index=name, labels=(row.finding,), patient_id=int(row.source_patient or 0))
        for name, row in sorted(prov.items())
        if not row.accepted and row.finding in FINDINGS and (folder / name).is_file()
    )
    rejected = NIHIndex(root=root, records=recs, image_dirs={r.image_index: folder for r in recs})
    return syn_idx.concat(rejected), len(recs)


def _finding_of(rec: Record, prov: PoolRow | None) -> str:
    if prov and prov.finding in FINDINGS:
        return prov.finding
    return next((lab for lab in rec.labels if lab != NO_FINDING), NO_FINDING)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def _try(name: str, fn, notes: dict[str, str]):
    """Run one measure; a too-small input is recorded as skipped instead of failing the job."""
    try:
        return fn()
    except ValueError as exc:
        log.warning("%s skipped: %s", name, exc)
        notes[name] = str(exc)
        return None


def evaluate(
    real: str | Path,
    synthetic: str | Path,
    classifier: str | Path,
    out: str | Path,
    generator_train: str | Path | None = None,
    max_images: int = 200,
    image_size: int = 64,
    seed: int = 0,
    n_boot: int = 100,
    max_pairs: int = 100,
    two_sample_epochs: int = 10,
    xrv_weights: str | None = None,
    include_rejected: bool = False,
) -> dict[str, Any]:
    """Compute every measure, write ``evaluation.json`` and the figures into ``out``.

    With ``include_rejected`` the synthetic set is every image the generator made, the
    ones the quality gate rejected included: the realism of the generator itself, which is
    what to read where the gate's classifier is too weak to be trusted (the NIH sample).

    Returns:
        The content of ``evaluation.json`` (keys :data:`EVALUATION_KEYS`, plus ``skipped``
        for measures the inputs were too small for, and ``seconds``).
    """
    from augment.classifier.checkpoint import load_classifier
    from augment.evaluation import distance, fidelity, memorisation, synthetic_scoring, two_sample
    from augment.evaluation.plots import image_grid, save_figure

    t0 = time.perf_counter()
    if max_images < 2 or image_size < 8:
        raise ValueError(f"--max-images must be >= 2 and --image-size >= 8, got {max_images} and {image_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    real_idx, syn_idx = load_index(real), load_index(synthetic)
    prov = read_provenance(synthetic)
    n_accepted, n_rejected = len(syn_idx), 0
    if include_rejected:
        syn_idx, n_rejected = _with_rejected(syn_idx, prov, Path(synthetic))
    if len(syn_idx) == 0:
        raise DataError(f"{synthetic} holds no synthetic image to evaluate"
                        + ("" if include_rejected else " (the gate accepted none: --include-rejected evaluates the rejected ones too)"))
    # the real side never holds the synthetic images' own sources: drop every patient that
    # gave a source to any item of the pool (a source beside its painted copy flatters realism)
    source_patients = {row.source_patient for row in prov.values() if row.source_patient}
    source_images = {row.source for row in prov.values() if row.source}
    disjoint = [r for r in real_idx.records if str(r.patient_id) not in source_patients and r.image_index not in source_images]
    n_real_excluded = len(real_idx.records) - len(disjoint)
    if len(disjoint) < 2:
        raise DataError(f"{real} has {len(disjoint)} images of patients that gave no source to {synthetic}; the real side "
                        "must be disjoint from the sources: give a folder of other patients (e.g. the test split) as --real")
    real_recs = _sample(disjoint, max_images, seed)
    syn_recs = _sample(syn_idx.records, max_images, seed + 1)
    syn_prov = [prov.get(r.image_index) for r in syn_recs]
    # groups for the two-sample test: a real image's patient; a synthetic image's source patient
    real_groups = [f"patient:{r.patient_id}" for r in real_recs]
    syn_groups = [f"patient:{p.source_patient}" if p and p.source_patient else f"synthetic:{r.image_index}"
                  for r, p in zip(syn_recs, syn_prov)]
    syn_findings = [_finding_of(r, p) for r, p in zip(syn_recs, syn_prov)]
    log.info("evaluating %d synthetic vs %d real images at %d px (%d real images of source patients left out)",
             len(syn_recs), len(real_recs), image_size, n_real_excluded)

    model = load_classifier(classifier)
    clf_size = int(getattr(model, "image_size", image_size))
    feats = distance.ClassifierFeatures(model, image_size=clf_size)
    real_px, syn_px = _read(real_idx, real_recs, image_size), _read(syn_idx, syn_recs, image_size)
    same = clf_size == image_size
    real_clf = real_px if same else _read(real_idx, real_recs, clf_size)
    syn_clf = syn_px if same else _read(syn_idx, syn_recs, clf_size)
    real_emb, syn_emb = feats(real_clf), feats(syn_clf)
    y_real = np.stack([r.multi_hot() for r in real_recs])
    y_syn = np.stack([r.multi_hot() for r in syn_recs])

    masks = None
    mask_files = [Path(synthetic) / "masks" / p.mask if p and p.mask else None for p in syn_prov]
    if mask_files and all(m is not None and m.is_file() for m in mask_files):
        masks = torch.from_numpy(np.stack([read_image(m, image_size) > 0.5 for m in mask_files]).astype(np.float32))[:, None]

    skipped: dict[str, str] = {}
    figures: list[str] = []

    def fig(f, name: str) -> None:
        save_figure(f, out / name)
        figures.append(name)

    # --- fidelity --------------------------------------------------------------------------
    log.info("fidelity: projections, silhouette, histograms")
    fid_out: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for space, r, s in (("pixels", real_px, syn_px), ("embedding", real_emb, syn_emb)):
        for method, dims in (("pca", 2), ("pca", 3), ("tsne", 2)):
            fn = (lambda: fidelity.pca_projection(r, s, dims)) if method == "pca" else (lambda: fidelity.tsne_projection(r, s, dims, seed=seed))
            proj = _try(f"{space}_{method}{dims}d", fn, skipped)
            if proj is not None:
                fig(fidelity.projection_figure(proj, f"{method.upper()} {dims}-D of {space}"), f"{space}_{method}{dims}d.png")
                metrics.update(proj.metrics(f"{space}_"))
        sil = _try(f"{space}_silhouette", lambda: fidelity.silhouette(r, s, y_real, y_syn), skipped)
        if sil is not None:
            fid_out[f"{space}_silhouette"] = {"overall": sil.overall, "per_finding": sil.per_finding}
            metrics.update(sil.metrics(f"{space}_"))
    hist = fidelity.intensity_histograms(real_px, syn_px)
    fig(fidelity.histogram_figure(hist), "intensity_histogram.png")
    fid_out["intensity"] = {"intersection": hist.intersection, "wasserstein": hist.wasserstein, "real_mean": hist.real_mean,
                            "synthetic_mean": hist.synthetic_mean, "edges": hist.edges, "real_counts": hist.real_counts,
                            "synthetic_counts": hist.synthetic_counts}
    metrics.update(hist.metrics())

    # cosine to the healthy source, where provenance names one we can find
    source_dirs = [real_idx] + ([load_index(generator_train)] if generator_train else [])
    gen_idx = source_dirs[1] if generator_train else None
    src_paths, src_rows = [], []
    by_name = {}
    for idx in source_dirs:
        for rec in idx.records:
            by_name.setdefault(rec.image_index, idx.path(rec))
    for i, p in enumerate(syn_prov):
        if p and p.source in by_name:
            src_paths.append(by_name[p.source])
            src_rows.append(i)
    if src_rows:
        src_emb = feats(read_batch(src_paths, clf_size))
        cos = fidelity.cosine_to_source(syn_emb[src_rows], src_emb)
        fid_out["cosine_to_source"] = {"n": len(src_rows), "mean": cos.mean, "values": cos.values}
        metrics.update(cos.metrics())
    else:
        skipped["cosine_to_source"] = "no synthetic image has a provenance source found in --real or --generator-train"

    # --- FID -------------------------------------------------------------------------------
    log.info("FID with a %d-resample bootstrap interval", n_boot)
    fid_res: dict[str, Any] = {}
    extractors: list[tuple[str, np.ndarray, np.ndarray]] = [("classifier", real_emb, syn_emb)]
    side = min(32, image_size)

    def pixels(x: torch.Tensor) -> np.ndarray:
        return torch.nn.functional.interpolate(x, size=(side, side), mode="area").flatten(1).numpy()

    extractors.append(("pixels", pixels(real_px), pixels(syn_px)))
    # a learned feature space the gate never selected in: an autoencoder of the real training images
    train_recs = list(gen_idx.records) if gen_idx is not None else []
    train_px = _read(gen_idx, train_recs, image_size) if gen_idx is not None else None
    encoder = None
    if train_px is not None:
        enc_size = max(16, min(image_size, 64) // 16 * 16)
        log.info("training the gate-independent encoder on %d real training images at %d px", len(train_recs), enc_size)
        encoder = _try("encoder", lambda: fit_encoder(train_px, size=enc_size, seed=seed), skipped)
    else:
        skipped["encoder"] = "no --generator-train folder to train the gate-independent encoder on"
    if encoder is not None:
        extractors.append(("encoder", encoder(real_px), encoder(syn_px)))
    if xrv_weights:
        xf = distance.XRVFeatures(xrv_weights)
        extractors.append(("xrv", xf(real_clf), xf(syn_clf)))
    for name, r, s in extractors:
        res = _try(f"fid_{name}", lambda: distance.fid(r, s, n_boot=n_boot, seed=seed, features=name), skipped)
        if res is not None:
            fid_res[name] = {"fid": res.fid, "low": res.low, "high": res.high, "n_real": res.n_real, "n_synthetic": res.n_synthetic,
                             "n_boot": res.n_boot, "feature_dim": res.feature_dim, "bootstrap_bias": res.bootstrap_bias}
            metrics.update(res.metrics())
        k = _try(f"kid_{name}", lambda: distance.kid(r, s, subset_size=min(100, len(r), len(s)), seed=seed, features=name), skipped)
        if k is not None:
            fid_res.setdefault(name, {}).update({"kid": k.kid, "kid_std": k.std, "kid_subset_size": k.subset_size})
            metrics.update(k.metrics())

    # --- diversity (MS-SSIM within each finding) -------------------------------------------
    log.info("MS-SSIM diversity per finding")
    diversity: dict[str, Any] = {}
    for k, f in enumerate(FINDINGS):
        s_idx = [i for i, g in enumerate(syn_findings) if g == f]
        if not s_idx:
            continue
        r_idx = np.flatnonzero(y_real[:, k] > 0)
        d_s = distance.mean_pairwise_ms_ssim(syn_px[torch.as_tensor(s_idx)], max_pairs, seed + k)
        d_r = distance.mean_pairwise_ms_ssim(real_px[torch.as_tensor(r_idx)], max_pairs, seed + k) if len(r_idx) else None
        diversity[f] = {"synthetic": asdict(d_s), "real": None if d_r is None else asdict(d_r)}
        metrics[f"msssim_synthetic_{f}"] = d_s.mean
        metrics[f"msssim_real_{f}"] = None if d_r is None else d_r.mean

    # --- two-sample test ---------------------------------------------------------------------
    log.info("two-sample test (discriminator, %d epochs)", two_sample_epochs)
    ts: dict[str, Any] = {}
    kw = dict(epochs=two_sample_epochs, seed=seed, groups_real=real_groups, groups_synthetic=syn_groups)
    res = _try("two_sample_image", lambda: two_sample.two_sample_test(real_px, syn_px, image_size=image_size, **kw), skipped)
    if res is not None:
        ts["image"] = asdict(res)
        metrics.update(res.metrics())
    if masks is not None:
        res = _try("two_sample_crop", lambda: two_sample.two_sample_test_crops(real_px, syn_px, masks, crop_size=min(32, image_size), **kw), skipped)
        if res is not None:
            ts["crop"] = asdict(res)
            metrics.update(res.metrics())
    else:
        skipped["two_sample_crop"] = "no masks for the synthetic images (pool without provenance.csv/masks)"

    # --- memorisation -------------------------------------------------------------------------
    mem: dict[str, Any] = {}
    if gen_idx is not None:
        # every training image: a near-copy of any of them counts
        log.info("memorisation: nearest of all %d generator-training images", len(train_recs))
        # near-copies in pixels, and in embeddings only from extractors the gate did not select in
        syn_ind = train_emb = None
        emb_name = "xrv" if xrv_weights else ("encoder" if encoder is not None else None)
        if xrv_weights:
            syn_ind, train_emb = xf(syn_clf), xf(_read(gen_idx, train_recs, clf_size))
        elif encoder is not None:
            syn_ind, train_emb = encoder(syn_px), encoder(train_px)
        exclude = [p.source if p else None for p in syn_prov]
        exclude_patients = [p.source_patient if p else None for p in syn_prov]
        m = _try(
            "memorisation",
            lambda: memorisation.memorisation_check(
                syn_px, train_px, synthetic_ids=[r.image_index for r in syn_recs], train_ids=[r.image_index for r in train_recs],
                exclude=exclude, masks=masks, size=min(32, image_size), train_patients=[r.patient_id for r in train_recs],
                exclude_patients=exclude_patients, synthetic_embeddings=syn_ind, train_embeddings=train_emb, seed=seed,
            ),
            skipped,
        )
        if m is not None:
            fig(memorisation.memorisation_figure(m), "memorisation.png")
            mem = {"n_train": len(train_recs), "embedding_features": emb_name, "masked": m.masked, "size": m.size, "flagged": [list(x) for x in m.flagged_ids],
                   "pixel": {"threshold": m.pixel.threshold, "threshold_source": m.pixel.threshold_source,
                             "synthetic": m.pixel.synthetic, "real": m.pixel.real}}
            if m.embedding is not None:
                mem["embedding"] = {"threshold": m.embedding.threshold, "threshold_source": m.embedding.threshold_source,
                                    "synthetic": m.embedding.synthetic, "real": m.embedding.real}
            metrics.update(m.metrics())
    else:
        skipped["memorisation"] = "no --generator-train folder given"

    # --- the classifier on real, synthetic and both --------------------------------------------
    rows = synthetic_scoring.score_sets(model, real_clf, y_real, syn_clf, y_syn)
    metrics.update(synthetic_scoring.rows_to_metrics(rows, "classifier_"))

    n_show = min(6, len(real_recs), len(syn_recs))
    ri = np.linspace(0, len(real_recs) - 1, n_show).round().astype(int)
    si = np.linspace(0, len(syn_recs) - 1, n_show).round().astype(int)
    titles = [f"real {Path(real_recs[i].image_index).stem[:16]}" for i in ri] + [f"synthetic {syn_findings[i][:12]}" for i in si]
    fig(image_grid([*real_px[torch.as_tensor(ri)], *syn_px[torch.as_tensor(si)]], titles, ncols=max(n_show, 1)), "samples.png")

    result = {
        "inputs": {"real": str(real), "synthetic": str(synthetic), "classifier": str(classifier),
                   "generator_train": None if generator_train is None else str(generator_train), "n_real": len(real_recs),
                   "n_synthetic": len(syn_recs), "image_size": image_size, "classifier_image_size": clf_size, "seed": seed,
                   "n_boot": n_boot, "max_pairs": max_pairs, "masks": masks is not None, "provenance": bool(prov),
                   "include_rejected": include_rejected, "pool_accepted": n_accepted, "pool_rejected": n_rejected,
                   "real_excluded_source_patients": n_real_excluded, "real_disjoint_from_sources": True},
        "fidelity": fid_out,
        "fid": fid_res,
        "diversity": diversity,
        "two_sample": ts,
        "memorisation": mem,
        "classifier_sets": [r.to_dict() for r in rows],
        "metrics": {k: v for k, v in metrics.items() if v is not None},
        "figures": figures,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    result = _jsonable(result)
    atomic_write_bytes(out / "evaluation.json", json.dumps(result, indent=1).encode())
    return result
