"""Train the flow-matching inpainter under Ray Train and record it as one MLflow run.

Run it on its own::

    python -m jobs.train_generator --config configs/local.yaml --set inpainting.train_steps=20
    ray job submit --working-dir . -- python -m jobs.train_generator --config configs/local.yaml
    python -m jobs.train_generator --generator vae --set baseline.train_steps=500   # a baseline: jobs/train_baseline.py

or in-process from the pipeline: :func:`train_generator`. The loop is
:func:`augment.inpainting.train.fit_generator` (plain PyTorch); this module adds Ray Train
(``TorchTrainer``; workers and GPUs from ``resources``), the full training state saved every
``inpainting.sample_every`` steps (to Ray's checkpoint, and to ``out_dir`` so that running
the job again resumes where it stopped), and MLflow: params and tags by the driver, the
loss per step and a grid of (healthy input, mask, output) every ``sample_every`` steps by
the rank-0 worker, then the loss curve, the checkpoint and a logged model.
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
from pathlib import Path
from typing import Any

import torch

from augment.config import InpaintingConfig, RunConfig
from augment.data.io import atomic_torch_save
from augment.data.nih import NIHIndex
from jobs.cli import job_parser, job_split, load_job_config, run
from jobs.generator_run import CHECKPOINT_NAME, TrainedGenerator, default_mask_fn, sample_grid

log = logging.getLogger("cxr.train_generator")

__all__ = ["TrainedGenerator", "train_generator", "train_loop_per_worker", "default_mask_fn", "sample_grid", "main"]

STATE_NAME = "generator_state.pt"


def _arch(icfg: InpaintingConfig) -> dict[str, Any]:
    d = icfg.model_dump(mode="json")
    from augment.inpainting.model import ARCHITECTURE_KEYS  # the settings that shape the network

    return {k: d[k] for k in ARCHITECTURE_KEYS}


def _load_state(config: dict[str, Any]) -> dict[str, Any] | None:
    import ray.train

    from augment.checkpoint import read_checkpoint

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            p = Path(d) / STATE_NAME
            if p.is_file():
                return read_checkpoint(p, "generator training state", required=("model", "step"))
    p = Path(config["out_dir"]) / STATE_NAME
    if p.is_file():
        state = read_checkpoint(p, "generator training state", required=("model", "step"))
        if state.get("arch") == config["arch"]:
            return state
        log.warning("%s was trained with another network (%s); starting afresh", p, state.get("arch"))
    return None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: data and model, resume from the last state, ``fit_generator``, report."""
    import ray.train
    import ray.train.torch

    from augment.inpainting.model import build_model, ema_copy, make_ema, save_checkpoint
    from augment.inpainting.train import build_training_set, fit_generator, make_optimizer
    from jobs.ray_utils import worker_setup

    cfg = RunConfig.model_validate(config["cfg"])
    icfg = cfg.inpainting
    worker_setup(cfg.resources.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.resources.use_gpu else torch.device("cpu")
    out = Path(config["out_dir"])

    data = build_training_set(config["train_index"], cfg.data.image_size, mask_fn=config["mask_fn"])
    if rank == 0:
        log.info("generator training set: %s", data.summary())
    torch.manual_seed(icfg.seed)
    model = build_model(icfg).to(device)
    optimizer = make_optimizer(model, icfg)
    ema = make_ema(model, icfg.ema_decay)
    ema.to(device=device)
    gen = torch.Generator().manual_seed(icfg.seed + 1000 * rank)
    losses: list[float] = []
    start = 0
    state = _load_state(config)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        gen.set_state(state["generator"][rank] if rank < len(state["generator"]) else gen.get_state())
        losses = list(state["losses"])
        start = int(state["step"])
        if rank == 0:
            log.info("resuming generator training at step %d of %d", start, icfg.train_steps)
    ddp = ray.train.torch.prepare_model(model, move_to_device=device) if world > 1 else model

    from augment.tracking import MetricLog

    tracked = rank == 0 and config.get("tracking_uri") and config.get("run_id")
    metric_log = MetricLog(config["run_id"] if tracked else None, config.get("tracking_uri"), every=25, what="generator losses")

    def snapshot(step: int) -> dict[str, Any]:
        gens = [gen.get_state()]
        return {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict(),
            "generator": gens,
            "losses": list(losses),
            "step": step,
            "arch": config["arch"],
        }

    def grid(step: int) -> None:
        from augment.evaluation.plots import save_figure
        from augment.painter import FlowPainter

        path = out / "samples" / f"step_{step:06d}.png"
        save_figure(sample_grid(FlowPainter(ema_copy(model, ema)), data, icfg, title=f"step {step}"), path)
        metric_log.artifact(path, artifact_path="samples")

    fail_after = config.get("fail_after_step")
    marker = out / ".injected-failure"
    total = icfg.train_steps

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        metric_log.add({"loss": loss}, step)
        if step % icfg.sample_every == 0 and step < total:
            metric_log.flush()
            metrics = {"step": step, "loss": loss}
            if rank == 0:
                state = snapshot(step)
                atomic_torch_save(state, out / STATE_NAME)
                grid(step)
                with tempfile.TemporaryDirectory() as d:
                    torch.save(state, Path(d) / STATE_NAME)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            else:
                ray.train.report(metrics)
        if fail_after is not None and step == fail_after and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected worker failure after step {step} (test of resume)")

    fit_generator(ddp, data, icfg, steps=max(total - start, 0), generator=gen, optimizer=optimizer, ema=ema,
                  start_step=start, callback=on_step, progress=rank == 0)
    metric_log.flush()
    final = {"step": max(total, start), "final": 1, "resumed_from_step": -1 if state is None else start}
    if rank == 0:
        st = snapshot(max(total, start))
        atomic_torch_save(st, out / STATE_NAME)
        grid(max(total, start))
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / CHECKPOINT_NAME, ema_copy(model, ema), icfg,
                            extra={"step": max(total, start), "data": data.summary()})
            (Path(d) / "losses.json").write_text(json.dumps(losses))
            torch.save(st, Path(d) / STATE_NAME)
            ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(final)


def _loss_figure(losses: list[float]):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3))
    y = np.asarray(losses, dtype=float)
    ax.plot(np.arange(1, len(y) + 1), y, lw=0.6, alpha=0.4, label="loss")
    if len(y) >= 10:
        k = max(len(y) // 50, 5)
        ax.plot(np.arange(k, len(y) + 1), np.convolve(y, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("mask-weighted flow-matching loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _log_artifacts(out: Path, losses: list[float], ckpt: Path) -> None:
    import mlflow

    from augment.evaluation.plots import save_figure
    from augment.inpainting.model import load_generator
    from augment.tracking import metrics_to_mlflow

    save_figure(_loss_figure(losses), out / "loss_curve.png")
    mlflow.log_artifact(str(out / "loss_curve.png"))
    mlflow.log_artifact(str(ckpt), artifact_path="checkpoint")
    tail = losses[-max(len(losses) // 10, 1):] if losses else []
    metrics_to_mlflow({"final_loss": (sum(tail) / len(tail)) if tail else None, "steps": len(losses)})
    import diffusers

    mlflow.pytorch.log_model(
        load_generator(ckpt),
        name="model",
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"diffusers=={diffusers.__version__}"],
        extra_files=[str(ckpt)],
    )


def train_generator(
    cfg: RunConfig,
    train_index: NIHIndex,
    out_dir: str | os.PathLike,
    parent_run_id: str | None = None,
    *,
    mask_fn: Any | None = None,
    storage_path: str | None = None,
    fail_after_step: int | None = None,
) -> TrainedGenerator:
    """Train the inpainter on ``train_index`` with Ray Train; resume from ``out_dir`` when a state is there.

    Starts a local Ray (``resources.num_cpus``) unless Ray is running or ``RAY_ADDRESS``
    names a cluster. Writes ``generator.pt``, ``generator_state.pt`` (to resume),
    ``losses.json``, ``loss_curve.png`` and ``samples/step_*.png`` to ``out_dir``; with
    tracking on, the same go to one MLflow run (a child of ``parent_run_id`` when given).

    Args:
        cfg: the run profile (``inpainting``, ``data.image_size``, ``resources``, ``tracking``).
        train_index: the training split (never validation or test images).
        out_dir: local folder (a shared volume on a cluster).
        parent_run_id: the pipeline's MLflow run.
        mask_fn: where findings live (see :data:`augment.inpainting.train.MaskFn`); default
            :func:`default_mask_fn` (phantom ground truth, else NIH boxes).
        storage_path: Ray Train's storage; default ``out_dir/ray``.
        fail_after_step: tests only: the worker fails once after this step.

    Raises:
        ValueError: an empty training index.
    """
    from augment import tracking
    from jobs.ray_utils import fit_torch_trainer

    if len(train_index) == 0:
        raise ValueError("the training index is empty; pass the train split of prepare_data(cfg)")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = storage_path or str(out / "ray")
    # Ray Train workers run in another working directory: give them absolute paths.
    train_index = train_index.absolute()
    mask_fn = mask_fn or default_mask_fn(cfg, train_index)
    prev = out / STATE_NAME
    if cfg.tracking.enabled:
        run_ctx = tracking.start_run(
            cfg, "generator", parent_run_id, data_fingerprint=train_index.fingerprint(),
            tags={"cxr.train_images": str(len(train_index)), "cxr.resume_state": str(prev.is_file())},
        )
    else:
        run_ctx = contextlib.nullcontext(None)
    with run_ctx as run:
        import mlflow

        run_id = run.info.run_id if run is not None else None
        loop_config = {
            "cfg": cfg.model_dump(mode="json"),
            "train_index": train_index,
            "mask_fn": mask_fn,
            "tracking_uri": mlflow.get_tracking_uri() if run is not None else None,
            "run_id": run_id,
            "out_dir": str(out),
            "arch": _arch(cfg.inpainting),
            "fail_after_step": fail_after_step,
        }
        result, seconds, _ = fit_torch_trainer(
            train_loop_per_worker, loop_config, cfg,
            name=f"generator-{cfg.fingerprint('inpainting')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=storage, max_failures=2,
        )
        with result.checkpoint.as_directory() as d:
            d = Path(d)
            if not (d / CHECKPOINT_NAME).is_file():
                raise RuntimeError(f"the last Ray checkpoint {d} holds no {CHECKPOINT_NAME}: training did not finish")
            tmp = out / f".{CHECKPOINT_NAME}.tmp"
            shutil.copyfile(d / CHECKPOINT_NAME, tmp)
            os.replace(tmp, out / CHECKPOINT_NAME)
            losses = json.loads((d / "losses.json").read_text())
        (out / "losses.json").write_text(json.dumps(losses))
        resumed = int(result.metrics.get("resumed_from_step", -1))
        if run is not None:
            tracking.metrics_to_mlflow({"fit_seconds": seconds, "resumed_from_step": resumed})
            _log_artifacts(out, losses, out / CHECKPOINT_NAME)
        else:
            from augment.evaluation.plots import save_figure

            save_figure(_loss_figure(losses), out / "loss_curve.png")
    return TrainedGenerator(out / CHECKPOINT_NAME, run_id, tuple(losses), None if resumed < 0 else resumed, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("python -m jobs.train_generator", __doc__, "inpainting.train_steps=20")
    parser.add_argument("--out", default=None, help="output folder (default: <output_dir>/generator, baselines <output_dir>/generator-<kind>)")
    parser.add_argument("--generator", default="flow", choices=("flow", "lsgan", "vae", "gmvae"),
                        help="flow: the flow-matching inpainter under Ray Train (default); lsgan, vae, gmvae: a baseline "
                             "(settings under baseline.*), trained in-process by jobs.train_baseline")
    args = parser.parse_args(argv)
    return run(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    cfg = load_job_config(args)
    split = job_split(cfg)
    if args.generator != "flow":
        from jobs.train_baseline import baseline_out_dir, train_baseline

        out = Path(args.out) if args.out else baseline_out_dir(cfg, args.generator)
        trained = train_baseline(cfg, split.train, out, args.generator, args.parent_run_id)
    else:
        out = Path(args.out) if args.out else Path(cfg.output_dir) / "generator"
        trained = train_generator(cfg, split.train, out, args.parent_run_id)
    tail = trained.losses[-max(len(trained.losses) // 10, 1):] if trained.losses else []
    summary = {
        "generator": args.generator,
        "checkpoint": str(trained.checkpoint_path),
        "mlflow_run_id": trained.run_id,
        "steps": len(trained.losses),
        "first_loss": trained.losses[0] if trained.losses else None,
        "final_loss": (sum(tail) / len(tail)) if tail else None,
        "resumed_from_step": trained.resumed_from_step,
        "fit_seconds": round(trained.seconds, 1),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
