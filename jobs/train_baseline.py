"""Train a baseline generator (LSGAN, VAE, GMVAE) in-process and record it as one MLflow run.

Run it through the generator job::

    python -m jobs.train_generator --generator vae --config configs/local.yaml --set baseline.train_steps=500

The loop is :func:`augment.baselines.train.fit_baseline` (plain PyTorch, one process, no
Ray Train: the baselines are small). Outputs go to ``<output_dir>/generator-<kind>/`` by
default, beside the flow model's ``<output_dir>/generator/`` so that neither overwrites
the other: ``generator.pt`` (``{state_dict, config, version, kind}``, written atomically;
:func:`augment.painter.load_painter` reads it, so pointing ``serve.generator`` or the
augment job at it swaps the generator), ``losses.json``, ``loss_curve.png`` and
``samples/step_*.png`` (healthy input, mask, output, as the flow job) with
``samples/crops_step_*.png`` (raw samples per finding). With tracking on, one MLflow run
``generator-<kind>`` (tag ``cxr.generator``) gets the config as params, every step's loss
terms, the grids, the loss curve, the checkpoint and a logged model. A re-run starts afresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from augment.config import RunConfig
from augment.data.nih import NIHIndex

log = logging.getLogger("cxr.train_baseline")

__all__ = ["baseline_out_dir", "crops_grid", "train_baseline"]


def baseline_out_dir(cfg: RunConfig, kind: str) -> Path:
    """Where the job writes a baseline by default: ``<output_dir>/generator-<kind>``."""
    return Path(cfg.output_dir) / f"generator-{kind}"


def crops_grid(model: Any, data: Any, n: int = 4, seed: int = 0, title: str = ""):
    """A figure of raw samples: one row per condition (healthy, then up to 3 findings of ``data``), ``n`` seeds each."""
    from augment.evaluation.plots import image_grid
    from augment.findings import FINDINGS

    conds = [torch.zeros(len(FINDINGS))]
    if data.masks.shape[0]:
        counts = data.mask_findings.sum(0)
        for j in torch.argsort(counts, descending=True)[:3].tolist():
            if counts[j] > 0:
                c = torch.zeros(len(FINDINGS))
                c[j] = 1.0
                conds.append(c)
    cells, titles = [], []
    for c in conds:
        name = "+".join(FINDINGS[j] for j in torch.nonzero(c).flatten()) or "healthy"
        x = model.sample(c.expand(n, -1).clone(), [torch.Generator().manual_seed(seed + i) for i in range(n)]).cpu()
        cells += list(x)
        titles += [f"{title} {name}"[:30]] + [""] * (n - 1)
    return image_grid(cells, titles, ncols=n)


def _loss_figure(history: dict[str, tuple[float, ...]], kind: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3))
    for key, values in history.items():
        if key == "loss" and kind == "lsgan":
            continue  # the same curve as g_loss
        y = np.asarray(values, dtype=float)
        ax.plot(np.arange(1, len(y) + 1), y, lw=0.8, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("least-squares losses" if kind == "lsgan" else "per-pixel negative ELBO terms")
    ax.set_title(kind)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def train_baseline(
    cfg: RunConfig,
    train_index: NIHIndex,
    out_dir: str | os.PathLike | None = None,
    kind: str | None = None,
    parent_run_id: str | None = None,
    *,
    mask_fn: Any | None = None,
):
    """Train the baseline ``kind`` (default ``cfg.baseline.kind``) on ``train_index``.

    Args:
        cfg: the run profile (``baseline``; ``inpainting.crop_size``/``context``/
            ``finding_fraction`` shape the crops; ``data.image_size``; ``tracking``;
            ``resources.use_gpu`` and ``torch_threads``).
        train_index: the training split (never validation or test images).
        out_dir: default :func:`baseline_out_dir`.
        kind: ``"lsgan"``, ``"vae"`` or ``"gmvae"``.
        parent_run_id: the pipeline's MLflow run.
        mask_fn: where findings live; default :func:`jobs.generator_run.default_mask_fn`.

    Returns:
        A :class:`jobs.generator_run.TrainedGenerator` (``losses`` is the history's
        ``"loss"``; ``resumed_from_step`` is always None).

    Raises:
        ValueError: an empty training index, an unknown kind, a crop size the baselines
            cannot make.
    """
    from augment import tracking
    from augment.baselines.base import BASELINE_KINDS, check_crop_size
    from augment.baselines.registry import build_baseline, save_baseline
    from augment.baselines.train import fit_baseline
    from augment.evaluation.plots import save_figure
    from augment.inpainting.train import build_training_set
    from augment.painter import BaselinePainter
    from jobs.generator_run import CHECKPOINT_NAME, TrainedGenerator, default_mask_fn, sample_grid

    kind = kind or cfg.baseline.kind
    if kind not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline kind {kind!r}; use one of {list(BASELINE_KINDS)}")
    check_crop_size(cfg.inpainting.crop_size)
    if len(train_index) == 0:
        raise ValueError("the training index is empty; pass the train split of prepare_data(cfg)")
    bcfg, icfg = cfg.baseline, cfg.inpainting
    out = Path(out_dir) if out_dir is not None else baseline_out_dir(cfg, kind)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.resources.torch_threads:
        torch.set_num_threads(cfg.resources.torch_threads)
    from augment.device import run_device

    device = run_device(cfg.resources.use_gpu)
    mask_fn = mask_fn or default_mask_fn(cfg, train_index)
    data = build_training_set(train_index, cfg.data.image_size, mask_fn=mask_fn)
    log.info("baseline %s training set: %s", kind, data.summary())

    if cfg.tracking.enabled:
        run_ctx = tracking.start_run(
            cfg, f"generator-{kind}", parent_run_id, data_fingerprint=train_index.fingerprint(),
            tags={"cxr.generator": kind, "cxr.train_images": str(len(train_index))},
        )
    else:
        run_ctx = contextlib.nullcontext(None)
    with run_ctx as run:
        import mlflow

        run_id = run.info.run_id if run is not None else None
        if run is not None:
            mlflow.log_params({"generator": kind})
        metric_log = tracking.MetricLog(run_id, cfg.tracking.uri, every=100, what="baseline losses")

        def grids(model: Any, step: int) -> None:
            for name, fig in (
                (f"step_{step:06d}.png", sample_grid(BaselinePainter(model), data, icfg, title=f"{kind} {step}")),
                (f"crops_step_{step:06d}.png", crops_grid(model, data, title=f"{step}")),
            ):
                path = save_figure(fig, out / "samples" / name)
                if run is not None:
                    mlflow.log_artifact(str(path), artifact_path="samples")

        def on_step(step: int, metrics: dict[str, float]) -> None:
            metric_log.add(metrics, step)
            if step % bcfg.sample_every == 0 and step < bcfg.train_steps:
                metric_log.flush()
                grids(model, step)

        with torch.random.fork_rng(devices=[]):  # the same initial weights as fit_baseline's own
            torch.manual_seed(bcfg.seed)
            model = build_baseline(kind, bcfg, icfg.crop_size, icfg.context)
        fit = fit_baseline(kind, data, bcfg, bcfg.train_steps, on_step, inpainting=icfg, model=model,
                           device=device, progress=True)
        metric_log.flush()
        model = fit.model.eval()
        ckpt = save_baseline(out / CHECKPOINT_NAME, model, extra={"step": bcfg.train_steps, "data": data.summary()})
        history = {k: list(v) for k, v in fit.history.items()}
        (out / "losses.json").write_text(json.dumps(history))
        grids(model, bcfg.train_steps)
        save_figure(_loss_figure(fit.history, kind), out / "loss_curve.png")
        if run is not None:
            losses = history["loss"]
            tail = losses[-max(len(losses) // 10, 1):] if losses else []
            tracking.metrics_to_mlflow({
                "fit_seconds": fit.seconds,
                "final_loss": (sum(tail) / len(tail)) if tail else None,
                "steps": len(losses),
            })
            mlflow.log_artifact(str(out / "loss_curve.png"))
            mlflow.log_artifact(str(out / "losses.json"))
            mlflow.log_artifact(str(ckpt), artifact_path="checkpoint")
            _log_model(ckpt)
    return TrainedGenerator(ckpt, run_id, fit.losses, None, fit.seconds)


def _log_model(ckpt: Path) -> None:
    import mlflow

    from augment.baselines.registry import load_baseline

    try:
        mlflow.pytorch.log_model(
            load_baseline(ckpt),
            name="model",
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            extra_files=[str(ckpt)],
        )
    except Exception as exc:  # the checkpoint artifact is what services read; the model is a convenience
        log.warning("could not log the baseline as an MLflow model: %s", exc)
