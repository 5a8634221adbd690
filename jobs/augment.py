"""The augmentation job on Ray Data: plan -> register -> inpaint -> gate -> write.

::

    python -m jobs.augment --config configs/local.yaml \
        --classifier runs/.../classifier.pt --generator runs/.../generator.pt

The plan (which healthy image gets which finding) is made on the driver; Ray Data then
streams the items through three actor pools (registration, the generator, the classifier
gate), each loading its model once, and a writer that puts every finished item into the
pool atomically. Nothing materialises the data set: images are read inside the actors.
Pool sizes, batch size and CPU/GPU shares come from the ``augment`` and ``resources``
sections; fractional CPUs per actor keep a 2-core machine out of the read-then-actor-pool
deadlock. Items already in the pool (a resumed run) are skipped; a killed actor is
restarted by Ray and its batch retried, and writes are idempotent per item id, so every
planned item ends up in the provenance table exactly once.

Item ids carry the generator's fingerprint (the hash of its checkpoint), and the pool
records it: a re-run with another generator on the same ``augment.output`` is refused
before any work. The tables list the current plan's items only. Checkpoint and data paths
are checked before Ray starts, and ``.tmp`` files of a killed run are removed.

The gate's near-copy bank is an index folder built once per training split and settings
(:func:`near_copy_bank_index`, a cached stage under ``output_dir``) that every gate actor
memory-maps: actors read no training image at start-up. On a multi-node cluster
``output_dir`` must be on storage every node mounts, as the pool is.

Before planning, the input quality filter (``input_filter``; :mod:`augment.data.input_filter`)
drops candidate healthy sources and diseased references that are not usable frontal films
(wrong view, blank, saturated, rotated, inverted, exposure or PCA outliers); its counts per
reason and a grid of dropped images go to the active MLflow run. ``--dry-run`` prints the
plan and its expected cost from the Data_Entry table alone (no Ray, models or images).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from augment.synthesis.fingerprint import generator_fingerprint
from augment.synthesis.plan import PlanItem, plan_augmentation
from augment.synthesis.pool import PoolWriter
from augment.synthesis.reference_bank import ReferenceBank, build_reference_bank
from augment.synthesis.steps import PASTE, GateStep, InpaintStep, RegisterStep, WriteStep, items_to_batches, run_in_process
from augment.config import ConfigError, RunConfig, check_paths, load_config
from augment.data import DataError, NIHIndex

log = logging.getLogger("cxr.augment")

__all__ = ["AugmentResult", "build_bank", "near_copy_bank_index", "filter_inputs", "run_augment", "main"]


@dataclass(frozen=True)
class AugmentResult:
    """What the job did."""

    pool: str
    planned: int
    skipped_done: int
    processed: int  # items this call ran (the plan less what the pool already held)
    summary: dict[str, Any]
    seconds: float
    throughput: float  # processed items per second
    accepted_per_second: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    generator_fingerprint: str = ""
    bank_index: str = ""  # the near-copy bank's index folder the gate mapped ("" when nothing ran)
    input_filter: dict[str, int] = field(default_factory=dict)  # counts of the input quality filter (empty: off)


def build_bank(cfg: RunConfig, train_index: NIHIndex, classifier_checkpoint: str | None) -> ReferenceBank:
    """The references of each target finding, with maps from the configured attention source."""
    from augment.attention import build_attention_source

    classifier = None
    if cfg.attention.source == "gradcam":
        from augment.classifier import load_classifier

        if not classifier_checkpoint:
            raise ValueError("attention.source 'gradcam' needs the classifier checkpoint (--classifier)")
        classifier = load_classifier(classifier_checkpoint)
    source = build_attention_source(cfg.attention, classifier=classifier, index=train_index)
    return build_reference_bank(
        train_index, list(cfg.augment.findings), cfg.data.image_size, source,
        per_finding=cfg.augment.references_per_finding, seed=cfg.augment.seed,
    )


def filter_inputs(cfg: RunConfig, train_index: NIHIndex) -> tuple[NIHIndex, NIHIndex, Any]:
    """Run the input quality filter over the candidate sources and references.

    Candidates are the 'No Finding' images (sources) and the images showing one of
    ``augment.findings`` (references). Returns the index to plan from (dropped sources
    removed; the findings' positive counts are unchanged), the index to take references
    from (dropped references removed) and the :class:`InputFilterResult` (None when
    ``input_filter.enabled`` is false). Counts and a grid of dropped images are logged to
    the active MLflow run, if any.
    """
    if not cfg.input_filter.enabled:
        return train_index, train_index, None
    from augment.data.input_filter import filter_index

    wanted = set(cfg.augment.findings)
    cands = [r for r in train_index.records if r.is_healthy or wanted & set(r.labels)]
    res = filter_index(train_index, cands, cfg.input_filter)
    healthy = {r.image_index for r in cands if r.is_healthy}
    drop_src = {k for k in res.dropped if k in healthy}
    drop_ref = set(res.dropped) - drop_src
    names = [r.image_index for r in train_index.records]
    plan_index = train_index.subset(n for n in names if n not in drop_src) if drop_src else train_index
    ref_index = train_index.subset(n for n in names if n not in drop_ref) if drop_ref else train_index
    counts = {**res.summary(), "sources_dropped": len(drop_src), "references_dropped": len(drop_ref)}
    msg = (f"input filter: kept {len(res.kept)}/{len(res.ids)} candidates; dropped {len(drop_src)} source(s), "
           f"{len(drop_ref)} reference(s); by reason {dict((k, v) for k, v in res.counts().items() if v)}")
    log.info(msg)
    print(msg)
    _log_input_filter(cfg, res, counts)
    return plan_index, ref_index, res


def _log_input_filter(cfg: RunConfig, res: Any, counts: dict[str, int]) -> None:
    """Metrics ``input_filter.*``, ``input_filter/dropped.json`` and a grid of dropped images
    into the active MLflow run; nothing when tracking is off or no run is active."""
    if not cfg.tracking.enabled or "mlflow" not in sys.modules:  # no run can be active without mlflow imported
        return
    import json
    import tempfile
    from pathlib import Path

    import mlflow

    from augment import tracking

    if mlflow.active_run() is None:
        return
    tracking.metrics_to_mlflow({f"input_filter.{k}": v for k, v in counts.items()})
    mlflow.log_text(json.dumps({"counts": counts, "dropped": {k: list(v) for k, v in res.dropped.items()}}, indent=1),
                    "input_filter/dropped.json")
    if res.thumbnails:
        from augment.evaluation.plots import image_grid, save_figure

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "dropped.png"
            save_figure(image_grid(list(res.thumbnails.values()), [f"{res.reason(k)} {k[:16]}" for k in res.thumbnails]), path)
            mlflow.log_artifact(str(path), "input_filter")


def near_copy_bank_index(cfg: RunConfig, train_index: NIHIndex) -> str:
    """The near-copy bank's index folder for this training split, built once and cached.

    A stage folder ``<output_dir>/stages/near-copy-bank-<key>/`` keyed by the split's
    fingerprint (ids, labels, file sizes) and the bank's settings: the first run reads every
    training image once (in batches) and trains the bank's encoder; later runs, and every
    gate actor, only map the files. Returns the index's absolute path (actors run elsewhere).
    """
    from dataclasses import asdict

    from augment.quality.bank_index import INDEX_VERSION, BankIndexSpec, build_bank_index
    from jobs.stages import run_stage, stage_key

    spec = BankIndexSpec.from_config(cfg)
    key = stage_key({"train": train_index.fingerprint(), "n": len(train_index), "bank": asdict(spec), "version": INDEX_VERSION})

    def work(out: Any) -> dict[str, Any]:
        log.info("near-copy bank: indexing %d training images (once per split and settings)", len(train_index))
        info = build_bank_index(train_index, out / "index", spec)
        return {"index": "index", "count": info.count, "skipped": info.skipped, "nbytes": info.nbytes,
                "feature_space": info.feature_space, "seconds": info.seconds}

    res = run_stage(cfg.output_dir, "near-copy-bank", key, work)
    return str((res.path / res.result["index"]).resolve())


def _actor_kwargs(cfg: RunConfig, size: int, gpu: bool = False) -> dict[str, Any]:
    import ray.data

    r = cfg.resources
    kw: dict[str, Any] = {
        "compute": ray.data.ActorPoolStrategy(size=size),
        "num_cpus": r.cpus_per_actor,
        "batch_size": cfg.augment.batch_size,
        "batch_format": "numpy",
    }
    if gpu and r.use_gpu and r.gpus_per_actor > 0:
        kw["num_gpus"] = r.gpus_per_actor
    # A lost actor is restarted, but its batch is not retried inside Ray: in Ray 2.60 a
    # retried streaming task can abort the driver (a failed check in
    # PeekObjectRefStream). The job retries instead, resuming from the pool (see run_augment).
    kw["max_restarts"] = -1
    kw["max_task_retries"] = 0
    return kw


def _threads(cfg: RunConfig) -> int:
    r = cfg.resources
    return r.torch_threads or max(1, int(r.cpus_per_actor))


class _Threads:
    """Mixin: set torch's thread count in each actor before the step loads its model."""

    def __init__(self, threads: int, *args: Any, **kwargs: Any) -> None:
        import torch

        torch.set_num_threads(threads)
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]


class RegisterActor(_Threads, RegisterStep):
    pass


class InpaintActor(_Threads, InpaintStep):
    pass


class GateActor(_Threads, GateStep):
    pass


def _report(counts: dict[str, Counter], total: int, t0: float) -> None:
    done = sum(sum(c.values()) for c in counts.values())
    parts = [f"{f}: {c['accepted']} accepted / {c['rejected']} rejected" for f, c in sorted(counts.items())]
    log.info("augment %d/%d items (%.2f items/s) | %s", done, total, done / max(1e-9, time.perf_counter() - t0), "; ".join(parts))


def run_augment(
    cfg: RunConfig,
    train_index: NIHIndex,
    classifier_checkpoint: str,
    generator_checkpoint: str,
    generator_run: str = "",
    use_ray: bool = True,
    bank: ReferenceBank | None = None,
    verifier_checkpoint: str | None = None,
    classifier_findings: list[str] | None = None,
) -> AugmentResult:
    """Plan and make the synthetic images, write the pool, return counts and timings.

    Args:
        cfg: the run profile.
        train_index: the real training split (sources, references, and the near-copy bank's
            index, built from it once: :func:`near_copy_bank_index`).
        classifier_checkpoint: the gate's classifier.
        generator_checkpoint: the flow-matching generator (or a VAE/LSGAN baseline); ``"paste"``
            (:data:`~augment.synthesis.steps.PASTE`) paints nothing and keeps the carried
            real lesion (the copy-paste control).
        generator_run: MLflow run id of the generator, recorded per item.
        use_ray: False runs the same steps in a plain in-process loop (the benchmark's
            baseline; no Ray needed).
        bank: references, when already built.
        verifier_checkpoint: the local finding verifier, the gate's judge (``quality.judge``).
        classifier_findings: findings the classifier's rise is also required for
            (``quality.classifier_judge: auto``).

    Raises:
        ConfigError: a checkpoint path does not exist.
        PoolError: ``augment.output`` holds another generator's images.
    """
    t0 = time.perf_counter()
    check_paths(cfg, {"classifier checkpoint": classifier_checkpoint,
                      "generator checkpoint": None if generator_checkpoint == PASTE else generator_checkpoint,
                      **({"verifier checkpoint": verifier_checkpoint} if verifier_checkpoint else {})},
                data=False)
    gate_args = (verifier_checkpoint, classifier_findings)
    fingerprint = generator_fingerprint(generator_checkpoint)
    plan_index, ref_index, filtered = filter_inputs(cfg, train_index)
    plan = plan_augmentation(
        plan_index, list(cfg.augment.findings), cfg.augment.target_count, cfg.augment.max_per_finding,
        cfg.augment.seed, generator=fingerprint,
    )
    plan_ids = [i.item_id for i in plan]
    pool = PoolWriter(cfg.augment.output)
    pool.claim_generator(fingerprint, str(generator_checkpoint))
    stale = pool.remove_stale_tmp()
    if stale:
        log.info("removed %d temporary file(s) an interrupted run left in %s", len(stale), cfg.augment.output)
    done = pool.done_ids()
    todo: list[PlanItem] = [i for i in plan if i.item_id not in done]
    log.info("plan: %d items (%s); %d already in %s", len(plan), dict(Counter(i.finding for i in plan)), len(plan) - len(todo), cfg.augment.output)
    counts: dict[str, Counter] = {}
    stage_seconds: dict[str, float] = {}

    def tally(b: dict) -> None:
        for f, a in zip(b["finding"], b["accepted"]):
            counts.setdefault(str(f), Counter())["accepted" if a else "rejected"] += 1
        _report(counts, len(todo), t0)

    bank_index = ""
    if todo:
        bank = bank or build_bank(cfg, ref_index, classifier_checkpoint)
        bank_index = near_copy_bank_index(cfg, train_index)  # the gate actors map it, reading no image
        if use_ray:
            for attempt in range(1, cfg.augment.max_attempts + 1):
                try:
                    _run_ray(cfg, todo, train_index, bank, bank_index, classifier_checkpoint, generator_checkpoint, generator_run, tally,
                             gate_args)
                    break
                except Exception as exc:  # a lost actor, node or task: resume from what the pool holds
                    if attempt == cfg.augment.max_attempts:
                        raise
                    now_done = pool.done_ids()
                    todo = [i for i in plan if i.item_id not in now_done]
                    log.warning(
                        "augment attempt %d/%d failed (%s: %s); resuming with %d items left",
                        attempt, cfg.augment.max_attempts, type(exc).__name__, str(exc).splitlines()[0][:200], len(todo),
                    )
                    if not todo:
                        break
        else:
            steps = [
                RegisterStep(cfg, train_index, bank),
                InpaintStep(cfg, generator_checkpoint),
                GateStep(cfg, classifier_checkpoint, bank_index, *gate_args),
                WriteStep(cfg.augment.output, generator_run, train_index),
            ]
            _, secs = run_in_process(items_to_batches(todo, cfg.augment.batch_size), steps, tally)
            stage_seconds = dict(zip(("register", "inpaint", "gate", "write"), secs))
    summary = pool.finalize({r.image_index: r for r in train_index.records}, plan_ids)
    seconds = time.perf_counter() - t0
    new = [r for r in pool.rows(plan_ids) if r.item_id not in done]
    accepted = sum(r.accepted for r in new)
    return AugmentResult(
        pool=cfg.augment.output,
        planned=len(plan),
        skipped_done=len(done & set(plan_ids)),
        processed=len(new),
        summary=summary,
        seconds=seconds,
        throughput=len(new) / seconds if seconds > 0 else 0.0,
        accepted_per_second=accepted / seconds if seconds > 0 else 0.0,
        stage_seconds=stage_seconds,
        generator_fingerprint=fingerprint,
        bank_index=bank_index,
        input_filter=filtered.summary() if filtered is not None else {},
    )


def _run_ray(cfg, todo, train_index, bank, bank_index, classifier_ckpt, generator_ckpt, generator_run, on_batch,
             gate_args=(None, None)) -> None:
    import ray
    import ray.data

    from jobs.ray_utils import init_ray

    init_ray(cfg)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    a = cfg.augment
    threads = _threads(cfg)
    ds = ray.data.from_items([i.to_dict() for i in todo], override_num_blocks=max(1, len(todo) // a.batch_size))
    ds = ds.map_batches(
        RegisterActor, fn_constructor_args=(threads, cfg, train_index, bank), **_actor_kwargs(cfg, a.register_actors)
    )
    ds = ds.map_batches(
        InpaintActor, fn_constructor_args=(threads, cfg, generator_ckpt), **_actor_kwargs(cfg, a.inpaint_actors, gpu=True)
    )
    ds = ds.map_batches(
        GateActor, fn_constructor_args=(threads, cfg, classifier_ckpt, bank_index, *gate_args), **_actor_kwargs(cfg, a.gate_actors)
    )
    ds = ds.map_batches(WriteStep, fn_constructor_args=(a.output, generator_run, train_index), **_actor_kwargs(cfg, 1))
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        on_batch(b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.augment", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--classifier", help="classifier checkpoint (path or MLflow URI); required unless --dry-run")
    p.add_argument("--generator", help="generator checkpoint (path or MLflow URI); required unless --dry-run; 'paste' "
                                       "paints nothing: the reference's real lesion carried to its place (copy-paste control)")
    p.add_argument("--verifier", help="local finding verifier checkpoint (python -m jobs.train_verifier); without it the "
                                      "classifier alone judges")
    p.add_argument("--no-ray", action="store_true", help="run the steps in this process, without Ray")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan per finding, the reference bank and the expected time from the Data_Entry "
                        "table alone: no Ray, no model, no image read (the input filter is skipped)")
    p.add_argument("--data-entry", help="dry run: NIH folder or Data_Entry CSV to plan from (default data.root)")
    p.add_argument("--per-item-seconds", type=float,
                   help="dry run: seconds per item on this machine (default: measured on the 2-core VM, see docs/benchmarks.md)")
    p.add_argument("--per-item-seconds-gpu", type=float,
                   help="dry run: seconds per item on one GPU worker (not measured here: an assumption you pass)")
    p.add_argument("--gpu-workers", type=int, default=1, help="dry run: GPU workers sharing the items")
    args = p.parse_args(argv)
    if not args.dry_run and (not args.classifier or not args.generator):
        p.error("--classifier and --generator are required (or pass --dry-run to plan only)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.dry_run:
        from augment.synthesis.dry_run import dry_run, format_dry_run

        try:
            cfg = load_config(args.config, args.overrides)
            d = dry_run(cfg, args.data_entry, args.per_item_seconds, args.per_item_seconds_gpu, args.gpu_workers)
        except (ConfigError, DataError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(format_dry_run(d))
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
        check_paths(cfg, {"--classifier": args.classifier, "--generator": None if args.generator == PASTE else args.generator,
                          **({"--verifier": args.verifier} if args.verifier else {})})
        from augment.data import prepare_data

        _, split = prepare_data(cfg)
        res = run_augment(cfg, split.train, args.classifier, args.generator, use_ray=not args.no_ray,
                          verifier_checkpoint=args.verifier)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"pool {res.pool}: {res.processed} new items in {res.seconds:.1f} s ({res.throughput:.2f}/s); {res.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
