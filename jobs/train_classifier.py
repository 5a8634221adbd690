"""Train the classifier under Ray Train and record it as one MLflow run.

Run it on its own::

    python -m jobs.train_classifier --config configs/local.yaml --set classifier.epochs=2
    ray job submit --working-dir . -- python -m jobs.train_classifier --config configs/local.yaml

or in-process from the pipeline: :func:`train_classifier`. The loop itself is
:func:`augment.classifier.train.fit` (plain PyTorch); this module adds Ray Train
(``TorchTrainer``, workers and GPUs from ``resources``), a checkpoint after every epoch with
the full training state so that a failed worker group resumes where it stopped
(``classifier.max_failures``), and MLflow logging: params and tags by the driver, per-epoch
metrics by the rank-0 worker (Train V2 rejects Tune's MLflow callback), then the loss curve,
the per-finding table, the checkpoint file and a logged model.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from augment.checkpoint import read_checkpoint
from augment.classifier.checkpoint import CHECKPOINT_NAME, save_checkpoint
from augment.classifier.metrics import ClassifierMetrics, FindingMetrics
from augment.classifier.train import EpochRecord, fit, make_loader, make_loss
from augment.config import RunConfig
from augment.data.nih import NIHIndex
from jobs.cli import job_parser, job_split, load_job_config, run

log = logging.getLogger("cxr.train_classifier")

__all__ = ["TrainedClassifier", "train_classifier", "train_loop_per_worker", "main"]

STATE_NAME = "train_state.pt"


@dataclass(frozen=True)
class TrainedClassifier:
    """The outcome of :func:`train_classifier`.

    Attributes:
        checkpoint_path: ``{state_dict, config, version}`` file in ``out_dir``.
        history: one record per epoch (train/val loss, gap, macro AUC, lr, time).
        metrics: validation metrics of the returned weights.
        run_id: the MLflow run, or None when tracking is off.
        resumed_from_epoch: epochs restored from a checkpoint after a worker failure (None: no failure).
        seconds: wall time of ``trainer.fit()`` (Ray start-up excluded).
        fit_phases: where ``seconds`` went, from times the rank-0 worker reports: ``start``
            (Ray Train's controller and worker processes, until the loop runs), ``setup`` (model,
            data loaders, resume), ``train`` (the epochs, validation and checkpoints) and
            ``teardown`` (the final checkpoint until ``fit()`` returns). Wall clocks: on a
            cluster the skew between the driver's and the worker's node enters.
    """

    checkpoint_path: Path
    history: tuple[EpochRecord, ...]
    metrics: ClassifierMetrics
    run_id: str | None
    resumed_from_epoch: int | None
    seconds: float
    fit_phases: dict[str, float] = field(default_factory=dict)


def _metrics_from_dict(d: dict[str, Any]) -> ClassifierMetrics:
    return ClassifierMetrics(
        per_finding=tuple(FindingMetrics(**row) for row in d["per_finding"]),
        macro_auc=d["macro_auc"],
        loss=d["loss"],
        n_images=d["n_images"],
    )


def _mlflow_epoch_logger(tracking_uri: str | None, run_id: str | None):
    from augment.tracking import MetricLog

    metric_log = MetricLog(run_id if tracking_uri else None, tracking_uri, what="classifier epochs")

    def log_epoch(rec: EpochRecord) -> None:
        values = {
            "train_loss": rec.train_loss,
            "val_loss": rec.val_loss,
            "loss_gap": rec.loss_gap,
            "val_macro_auc": rec.val_macro_auc,
            "lr": rec.lr,
            "epoch_seconds": rec.seconds,
            "train_images_per_s": rec.train_images_per_s,
        }
        metric_log.add(values, rec.epoch)
        metric_log.flush()  # an epoch's values at once: the run shows progress epoch by epoch

    return log_epoch


def _resume_state() -> dict[str, Any] | None:
    """The training state of Ray Train's last checkpoint (read safely), or None on a fresh start."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        state = Path(d) / STATE_NAME
        return read_checkpoint(state, "classifier training state", required=("epoch",)) if state.is_file() else None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build data and model, resume if a checkpoint exists, run ``fit``."""
    import ray.train
    import ray.train.torch

    from augment.classifier.model import build_classifier
    from jobs.ray_utils import worker_setup

    loop_started_at = time.time()
    cfg = RunConfig.model_validate(config["cfg"])
    ccfg = cfg.classifier
    worker_setup(cfg.resources.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    torch.manual_seed(ccfg.seed)
    model = build_classifier(ccfg)
    train_index: NIHIndex = config["train_index"]
    # a last batch of one image cannot train batch norm ("Expected more than 1 value per
    # channel"): drop it, whatever the training set's size
    train_loader = make_loader(train_index, ccfg, shuffle=True, seed=ccfg.seed,
                               drop_last=len(train_index) % ccfg.batch_size == 1)
    val_loader = make_loader(config["val_index"], ccfg, shuffle=False)
    if world > 1:
        train_loader = ray.train.torch.prepare_data_loader(train_loader, move_to_device=False)
    ddp = ray.train.torch.prepare_model(model, move_to_device=device)

    resume = _resume_state()
    resumed_from = None if resume is None else int(resume["epoch"])

    log_epoch = _mlflow_epoch_logger(config.get("tracking_uri"), config.get("run_id")) if rank == 0 else (lambda r: None)
    fail_after = config.get("fail_after_epoch")
    marker = Path(config["out_dir"]) / ".injected-failure"

    def on_epoch(rec: EpochRecord, snapshot) -> None:
        metrics = {k: v for k, v in asdict(rec).items() if v is not None}
        log_epoch(rec)
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save(snapshot(), Path(d) / STATE_NAME)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        if fail_after is not None and rec.epoch == fail_after and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected worker failure after epoch {rec.epoch} (test of resume)")

    fit_started_at = time.time()
    result = fit(
        ddp,
        train_loader,
        val_loader,
        ccfg,
        device=device,
        loss_fn=make_loss(ccfg, train_index.labels_matrix()),
        on_epoch=on_epoch,
        resume=resume,
        eval_model=model,
    )
    final = {
        "final": 1,
        "val_loss": result.metrics.loss,
        "resumed_from_epoch": -1 if resumed_from is None else resumed_from,
        "loop_started_at": loop_started_at,
        "fit_started_at": fit_started_at,
        "fit_ended_at": time.time(),
    }
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / CHECKPOINT_NAME, model, ccfg, extra={"best_epoch": result.best_epoch})
            (Path(d) / "metrics.json").write_text(json.dumps(result.metrics.to_dict()))
            (Path(d) / "history.json").write_text(json.dumps([asdict(r) for r in result.history]))
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(final)


def _log_artifacts(out_dir: Path, history: tuple[EpochRecord, ...], metrics: ClassifierMetrics, ckpt: Path) -> None:
    import mlflow

    from augment.classifier.checkpoint import load_classifier
    from augment.classifier.report import loss_curve_figure, write_metrics_table
    from augment.evaluation.plots import save_figure
    from augment.tracking import metrics_to_mlflow

    save_figure(loss_curve_figure(history), out_dir / "loss_curve.png")
    csv_path, json_path = write_metrics_table(metrics, out_dir)
    mlflow.log_artifact(str(out_dir / "loss_curve.png"))
    mlflow.log_artifact(str(csv_path))
    mlflow.log_artifact(str(json_path))
    mlflow.log_artifact(str(ckpt), artifact_path="checkpoint")
    final = {"final_" + k: v for k, v in metrics.flat("val").items()}
    final["final_loss_gap"] = history[-1].loss_gap if history else None
    metrics_to_mlflow(final)
    model = load_classifier(ckpt)
    mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "efficientnet-pytorch==0.7.1"],
        extra_files=[str(ckpt)],
    )


def train_classifier(
    cfg: RunConfig,
    train_index: NIHIndex,
    val_index: NIHIndex,
    out_dir: str | os.PathLike,
    parent_run_id: str | None = None,
    *,
    storage_path: str | None = None,
    fail_after_epoch: int | None = None,
) -> TrainedClassifier:
    """Train the classifier on ``train_index`` with Ray Train, validate on ``val_index``.

    Starts a local Ray (``resources.num_cpus``) unless Ray is running or ``RAY_ADDRESS`` names a
    cluster. Writes ``classifier.pt``, ``history.json``, ``loss_curve.png`` and
    ``per_finding.{csv,json}`` to ``out_dir``; with tracking on, the same go to one MLflow run
    (a child of ``parent_run_id`` when given).

    Args:
        cfg: the run profile (``classifier``, ``resources``, ``tracking``).
        train_index, val_index: the splits (e.g. from :func:`augment.data.prepare_data`).
        out_dir: local folder for the outputs.
        parent_run_id: the pipeline's MLflow run.
        storage_path: Ray Train's storage for checkpoints (a shared path or URI on a
            cluster); default ``out_dir/ray``.
        fail_after_epoch: tests only: the workers fail once after this epoch.

    Raises:
        ValueError: an empty split.
        ray.train.TrainingFailedError: training failed more than ``classifier.max_failures`` times.
    """
    from augment import tracking
    from jobs.ray_utils import fit_torch_trainer

    if len(train_index) == 0 or len(val_index) == 0:
        raise ValueError(f"train ({len(train_index)}) and validation ({len(val_index)}) sets must not be empty")
    # Ray workers run in their own working folder: relative data roots must not reach them.
    train_index, val_index = train_index.absolute(), val_index.absolute()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = storage_path or str(out / "ray")
    if cfg.tracking.enabled:
        run_ctx = tracking.start_run(
            cfg, "classifier", parent_run_id, data_fingerprint=train_index.fingerprint(),
            tags={"cxr.train_images": str(len(train_index)), "cxr.val_images": str(len(val_index))},
        )
    else:
        run_ctx = contextlib.nullcontext(None)
    with run_ctx as run:
        import mlflow

        run_id = run.info.run_id if run is not None else None
        tracking_uri = mlflow.get_tracking_uri() if run is not None else None
        loop_config = {
            "cfg": cfg.model_dump(mode="json"),
            "train_index": train_index,
            "val_index": val_index,
            "tracking_uri": tracking_uri,
            "run_id": run_id,
            "out_dir": str(out),
            "fail_after_epoch": fail_after_epoch,
        }
        result, seconds, started_at = fit_torch_trainer(
            train_loop_per_worker, loop_config, cfg,
            name=f"classifier-{cfg.fingerprint('classifier')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=storage, max_failures=cfg.classifier.max_failures,
        )
        with result.checkpoint.as_directory() as d:
            d = Path(d)
            if not (d / CHECKPOINT_NAME).is_file():
                raise RuntimeError(f"the last Ray checkpoint {d} holds no {CHECKPOINT_NAME}: training did not finish")
            tmp = out / f".{CHECKPOINT_NAME}.tmp"
            shutil.copyfile(d / CHECKPOINT_NAME, tmp)
            os.replace(tmp, out / CHECKPOINT_NAME)
            metrics = _metrics_from_dict(json.loads((d / "metrics.json").read_text()))
            history = tuple(EpochRecord(**r) for r in json.loads((d / "history.json").read_text()))
        (out / "history.json").write_text(json.dumps([asdict(r) for r in history], indent=2))
        resumed = int(result.metrics.get("resumed_from_epoch", -1))
        m = result.metrics
        phases = {
            "start": m["loop_started_at"] - started_at,
            "setup": m["fit_started_at"] - m["loop_started_at"],
            "train": m["fit_ended_at"] - m["fit_started_at"],
            "teardown": started_at + seconds - m["fit_ended_at"],
        }
        if run is not None:
            tracking.metrics_to_mlflow({"fit_seconds": seconds, "resumed_from_epoch": resumed,
                                        **{f"fit_seconds.{k}": v for k, v in phases.items()}})
            _log_artifacts(out, history, metrics, out / CHECKPOINT_NAME)
        else:
            from augment.classifier.report import loss_curve_figure, write_metrics_table
            from augment.evaluation.plots import save_figure

            save_figure(loss_curve_figure(history), out / "loss_curve.png")
            write_metrics_table(metrics, out)
    return TrainedClassifier(out / CHECKPOINT_NAME, history, metrics, run_id, None if resumed < 0 else resumed, seconds, phases)


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m jobs.train_classifier", __doc__, "classifier.epochs=2")
    parser.add_argument("--out", default=None, help="output folder (default: <output_dir>/classifier)")
    args = parser.parse_args(argv)
    return run(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    cfg = load_job_config(args)
    split = job_split(cfg)
    out = Path(args.out) if args.out else Path(cfg.output_dir) / "classifier"
    trained = train_classifier(cfg, split.train, split.val, out, args.parent_run_id)
    summary = {
        "checkpoint": str(trained.checkpoint_path),
        "mlflow_run_id": trained.run_id,
        "epochs": len(trained.history),
        "val_loss": trained.metrics.loss,
        "val_macro_auc": trained.metrics.macro_auc,
        "missing_findings": list(trained.metrics.missing_findings),
        "loss_gap": trained.history[-1].loss_gap if trained.history else None,
        "fit_seconds": round(trained.seconds, 1),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
