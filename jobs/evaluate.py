"""Evaluate a synthetic pool against real images: fidelity, FID, diversity, two-sample test, memorisation
(the command line and MLflow run of :func:`augment.evaluation.report.evaluate`, whose module
says what each measure is and why none of them can flatter).

::

    python -m jobs.evaluate --real data/nih-test --synthetic runs/local/pool \
        --classifier runs/local/classifier/classifier.pt --generator-train data/nih-train \
        --out reports/evaluate --tracking-uri sqlite:///runs/mlflow.db --experiment cxr-evaluation

Writes ``evaluation.json`` and PNG figures into ``--out`` (atomically) and, with
``--tracking-uri``, logs metrics and files to an MLflow run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from augment.data.nih import DataError
from augment.evaluation.report import EVALUATION_KEYS, evaluate

__all__ = ["evaluate", "main", "EVALUATION_KEYS"]


def _log_mlflow(result: dict[str, Any], out: Path, tracking_uri: str, experiment: str, artifact_location: str | None = None) -> str:
    import mlflow

    from augment.tracking import resolve_uri, git_commit, metrics_to_mlflow

    uri = resolve_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else mlflow.create_experiment(experiment, artifact_location=artifact_location)
    with mlflow.start_run(experiment_id=exp_id, run_name="evaluate",
                          tags={"cxr.stage": "evaluate", "mlflow.source.git.commit": git_commit()}) as run:
        mlflow.log_params({f"evaluate.{k}": ("" if v is None else str(v))[:500] for k, v in result["inputs"].items()})
        metrics_to_mlflow(result["metrics"])
        mlflow.log_artifacts(str(out), artifact_path="evaluation")
        return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True, help="NIH-layout folder of real images")
    p.add_argument("--synthetic", required=True, help="NIH-layout folder of synthetic images (a pool)")
    p.add_argument("--classifier", required=True, help="classifier checkpoint (path or MLflow URI), for embeddings")
    p.add_argument("--generator-train", default=None, help="NIH-layout folder the generator was trained on (memorisation)")
    p.add_argument("--out", default="reports/evaluate", help="output folder")
    p.add_argument("--tracking-uri", default=None, help="log to this MLflow store")
    p.add_argument("--experiment", default="cxr-evaluation", help="MLflow experiment name")
    p.add_argument("--artifact-location", default=None, help="artifact root of a newly created experiment (MLflow's default otherwise)")
    p.add_argument("--max-images", type=int, default=200, help="images per set (seeded random subset)")
    p.add_argument("--image-size", type=int, default=64, help="side for pixel-space measures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=100, help="bootstrap resamples for the FID interval")
    p.add_argument("--max-pairs", type=int, default=100, help="MS-SSIM pairs per finding")
    p.add_argument("--epochs", type=int, default=10, help="two-sample discriminator epochs")
    p.add_argument("--xrv-weights", default=None, help="torchxrayvision DenseNet weights name or local file, for an extra FID")
    p.add_argument("--include-rejected", action="store_true",
                   help="evaluate the gate's rejected images too (the generator's realism, not the gated pool's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from augment.classifier.checkpoint import CheckpointError

    try:
        result = evaluate(args.real, args.synthetic, args.classifier, args.out, args.generator_train, args.max_images,
                          args.image_size, args.seed, args.n_boot, args.max_pairs, args.epochs, args.xrv_weights,
                          args.include_rejected)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_id = _log_mlflow(result, Path(args.out), args.tracking_uri, args.experiment, args.artifact_location) if args.tracking_uri else None
    summary = {k: result["metrics"].get(k) for k in ("fid_classifier", "fid_classifier_low", "fid_classifier_high",
                                                     "embedding_silhouette", "two_sample_image_auc", "memorisation_pixel_n_flagged")}
    print(json.dumps({"out": str(args.out), "mlflow_run_id": run_id, **summary, "skipped": result["skipped"]}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
