"""Does it help? The long-tail benchmark: every arm a user might try, on the same real data.

::

    bash bench/longtail.sh                      # makes the pools, then runs this
    python -m jobs.longtail --config configs/longtail.yaml \\
        [--pool copy-paste=DIR --pool vae=DIR --pool lsgan=DIR] [--pool flow=DIR] [--set longtail.seeds=5]

Arms (``longtail.arms``), each trained with Ray Train exactly as the pipeline trains its
classifier, with seeds ``0..longtail.seeds-1`` shared by every arm:

- ``base``: the real training split only;
- ``oversample``: plus repeated rows of each rare finding's positives, as many per finding as
  the augment plan asks of a generator (:func:`extra_counts`; the classifier's random affine
  and intensity augmentation varies each pass);
- ``weighted``: the real split with ``classifier.pos_weight: balanced``;
- ``copy-paste``, ``flow``, ``vae``, ``lsgan``: plus the accepted images of that pool
  (``--pool ARM=DIR``; flow defaults to the newest pipeline run's pool);
- ``ceiling``: plus as many *real* positives of each rare finding, rendered by the phantom for
  patients of their own.

Every arm is scored on one test set rendered apart (``longtail.test``: its own seed and
patients). The report (``longtail.json``, a figure, printed table) gives per arm the rare
findings' AUC and rare macro AUC (mean over seeds, t-interval), the paired difference against
base with a t-interval over seeds and a patient-level bootstrap interval of the test set, and
the share of the base-to-ceiling gap closed (:mod:`augment.evaluation.longtail`). Every
finished cell (arm, seed) is kept with its test predictions: a re-run skips it. One MLflow run
holds the table and the figure, with one child run per classifier.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from augment.config import PhantomConfig, RunConfig
from augment.data import DataError, NIHIndex, load_index, prepare_data
from augment.data.io import atomic_write_bytes
from jobs.cli import job_parser, load_job_config, run

log = logging.getLogger("cxr.longtail")

__all__ = ["run_longtail", "extra_counts", "render_test_set", "render_ceiling_set", "arm_index", "print_table", "main"]

POOL_ARMS = ("copy-paste", "flow", "vae", "lsgan")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def extra_counts(cfg: RunConfig, train: NIHIndex) -> dict[str, int]:
    """Rare examples the oversample and ceiling arms add per finding: ``longtail.extra_per_finding``,
    or by default as many as the augment plan asks of the generator (``augment.target_count``
    minus the real positives, capped by ``augment.max_per_finding``), so that every arm that
    adds examples adds about the same number."""
    if cfg.longtail.extra_per_finding:
        return {f: cfg.longtail.extra_per_finding for f in cfg.augment.findings}
    a = cfg.augment
    return {f: max(0, min(a.max_per_finding, a.target_count - len(train.with_finding(f)))) for f in a.findings}


def render_test_set(cfg: RunConfig) -> NIHIndex:
    """The benchmark's test set: ``longtail.test`` rendered at the training phantom's image
    size and lesion contrast under ``<output_dir>/data`` (made once, reused)."""
    from augment.data.phantom import generate_phantom

    pcfg = cfg.longtail.test.model_copy(update={"image_size": cfg.data.phantom.image_size,
                                                "lesion_contrast": cfg.data.phantom.lesion_contrast})
    root = Path(cfg.output_dir) / "data" / f"longtail-test-{_hash(pcfg.model_dump(mode='json'))}"
    generate_phantom(pcfg, root, progress=False)
    return load_index(root)


def render_ceiling_set(cfg: RunConfig, extra: dict[str, int]) -> NIHIndex:
    """``extra[f]`` real images of each rare finding f, rendered by the phantom with that
    finding alone, for patients of their own."""
    from augment.data.phantom import generate_phantom

    lt = cfg.longtail
    out: NIHIndex | None = None
    for k, f in enumerate(cfg.augment.findings):
        if extra.get(f, 0) <= 0:
            continue
        pcfg = PhantomConfig(  # the phantom renders at least 4 images: the first extra[f] are used
            n_images=max(4, extra[f]), image_size=cfg.data.phantom.image_size, seed=lt.ceiling_seed + k,
            patient_id_offset=lt.ceiling_patient_offset + k * 1_000_000, healthy_fraction=0.0, prevalence={f: 1.0},
            lesion_contrast=cfg.data.phantom.lesion_contrast,  # the same lesions as the training set's
        )
        root = Path(cfg.output_dir) / "data" / f"longtail-ceiling-{_hash(pcfg.model_dump(mode='json'))}"
        generate_phantom(pcfg, root, progress=False)
        idx = load_index(root)
        idx = idx.subset(r.image_index for r in idx.records[: extra[f]])
        out = idx if out is None else out.concat(idx)
    if out is None:
        raise ValueError(f"the ceiling adds no image ({extra}): name the rare findings in augment.findings and "
                         "raise augment.target_count above their real positives, or set longtail.extra_per_finding")
    return out


def _pool(arm: str, given: dict[str, str], cfg: RunConfig) -> Path:
    if arm in given:
        return Path(given[arm])
    if arm == "flow":
        from jobs.utility import latest_pool

        return latest_pool(cfg)
    raise ValueError(
        f"the {arm} arm needs its pool: pass --pool {arm}=DIR (bench/longtail.sh makes it: "
        f"python -m jobs.augment --generator {'paste' if arm == 'copy-paste' else '<' + arm + ' checkpoint>'} ...), "
        f"or leave {arm} out of longtail.arms"
    )


def empty_pool(root: Path) -> bool:
    """True for a ``jobs.augment`` pool (its ``pool.json`` written) whose gate accepted no image."""
    images = root / "images"
    return (root / "pool.json").is_file() and (not images.is_dir() or not any(images.glob("*.png")))


def arm_index(cfg: RunConfig, arm: str, train: NIHIndex, seed: int, pools: dict[str, NIHIndex],
              ceiling: NIHIndex | None, extra: dict[str, int]) -> tuple[RunConfig, NIHIndex]:
    """The classifier config and the training index of one arm at one seed."""
    from augment.evaluation.longtail import oversample_index

    ccfg = cfg.classifier.model_copy(update={"seed": cfg.classifier.seed + seed})
    if arm == "weighted":
        ccfg = ccfg.model_copy(update={"pos_weight": "balanced"})
    scfg = cfg.model_copy(update={"classifier": ccfg})
    if arm in ("base", "weighted"):
        return scfg, train
    if arm == "oversample":
        return scfg, oversample_index(train, extra, seed=seed)
    if arm == "ceiling":
        assert ceiling is not None
        return scfg, train.concat(ceiling)
    return scfg, train.concat(pools[arm])


def _cell(cfg: RunConfig, arm: str, train: NIHIndex, val: NIHIndex, test: NIHIndex, out: Path,
          parent_run_id: str | None) -> tuple[dict[str, Any], np.ndarray]:
    """Train one classifier, predict the test set; cached (``scores.json``, ``test_probs.npy``)."""
    from jobs.utility import train_and_score

    done, probs = out / "scores.json", out / "test_probs.npy"
    if done.is_file() and probs.is_file():
        return json.loads(done.read_text()), np.load(probs)
    scores, p = train_and_score(cfg, arm, train, val, test, out, parent_run_id)
    buf = io.BytesIO()
    np.save(buf, np.asarray(p, np.float32))
    atomic_write_bytes(probs, buf.getvalue())
    atomic_write_bytes(done, json.dumps(scores, indent=1).encode())  # written last: it marks the cell done
    return scores, np.asarray(p, np.float32)


def run_longtail(cfg: RunConfig, pools: dict[str, str] | None = None, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every arm of ``cfg.longtail`` over its seeds; returns the report written to ``longtail.json``."""
    import mlflow

    from augment import tracking
    from augment.evaluation.longtail import longtail_figure, longtail_table
    from augment.evaluation.plots import save_figure
    from augment.findings import FINDINGS
    from jobs.ray_utils import init_ray, shutdown_ray

    t_start = time.perf_counter()
    lt = cfg.longtail
    given = dict(pools or {})
    unknown = sorted(set(given) - set(POOL_ARMS))
    if unknown:
        raise ValueError(f"--pool names unknown arm(s) {unknown}; pools belong to {list(POOL_ARMS)}")
    if "base" not in lt.arms:
        raise ValueError("longtail.arms must include base: every difference is measured against it")
    rare = list(cfg.augment.findings)
    _, split = prepare_data(cfg)
    test = render_test_set(cfg)
    y_test = test.labels_matrix()
    short = {f: int(y_test[:, FINDINGS.index(f)].sum()) for f in rare}
    if any(n == 0 for n in short.values()):
        raise ValueError(f"the test set has no positives of some rare finding ({short}); raise longtail.test.prevalence")
    pool_index: dict[str, NIHIndex] = {}
    pool_roots: dict[str, str] = {}
    empty: list[str] = []
    for arm in lt.arms:
        if arm in POOL_ARMS:
            root = _pool(arm, given, cfg)
            try:
                pool_index[arm] = load_index(root)
            except DataError as exc:
                if not empty_pool(root):
                    raise DataError(f"the {arm} pool {root} is not a jobs.augment pool: {exc}") from None
                # the gate let nothing through: a user of this generator trains on the real images alone,
                # so the arm is the base classifier (its predictions are reused, not trained again)
                log.warning("the %s pool %s holds no accepted image: the %s arm equals base", arm, root, arm)
                empty.append(arm)
            pool_roots[arm] = str(root)
    extra = extra_counts(cfg, split.train)
    ceiling = render_ceiling_set(cfg, extra) if "ceiling" in lt.arms else None
    common = {"classifier": cfg.classifier.model_dump(mode="json"), "data": cfg.data.model_dump(mode="json"),
              "test": lt.test.model_dump(mode="json")}
    out = Path(out_dir) if out_dir is not None else Path(cfg.output_dir) / "longtail" / _hash(common)
    out.mkdir(parents=True, exist_ok=True)

    def cell_dir(arm: str, seed: int) -> Path:
        what = {"extra": extra}
        if arm in pool_index:
            what = {"pool": pool_index[arm].fingerprint()}
        elif arm == "ceiling":
            what = {**what, "ceiling": [lt.ceiling_seed, lt.ceiling_patient_offset]}
        elif arm in ("base", "weighted"):
            what = {}
        return out / arm / _hash(what) / f"seed-{seed}"

    report: dict[str, Any] = {
        "config": cfg.name, "rare": rare, "arms": list(lt.arms), "seeds": lt.seeds,
        "train_images": len(split.train), "train_positives": {f: len(split.train.with_finding(f)) for f in rare},
        "test_images": len(test), "test_patients": len({r.patient_id for r in test.records}), "test_positives": short,
        "extra_per_finding": extra, "pools": pool_roots,
        "pool_images": {**{a: {f: len(ix.with_finding(f)) for f in rare} for a, ix in pool_index.items()},
                        **{a: {f: 0 for f in rare} for a in empty}},
        "empty_pools": empty,
        "classifier": cfg.classifier.model_dump(mode="json"), "cells": {},
    }
    preds: dict[str, list[np.ndarray]] = {a: [] for a in lt.arms}
    started = init_ray(cfg)
    try:
        run_ctx = (tracking.start_run(cfg, "longtail", tags={"cxr.arms": ",".join(lt.arms)})
                   if cfg.tracking.enabled else contextlib.nullcontext(None))
        with run_ctx as run:
            run_id = report["mlflow_run_id"] = run.info.run_id if run is not None else None
            order = ["base"] + [a for a in lt.arms if a != "base"]   # base first: an empty pool's arm reuses it
            for seed in range(lt.seeds):
                for arm in order:
                    if arm in empty:
                        # nothing trained: the cell is base's, its time not spent again
                        scores = {**report["cells"]["base"][seed], "same_as": "base", "seconds": 0.0}
                        scores.pop("seed")
                        p = preds["base"][seed]
                        train = split.train
                    else:
                        scfg, train = arm_index(cfg, arm, split.train, seed, pool_index, ceiling, extra)
                        scores, p = _cell(scfg, arm, train, split.val, test, cell_dir(arm, seed), run_id)
                    preds[arm].append(p)
                    report["cells"].setdefault(arm, []).append({"seed": seed, **scores})
                    vals = scores["values"]
                    print(f"seed {seed} {arm:<11} {len(train)} train images; " + ", ".join(
                        f"{f} {vals.get(f) or float('nan'):.3f}" for f in rare) + f" ({scores['seconds']} s)", flush=True)
            rows = longtail_table(y_test, [r.patient_id for r in test.records], preds, rare,
                                  n_boot=lt.n_boot, seed=cfg.seed)
            report["table"] = [r.to_dict() for r in rows]
            report["seconds"] = round(time.perf_counter() - t_start, 1)
            fig = out / "longtail.png"
            save_figure(longtail_figure(rows, title=f"{cfg.name}: rare-finding test AUC over {lt.seeds} seed(s)"), fig)
            atomic_write_bytes(out / "longtail.json", json.dumps(report, indent=1, default=str).encode())
            if run is not None:
                tracking.metrics_to_mlflow({
                    f"longtail.{r.arm}.{r.key.replace(' ', '_')}.{stat}": getattr(r, stat)
                    for r in rows for stat in ("auc", "delta", "delta_low", "delta_high", "boot_low", "boot_high", "gap_closed")
                })
                mlflow.log_artifact(str(fig))
                mlflow.log_artifact(str(out / "longtail.json"))
    finally:
        shutdown_ray(started)
    report["out_dir"] = str(out)
    return report


def _f(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _iv(lo: Any, hi: Any) -> str:
    return "" if lo is None or hi is None else f"[{lo:+.3f}, {hi:+.3f}]"


def print_table(report: dict[str, Any]) -> None:
    rows = report["table"]
    keys = list(dict.fromkeys(r["key"] for r in rows))
    print(f"\n{report['test_images']} test images ({report['test_patients']} patients), positives {report['test_positives']}; "
          f"{report['seeds']} seed(s); mean test AUC, difference against base with its t-interval over seeds "
          f"and its patient-bootstrap interval:")
    print(f"{'arm':<12}" + "".join(f"{k:>14}" for k in keys) + f"{'delta (rare macro)':>22}{'seeds':>20}{'patients':>20}{'gap':>7}")
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = {r["key"]: r for r in rows if r["arm"] == arm}
        m = mine[keys[-1]]
        print(f"{arm:<12}" + "".join(f"{_f(mine[k]['auc']):>14}" for k in keys)
              + f"{'' if m['delta'] is None else format(m['delta'], '+.3f'):>22}{_iv(m['delta_low'], m['delta_high']):>20}"
              + f"{_iv(m['boot_low'], m['boot_high']):>20}{'' if m['gap_closed'] is None else format(m['gap_closed'], '.0%'):>7}")
    print(f"wrote {report['out_dir']}/longtail.json in {report.get('seconds')} s")


def _pools(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        arm, sep, path = it.partition("=")
        if not sep or not path:
            raise ValueError(f"--pool takes ARM=DIR, e.g. --pool vae=runs/longtail/pools/vae; got {it!r}")
        out[arm] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    p = job_parser("python -m jobs.longtail", __doc__, "longtail.seeds=1", config_default="configs/longtail.yaml", tracking=False)
    p.add_argument("--pool", action="append", default=[], metavar="ARM=DIR",
                   help=f"a synthetic pool (jobs.augment output) for one of {list(POOL_ARMS)}")
    p.add_argument("--out", help="where the cells and the report go (default <output_dir>/longtail/<key>)")
    p.add_argument("--report", help="also write the report (longtail.json) here, e.g. bench/results/longtail-<profile>.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: _main(args), fixable=(DataError, ValueError, FileNotFoundError))


def _main(args: argparse.Namespace) -> int:
    report = run_longtail(load_job_config(args), _pools(args.pool), args.out)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(args.report), json.dumps(report, indent=1, default=str).encode())
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
