"""Does augmentation help? Base vs augmented classifier over seeds and real-data fractions.

::

    python -m jobs.utility --config configs/local.yaml \
        --set utility.seeds=3 --set 'utility.fractions=[0.1, 1.0]' [--pool runs/local/augmented/<key>]

For every fraction of the real training split (``utility.fractions``; whole patients, rare
findings keep their share) and every seed ``0..utility.seeds-1``, it trains two classifiers
with Ray Train, exactly as the pipeline does: the base one on the kept real images and the
augmented one on the same images plus the synthetic pool's accepted images
(``utility.pool_sources``: by default only those painted on a healthy image among the
kept ones). The seed picks the subset and the classifier's
initialisation; both arms of a seed share them. Both are scored on the same held-out real
test split. The report gives, per finding and macro, each arm's mean AUC with a 95%
t-interval over seeds and the paired difference (augmented minus base) with its interval,
plus the train-validation loss gap.

The pool defaults to the one the newest pipeline run wrote (``<output_dir>/stages/augment-*``).
Each finished cell (fraction, seed, arm) is kept: a re-run skips it, so an interrupted run
loses no finished training. Augmented cells live under ``--out``; base cells do not depend on
the pool and live in ``<output_dir>/utility/base-<key>``, shared by every pool compared with
the same classifier and data config. Writes ``utility.json`` and one figure per
fraction, and logs them to one MLflow run with a child run per classifier.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import time
from dataclasses import astuple
from pathlib import Path
from typing import Any

from augment.config import RunConfig
from augment.data import DataError, NIHIndex, prepare_data
from augment.data.io import atomic_write_bytes
from jobs.cli import job_parser, load_job_config, run

log = logging.getLogger("cxr.utility")

__all__ = ["run_utility", "train_and_score", "latest_pool", "synthetic_for", "interval_text", "print_report", "main"]


def latest_pool(cfg: RunConfig) -> Path:
    """The synthetic pool of the newest finished augment stage under ``cfg.output_dir``."""
    done = sorted(Path(cfg.output_dir, "stages").glob("augment-*/result.json"), key=lambda p: p.stat().st_mtime)
    if not done:
        raise FileNotFoundError(
            f"no finished augment stage under {Path(cfg.output_dir, 'stages')}: run the pipeline first "
            f"(python -m jobs.pipeline --config ...) or pass --pool <folder of a jobs.augment pool>"
        )
    return Path(json.loads(done[-1].read_text())["pool"])


def synthetic_for(pool: NIHIndex, provenance: dict[str, Any], kept: set[str], mode: str) -> NIHIndex:
    """The pool's accepted images that the augmented arm of a subset may use.

    Args:
        pool: the pool's index (its ``Data_Entry_2017.csv`` lists the accepted images).
        provenance: image name -> its provenance row (``source`` and ``reference``).
        kept: image names of the real images kept for this cell.
        mode: ``"all"`` keeps every accepted image; ``"subset"`` those painted on a kept
            healthy source; ``"strict"`` those whose diseased reference is kept too.
    """
    if mode == "all":
        return pool
    names = [
        r.image_index for r in pool.records
        if (row := provenance.get(r.image_index)) is not None and row.source in kept
        and (mode != "strict" or row.reference in kept)
    ]
    return pool.subset(names)


def train_and_score(
    cfg: RunConfig, arm: str, train: NIHIndex, val: NIHIndex, test: NIHIndex, out: Path, parent_run_id: str | None
) -> tuple[dict[str, Any], Any]:
    """Train one classifier with Ray Train into ``out``, score it on ``test``.

    Returns:
        The cell's scores (arm, train images, per-finding AUC and macro, test loss, MLflow
        run, seconds) and its (N, 14) test probabilities. Nothing is cached here: the
        callers (:func:`_cell`, ``jobs.longtail``) keep what they need.
    """
    from augment.classifier.metrics import classification_metrics
    from augment.evaluation.utility import seed_values
    from augment.classifier.score import score_checkpoint
    from jobs.train_classifier import train_classifier

    t0 = time.perf_counter()
    res = train_classifier(cfg, train, val, out, parent_run_id)
    shutil.rmtree(out / "ray", ignore_errors=True)
    y, p, loss = astuple(score_checkpoint(res.checkpoint_path, test, cfg.classifier.image_size))
    metrics = classification_metrics(y, p, loss=loss)
    scores = {
        "arm": arm,
        "train_images": len(train),
        "values": seed_values(metrics, loss_gap=res.history[-1].loss_gap),
        "test_loss": loss,
        "mlflow_run_id": res.run_id,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return scores, p


def _cell(
    cfg: RunConfig, arm: str, train: NIHIndex, val: NIHIndex, test: NIHIndex, out: Path, parent_run_id: str | None
) -> dict[str, Any]:
    """Train one classifier, score it on ``test``; cached in ``out/scores.json``."""
    done = out / "scores.json"
    if done.is_file():
        return json.loads(done.read_text())
    scores, _ = train_and_score(cfg, arm, train, val, test, out, parent_run_id)
    atomic_write_bytes(done, json.dumps(scores, indent=1).encode())
    return scores


def run_utility(cfg: RunConfig, pool: str | Path | None = None, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the experiment of ``cfg.utility``; returns the report written to ``utility.json``."""
    import mlflow

    from augment import tracking
    from augment.synthesis.pool import PoolWriter
    from augment.data import load_index
    from augment.evaluation.plots import save_figure
    from augment.evaluation.utility import aggregate_over_seeds, subsample_fraction, utility_figure
    from jobs.ray_utils import init_ray, shutdown_ray
    from jobs.stages import stage_key

    ucfg = cfg.utility
    pool_root = Path(pool) if pool is not None else latest_pool(cfg)
    try:
        pool_index = load_index(pool_root)
    except DataError as exc:
        raise DataError(f"{pool_root} is not a synthetic pool written by jobs.augment: {exc}") from None
    provenance = {r.image: r for r in PoolWriter(str(pool_root)).rows()}
    _, split = prepare_data(cfg)
    key = stage_key(
        {"classifier": cfg.classifier.model_dump(mode="json"), "data": cfg.data.model_dump(mode="json"),
         "pool_sources": ucfg.pool_sources},
        [pool_index.fingerprint()],
    )
    out = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / "utility" / key
    out.mkdir(parents=True, exist_ok=True)
    # The base arm does not depend on the pool: every pool compared under the same classifier
    # and data config shares its cells (comparing three generators trains it once, not three times).
    base_root = Path(cfg.output_dir) / "utility" / ("base-" + stage_key(
        {"classifier": cfg.classifier.model_dump(mode="json"), "data": cfg.data.model_dump(mode="json")}))
    report: dict[str, Any] = {
        "pool": str(pool_root),
        "pool_images": len(pool_index),
        "pool_sources": ucfg.pool_sources,
        "base_cells": str(base_root),
        "caveat": "the pool's generator and gate classifier were trained on the whole training split; "
                  "at fractions below 1 the augmented arm therefore carries some knowledge of real images outside its fraction",
        "test_images": len(split.test),
        "seeds": ucfg.seeds,
        "classifier": cfg.classifier.model_dump(mode="json"),
        "fractions": {},
    }
    started = init_ray(cfg)
    try:
        run_ctx = (tracking.start_run(cfg, "utility", tags={"cxr.pool": str(pool_root)})
                   if cfg.tracking.enabled else contextlib.nullcontext(None))
        with run_ctx as run:
            run_id = report["mlflow_run_id"] = run.info.run_id if run is not None else None
            for fraction in ucfg.fractions:
                base, aug, cells = [], [], []
                for seed in range(ucfg.seeds):
                    kept = subsample_fraction(split.train.records, fraction, seed=seed)
                    real = split.train.subset(r.image_index for r in kept)
                    synthetic = synthetic_for(pool_index, provenance, {r.image_index for r in kept}, ucfg.pool_sources)
                    scfg = cfg.model_copy(update={"classifier": cfg.classifier.model_copy(update={"seed": cfg.classifier.seed + seed})})
                    cell = Path(f"fraction-{fraction:g}") / f"seed-{seed}"
                    b = _cell(scfg, "base", real, split.val, split.test, base_root / cell, run_id)
                    if len(synthetic) == 0:
                        # nothing to add: the augmented arm would retrain the same model on the same data
                        a = {**b, "arm": "augmented", "note": "no synthetic image for this subset: equals base"}
                    else:
                        a = _cell(scfg, "augmented", real.concat(synthetic), split.val, split.test, out / cell / "augmented", run_id)
                    base.append(b["values"])
                    aug.append(a["values"])
                    cells.append({"seed": seed, "real_images": len(real), "synthetic_images": len(synthetic), "base": b, "augmented": a})
                    print(f"fraction {fraction:g}, seed {seed}: {len(real)} real + {len(synthetic)} synthetic; "
                          f"macro AUC base {_f(b['values'].get('macro'))}, augmented {_f(a['values'].get('macro'))}", flush=True)
                rows = aggregate_over_seeds(base, aug)
                fig_path = out / f"utility-fraction-{fraction:g}.png"
                save_figure(utility_figure(rows, title=f"test AUC over {ucfg.seeds} seeds, {fraction:g} of the real data"), fig_path)
                report["fractions"][f"{fraction:g}"] = {"cells": cells, "aggregate": [r.to_dict() for r in rows]}
                if run is not None:
                    tracking.metrics_to_mlflow({
                        f"utility.f{fraction:g}.{r.key}.{r.arm}.{stat}": getattr(r, stat)
                        for r in rows for stat in ("mean", "low", "high")
                    })
                    mlflow.log_artifact(str(fig_path))
            atomic_write_bytes(out / "utility.json", json.dumps(report, indent=1, default=str).encode())
            if run is not None:
                mlflow.log_artifact(str(out / "utility.json"))
    finally:
        shutdown_ray(started)
    report["out_dir"] = str(out)
    return report


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def interval_text(r: dict[str, Any] | None, key: str, arm: str) -> str:
    """``mean [low, high]``; AUC bounds are shown inside [0, 1] (differences inside [-1, 1]):
    a t-interval over 3 seeds can reach past them, which says only that it is wide."""
    if r is None or r["mean"] is None:
        return "n/a"
    signed = arm == "delta" or key == "loss_gap"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    if r["low"] is None:
        return fmt.format(r["mean"])
    lo, hi = r["low"], r["high"]
    if key != "loss_gap":
        bound = (-1.0, 1.0) if arm == "delta" else (0.0, 1.0)
        lo, hi = max(lo, bound[0]), min(hi, bound[1])
    return f"{fmt.format(r['mean'])} [{fmt.format(lo)}, {fmt.format(hi)}]"


def print_report(report: dict[str, Any]) -> None:
    """The macro and per-finding lines of each fraction: means and intervals, and the paired difference."""
    if any(float(f) < 1 for f in report["fractions"]):
        print(f"note: {report['caveat']}")
    for fraction, part in report["fractions"].items():
        print(f"\n== {fraction} of the real training data, {report['seeds']} seeds, test AUC (mean [95% interval])")
        get = {(r["key"], r["arm"]): r for r in part["aggregate"]}
        print(f"{'':<20}{'base':>24}{'augmented':>24}{'augmented - base':>26}")
        for key in dict.fromkeys(r["key"] for r in part["aggregate"]):
            cols = [interval_text(get.get((key, arm)), key, arm) for arm in ("base", "augmented", "delta")]
            if all(c == "n/a" for c in cols):
                continue  # no positives in the test split: nothing to score
            print(f"{key:<20}{cols[0]:>24}{cols[1]:>24}{cols[2]:>26}")


def build_parser() -> argparse.ArgumentParser:
    p = job_parser("python -m jobs.utility", __doc__, "utility.seeds=3", config_default="configs/local.yaml", parent=False)
    p.add_argument("--pool", default=None, help="a jobs.augment pool folder; default the newest pipeline run's")
    p.add_argument("--out", default=None, help="output folder; default <output_dir>/utility/<key>")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: _main(args), fixable=(DataError, FileNotFoundError, ValueError))


def _main(args: argparse.Namespace) -> int:
    report = run_utility(load_job_config(args), args.pool, args.out)
    print_report(report)
    print(f"\nwrote {report['out_dir']}/utility.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
