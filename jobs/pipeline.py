"""The main job: data -> base classifier -> generator -> augment -> retrain -> compare.

Run it in-process (``make demo`` does) or on a cluster::

    python -m jobs.pipeline --config configs/local.yaml [--set classifier.epochs=2]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.pipeline --config configs/local.yaml

One parent MLflow run holds a child run per stage. Stages whose outputs already exist for
the same config are reused (see :mod:`jobs.stages`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from augment.config import ConfigError, RunConfig, load_config
from augment.data import DataError, data_root, prepare_data
from augment.data.io import read_image
from augment.findings import LABELS
from jobs.stages import StageResult, run_stage, stage_key

log = logging.getLogger("cxr.pipeline")

__all__ = ["run_pipeline", "main"]


def _data_stage(cfg: RunConfig, parent_run_id: str | None) -> StageResult:
    from augment import tracking
    from augment.evaluation.plots import image_grid, save_figure

    key = stage_key({"data": cfg.data.model_dump(mode="json"), "root": str(data_root(cfg))})

    def work(out: Path) -> dict[str, Any]:
        index, split = prepare_data(cfg)
        with tracking.start_run(cfg, "data", parent_run_id, data_fingerprint=index.fingerprint()) as run:
            counts = {part: getattr(split, part).counts() for part in ("train", "val", "test")}
            for part, c in counts.items():
                tracking.metrics_to_mlflow({f"{part}.n_images": sum(1 for _ in getattr(split, part).records)})
                tracking.metrics_to_mlflow({f"{part}.{lab}": n for lab, n in c.items()})
            tracking.metrics_to_mlflow({"skipped_rows": len(index.skipped)})
            (out / "split.json").write_text(
                json.dumps(
                    {part: [r.image_index for r in getattr(split, part).records] for part in ("train", "val", "test")},
                    indent=1,
                )
            )
            recs = [r for r in index.records if not r.is_healthy][:9] + index.healthy()[:3]
            fig = image_grid(
                [read_image(index.path(r), cfg.data.image_size) for r in recs],
                ["|".join(r.labels)[:28] for r in recs],
                ncols=6,
            )
            save_figure(fig, out / "examples.png")
            import mlflow

            mlflow.log_artifact(str(out / "examples.png"))
            mlflow.log_text(json.dumps(counts, indent=1), "label_counts.json")
            return {
                "root": str(index.root),
                "fingerprint": index.fingerprint(),
                "n_images": len(index),
                "skipped": len(index.skipped),
                "split_method": split.method,
                "sizes": split.sizes(),
                "counts": counts,
                "mlflow_run_id": run.info.run_id,
            }

    return run_stage(cfg.output_dir, "data", key, work)


def _print_counts(res: dict[str, Any]) -> None:
    counts = res["counts"]
    print(f"\nData: {res['n_images']} images from {res['root']} ({res['split_method']} split, skipped {res['skipped']})")
    print(f"{'label':<20}{'train':>7}{'val':>7}{'test':>7}")
    for lab in LABELS:
        row = [counts[p].get(lab, 0) for p in ("train", "val", "test")]
        if any(row):
            print(f"{lab:<20}{row[0]:>7}{row[1]:>7}{row[2]:>7}")


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run every stage that exists, under one parent MLflow run; return the stage results."""
    from augment import tracking

    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    with tracking.start_run(cfg, "pipeline") as parent:
        pid = parent.info.run_id
        data = _data_stage(cfg, pid)
        results["data"] = data.result
        _print_counts(data.result)
        tracking.metrics_to_mlflow({"pipeline.seconds": time.perf_counter() - t0})
        results["mlflow_run_id"] = pid
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/local.yaml", help="run profile (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set classifier.epochs=2 (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.uri of the profile)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides) + ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])
    try:
        cfg = load_config(args.config, overrides)
        results = run_pipeline(cfg)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from augment.tracking import ui_command

    print(f"\nPipeline finished in {results['seconds']} s; MLflow parent run {results['mlflow_run_id']}.")
    print(f"Open MLflow on it:\n  {ui_command(cfg.tracking)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
