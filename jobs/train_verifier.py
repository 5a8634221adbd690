"""Train the local finding verifier (the gate's judge) under Ray Train; one MLflow run.

Run it on its own::

    python -m jobs.train_verifier --config configs/local.yaml [--generator runs/local/generator/generator.pt]
    ray job submit --working-dir . -- python -m jobs.train_verifier --config configs/local.yaml

or in-process from the pipeline (its ``verifier`` stage, between the classifier and the
augment job): :func:`train_verifier`. The driver cuts the crops
(:func:`augment.quality.verifier.build_crops`: positives around the training split's finding
regions, the same places in images without the finding, and filled hard negatives; the
validation split's crops the same way, patient-disjoint; with ``generator`` among
``verifier.hard_negatives`` the generator also repaints those places as "No Finding", so the
verifier learns that the generator's own texture is not a finding); a Ray Train worker fits the network
(:func:`augment.quality.verifier.fit_verifier`) and chooses each finding's threshold on the
validation crops. MLflow gets the per-finding validation AUC, the threshold and the pass rate
of every kind of validation crop at it, and the checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from augment.config import RunConfig
from augment.data.nih import NIHIndex
from jobs.cli import job_parser, job_split, load_job_config, run

log = logging.getLogger("cxr.train_verifier")

__all__ = ["TrainedVerifier", "make_painter", "painter_settings", "train_verifier", "verifier_findings", "main"]


@dataclass(frozen=True)
class TrainedVerifier:
    """The outcome of :func:`train_verifier`.

    Attributes:
        checkpoint_path: ``verifier.pt`` in the output folder.
        report: per finding: validation AUC, counts, threshold, pass rate per kind of crop.
        thresholds: per finding, the operating threshold (None: not trained).
        threshold_source: per finding, where its threshold came from.
        skipped: findings without a training region, and why.
        run_id: the MLflow run, or None when tracking is off.
        seconds: wall time of the Ray Train fit.
        crops: counts of training and validation crops.
    """

    checkpoint_path: Path
    report: dict[str, Any]
    thresholds: dict[str, float | None]
    threshold_source: dict[str, str]
    skipped: dict[str, str]
    run_id: str | None
    seconds: float
    crops: dict[str, int]


def verifier_findings(cfg: RunConfig) -> list[str]:
    """``verifier.findings``, else the augment job's findings."""
    return list(cfg.verifier.findings or cfg.augment.findings)


def painter_settings(cfg: RunConfig) -> dict[str, Any]:
    """The inpainting settings the generator's hard negatives are painted with (part of the stage's cache key)."""
    return {"steps": cfg.inpainting.steps, "solver": cfg.inpainting.solver, "guidance": cfg.inpainting.guidance,
            "region_margin": cfg.inpainting.region_margin, "crop_size": cfg.inpainting.crop_size,
            "context": cfg.inpainting.context, "region": cfg.inpainting.region}


def make_painter(cfg: RunConfig, checkpoint: str | os.PathLike) -> Any:
    """``painter(images, regions, seeds)``: the generator repaints each region as "No Finding" from noise.

    Raises:
        ValueError: the checkpoint is missing (names the fix).
    """
    import torch

    from augment.device import run_device
    from augment.painter import load_painter

    if not Path(checkpoint).is_file():
        raise ValueError(
            f"verifier.hard_negatives names 'generator' but there is no generator checkpoint at {checkpoint}: train one "
            "(python -m jobs.train_generator), pass --generator, or drop 'generator' from verifier.hard_negatives")
    painter = load_painter(checkpoint, map_location=run_device(cfg.resources.use_gpu))
    icfg = cfg.inpainting.model_copy(update={"coupling": "noise"})

    def paint(images: Any, regions: Any, seeds: list[int]) -> Any:
        healthy = torch.zeros(len(seeds), 14)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return painter.paint(images, regions, healthy, icfg, generator=gens).images

    return paint


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: fit the verifier on the driver's crops, report the checkpoint."""
    import ray.train
    import ray.train.torch

    from augment.quality.verifier import CHECKPOINT_NAME, CropSet, fit_verifier, save_verifier
    from jobs.ray_utils import worker_setup

    cfg = RunConfig.model_validate(config["cfg"])
    worker_setup(cfg.resources.torch_threads)
    device = ray.train.torch.get_device()
    train, val = CropSet(**config["train"]), CropSet(**config["val"])
    fit = fit_verifier(train, val, cfg.verifier, device=device)
    if ray.train.get_context().get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as d:
            save_verifier(Path(d) / CHECKPOINT_NAME, fit, cfg.verifier, train.findings, cfg.data.image_size,
                          extra={"report": fit.report})
            (Path(d) / "report.json").write_text(json.dumps(
                {"report": fit.report, "threshold_source": fit.threshold_source, "history": fit.history}, default=str))
            ray.train.report({"done": 1}, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report({"done": 1})


def _cropset_dict(c: Any) -> dict[str, Any]:
    return {"crops": c.crops, "targets": c.targets, "kinds": c.kinds, "finding": c.finding, "groups": c.groups,
            "findings": c.findings, "skipped": c.skipped}


def _attention(cfg: RunConfig, train: NIHIndex, classifier_checkpoint: str | None) -> Any:
    from augment.attention import build_attention_source

    classifier = None
    if cfg.attention.source == "gradcam":
        if not classifier_checkpoint:
            raise ValueError("attention.source 'gradcam' needs the classifier checkpoint (--classifier) to find the verifier's regions")
        from augment.classifier import load_classifier

        classifier = load_classifier(classifier_checkpoint)
        log.warning("verifier: attention.source is gradcam: its positives are the classifier's strongest attention "
                    "regions, not annotated lesions (use bbox or phantom where the data has them)")
    return build_attention_source(cfg.attention, classifier=classifier, index=train)


def train_verifier(
    cfg: RunConfig,
    train_index: NIHIndex,
    val_index: NIHIndex,
    out_dir: str | os.PathLike,
    parent_run_id: str | None = None,
    classifier_checkpoint: str | None = None,
    generator_checkpoint: str | None = None,
) -> TrainedVerifier:
    """Cut the crops, train the verifier with Ray Train, write ``verifier.pt`` and ``report.json``.

    ``generator_checkpoint`` paints the ``generator`` hard negatives; without it they are left
    out with a warning.

    Raises:
        ValueError: no finding has a region in the training split, an empty split, or a
            generator checkpoint that does not exist.
    """
    from augment import tracking
    from augment.quality.verifier import CHECKPOINT_NAME, build_crops
    from jobs.ray_utils import fit_torch_trainer

    if len(train_index) == 0 or len(val_index) == 0:
        raise ValueError(f"train ({len(train_index)}) and validation ({len(val_index)}) sets must not be empty")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    findings = verifier_findings(cfg)
    attention = _attention(cfg, train_index, classifier_checkpoint)
    vcfg, painter = cfg.verifier, None
    if "generator" in vcfg.hard_negatives:
        if generator_checkpoint:
            painter = make_painter(cfg, generator_checkpoint)
        else:
            log.warning("verifier: no generator checkpoint: its 'generator' hard negatives are left out")
            vcfg = vcfg.model_copy(update={"hard_negatives": [h for h in vcfg.hard_negatives if h != "generator"]})
    grow = cfg.inpainting.region_margin + 2  # the region the augment job repaints (carry_lesion's margin)
    t0 = time.perf_counter()
    train = build_crops(train_index, findings, attention, vcfg, cfg.data.image_size, training=True, seed=vcfg.seed,
                        painter=painter, paint_grow=grow)
    val = build_crops(val_index, findings, attention, vcfg, cfg.data.image_size, training=False, seed=vcfg.seed + 1,
                      painter=painter, paint_grow=grow)
    crop_seconds = time.perf_counter() - t0
    if len(train.skipped) == len(findings):
        raise ValueError(f"no training region for any verifier finding ({train.skipped}); the gate cannot verify them")
    log.info("verifier crops: %d train, %d validation (%.1f s): %s", len(train), len(val), crop_seconds, train.counts())
    run_ctx = tracking.start_run(cfg, "verifier", parent_run_id, data_fingerprint=train_index.fingerprint()) \
        if cfg.tracking.enabled else contextlib.nullcontext(None)
    with run_ctx as run:
        result, seconds, _ = fit_torch_trainer(
            train_loop_per_worker,
            {"cfg": cfg.model_dump(mode="json"), "train": _cropset_dict(train), "val": _cropset_dict(val)},
            cfg,
            name=f"verifier-{cfg.fingerprint('verifier')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str(out / "ray"),
            max_failures=cfg.classifier.max_failures,
        )
        with result.checkpoint.as_directory() as d:
            d = Path(d)
            tmp = out / f".{CHECKPOINT_NAME}.tmp"
            shutil.copyfile(d / CHECKPOINT_NAME, tmp)
            os.replace(tmp, out / CHECKPOINT_NAME)
            payload = json.loads((d / "report.json").read_text())
        report, source = payload["report"], payload["threshold_source"]
        full = {"report": report, "threshold_source": source, "skipped": train.skipped,
                "crops": {"train": len(train), "val": len(val)}, "counts_train": train.counts(),
                "counts_val": val.counts(), "history": payload["history"]}
        (out / "report.json").write_text(json.dumps(full, indent=1, default=str))
        if run is not None:
            import mlflow

            metrics: dict[str, Any] = {"fit_seconds": seconds, "crop_seconds": crop_seconds,
                                       "crops.train": len(train), "crops.val": len(val)}
            for f, row in report.items():
                for k, v in row.items():
                    if isinstance(v, (int, float)) and v is not None:
                        metrics[f"val.{f}.{k}"] = v
            tracking.metrics_to_mlflow(metrics)
            for h in payload["history"]:
                tracking.metrics_to_mlflow({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]))
            mlflow.log_artifact(str(out / "report.json"))
            mlflow.log_artifact(str(out / CHECKPOINT_NAME))
    thresholds = {f: row.get("threshold") for f, row in report.items()}
    return TrainedVerifier(out / CHECKPOINT_NAME, report, thresholds, source, dict(train.skipped),
                           run.info.run_id if run is not None else None, seconds, {"train": len(train), "val": len(val)})


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m jobs.train_verifier", __doc__, "verifier.epochs=10")
    parser.add_argument("--classifier", default=None, help="classifier checkpoint (needed with attention.source gradcam)")
    parser.add_argument("--generator", default=None,
                        help="flow generator that paints the 'generator' hard negatives (default <output_dir>/generator/generator.pt)")
    parser.add_argument("--out", default=None, help="output folder (default: <output_dir>/verifier)")
    args = parser.parse_args(argv)
    return run(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    from augment.data import DataError
    cfg = load_job_config(args)
    split = job_split(cfg)
    try:
        out = Path(args.out) if args.out else Path(cfg.output_dir) / "verifier"
        gen = args.generator or str(Path(cfg.output_dir) / "generator" / "generator.pt")  # a missing one: ValueError
        trained = train_verifier(cfg, split.train, split.val, out, args.parent_run_id, args.classifier,
                                 gen if "generator" in cfg.verifier.hard_negatives else None)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"checkpoint": str(trained.checkpoint_path), "mlflow_run_id": trained.run_id,
                      "report": trained.report, "skipped": trained.skipped, "fit_seconds": round(trained.seconds, 1)},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
