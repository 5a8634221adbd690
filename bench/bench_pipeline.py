"""The main job end to end: wall time per stage, accepted synthetic images per second, peak memory.

    python bench/bench_pipeline.py --config configs/local.yaml          # the demo (goal: <= 15 min on 2 cores)
    python bench/bench_pipeline.py --config configs/nih-sample.yaml     # the 559 real NIH images

Runs :func:`jobs.pipeline.run_pipeline` from scratch (a fresh output folder and MLflow store
under a temporary folder, so no stage is reused) while sampling the resident memory of this
process and all its descendants (Ray's processes included; see ``bench_augment.PeakMemory``).
Reports each stage's wall time and share, the accepted synthetic images per second of the
whole run and of the augment stage alone, and the macro AUC of both classifiers.

Writes ``bench/results/pipeline-<profile>.json``. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_augment import PeakMemory, result_header, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--keep", action="store_true", help="keep the run's output folder (printed)")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/pipeline-<profile>.json)")
    args = p.parse_args(argv)

    import logging

    from augment.config import load_config
    from jobs.pipeline import run_pipeline

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-pipeline-"))
    base = load_config(args.config, args.overrides)
    # A fresh output folder and MLflow store; the phantom data (cheap, deterministic) is made anew too.
    overrides = list(args.overrides) + [
        f"output_dir={work / 'out'}",
        f"augment.output={work / 'out' / 'augmented'}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
    ]
    cfg = load_config(args.config, overrides)
    load_before = os.getloadavg()
    try:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            res = run_pipeline(cfg)
            wall = time.perf_counter() - t0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    stages = res.get("stage_seconds", {})
    accepted = sum(d["accepted"] for d in res["augment"]["summary"].values())
    aug_s = stages.get("augment") or float("nan")
    macro = next((r for r in res["compare"]["per_finding"] if r["finding"] == "macro"), {})
    result = {
        **result_header("bench_pipeline.py", argv, base.name, load_before),
        "wall_s": round(wall, 1),
        "stage_seconds": stages,
        "stage_shares": {k: round(v / wall, 3) for k, v in stages.items()},
        "accepted_synthetic": accepted,
        "planned_synthetic": sum(d.get("accepted", 0) + d.get("rejected", 0) for d in res["augment"]["summary"].values()),
        "accepted_per_s_end_to_end": round(accepted / wall, 4),
        "accepted_per_s_augment_stage": round(accepted / aug_s, 4) if aug_s == aug_s else None,
        "peak_rss_gib": round(mem.peak, 2),
        "macro_auc_base": macro.get("auc_base"),
        "macro_auc_augmented": macro.get("auc_augmented"),
        "macro_delta_ci": [macro.get("delta_low"), macro.get("delta_high")],
        "kept_output": str(work) if args.keep else None,
    }
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"pipeline-{base.name}.json"
    write_result(out, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
