"""The main job: data -> base classifier -> generator -> verifier -> augment -> retrain -> compare.

Run it in-process (``make demo`` does) or on a cluster::

    python -m jobs.pipeline --config configs/local.yaml [--set classifier.epochs=2]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.pipeline --config configs/local.yaml

One parent MLflow run holds a child run per stage. Stages whose outputs already exist for
the same config are reused (see :mod:`jobs.stages`). Input paths are checked before Ray
starts, and Ray's address is pinned for the run (:func:`jobs.ray_utils.init_ray`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from augment.synthesis.pool import PoolError
from augment.config import ConfigError, RunConfig, check_paths
from augment.data import DataError, NIHIndex, Split, data_root, prepare_data
from augment.data.io import read_image
from augment.findings import LABELS
from jobs.cli import job_parser, load_job_config, run
from jobs.stages import StageResult, run_stage, stage_key

log = logging.getLogger("cxr.pipeline")

__all__ = ["run_pipeline", "main"]


def _data_stage(cfg: RunConfig, index: NIHIndex, split: Split, parent_run_id: str | None) -> StageResult:
    from augment import tracking
    from augment.evaluation.plots import image_grid, save_figure

    key = stage_key({"data": cfg.data.model_dump(mode="json"), "root": str(data_root(cfg))})

    def work(out: Path) -> dict[str, Any]:
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


def _classifier_stage(
    cfg: RunConfig, name: str, train: NIHIndex, val: NIHIndex, upstream: list[str], parent_run_id: str
) -> StageResult:
    from jobs.train_classifier import train_classifier

    # The poll interval changes how fast Ray Train notices a state change, not the model.
    resources = cfg.resources.model_dump(mode="json", exclude={"train_poll_interval_s"})
    key = stage_key({"classifier": cfg.classifier.model_dump(mode="json"), "resources": resources}, upstream)

    def work(out: Path) -> dict[str, Any]:
        res = train_classifier(cfg, train, val, out, parent_run_id)
        shutil.rmtree(out / "ray", ignore_errors=True)  # Ray Train's copies; classifier.pt is the result
        last = res.history[-1]
        return {
            "checkpoint": res.checkpoint_path.name,
            "mlflow_run_id": res.run_id,
            "train_images": len(train),
            "epochs": len(res.history),
            "train_loss": last.train_loss,
            "val_loss": last.val_loss,
            "loss_gap": last.loss_gap,
            "val_macro_auc": res.metrics.macro_auc,
            "fit_seconds": res.seconds,
        }

    return run_stage(cfg.output_dir, name, key, work)


def _generator_stage(cfg: RunConfig, train: NIHIndex, upstream: list[str], parent_run_id: str) -> StageResult:
    from jobs.train_generator import train_generator

    # sampling settings do not change the trained network
    training = cfg.inpainting.model_dump(mode="json", exclude=SAMPLING_KEYS)
    key = stage_key({"inpainting": training, "attention": cfg.attention.model_dump(mode="json")}, upstream)

    def work(out: Path) -> dict[str, Any]:
        res = train_generator(cfg, train, out, parent_run_id)
        shutil.rmtree(out / "ray", ignore_errors=True)
        return {
            "checkpoint": res.checkpoint_path.name,
            "mlflow_run_id": res.run_id,
            "steps": len(res.losses),
            "final_loss": float(sum(res.losses[-20:]) / max(1, len(res.losses[-20:]))),
            "fit_seconds": res.seconds,
        }

    return run_stage(cfg.output_dir, "generator", key, work)


SAMPLING_KEYS = {"steps", "solver", "atol", "rtol", "guidance", "coupling", "coupling_t0", "keep_detail", "device"}
"""Inpainting settings that only change how the trained network samples (not part of the generator's stage key)."""


def _verifier_stage(cfg: RunConfig, train: NIHIndex, val: NIHIndex, classifier: Path, upstream: list[str],
                    parent_run_id: str, generator: StageResult | None = None) -> StageResult:
    from jobs.train_verifier import painter_settings, train_verifier, verifier_findings

    painted = "generator" in cfg.verifier.hard_negatives and generator is not None
    key = stage_key({"verifier": cfg.verifier.model_dump(mode="json"), "findings": verifier_findings(cfg),
                     "attention": cfg.attention.model_dump(mode="json"), "image_size": cfg.data.image_size,
                     **({"painter": painter_settings(cfg)} if painted else {})},
                    upstream + ([generator.key] if painted else []))  # type: ignore[union-attr]
    gen_ckpt = str(generator.path / generator.result["checkpoint"]) if painted else None  # type: ignore[union-attr]

    def work(out: Path) -> dict[str, Any]:
        res = train_verifier(cfg, train, val, out, parent_run_id, str(classifier), gen_ckpt)
        shutil.rmtree(out / "ray", ignore_errors=True)
        return {"checkpoint": res.checkpoint_path.name, "mlflow_run_id": res.run_id, "report": res.report,
                "threshold_source": res.threshold_source, "skipped": res.skipped, "crops": res.crops,
                "fit_seconds": res.seconds}

    return run_stage(cfg.output_dir, "verifier", key, work)


def classifier_sees(stage: StageResult, floor: float) -> list[str]:
    """Findings whose validation AUC in a classifier stage reaches ``floor`` (its ``per_finding.json``)."""
    p = stage.path / "per_finding.json"
    if not p.is_file():
        return []
    rows = json.loads(p.read_text()).get("per_finding", [])
    return sorted(r["finding"] for r in rows if r.get("auc") is not None and r["auc"] >= floor)


def _print_verifier(res: dict[str, Any]) -> None:
    print("\nLocal finding verifier (the gate's judge), on validation crops of patients it never saw:")
    print(f"{'finding':<16}{'regions':>8}{'AUC':>7}{'thresh':>8}{'pass: real':>11}{'place':>7}{'noise':>7}{'mean':>7}{'blur':>7}{'gen':>7}")
    for f, r in res["report"].items():
        def pct(k: str) -> str:
            v = r.get(f"pass.{k}")
            return "n/a" if v is None else f"{100 * v:.0f}%"

        print(f"{f:<16}{r['n_positive']:>8}{_fmt(r['auc'], '.2f'):>7}{_fmt(r.get('threshold'), '.2f'):>8}"
              f"{pct('positive'):>11}{pct('place'):>7}{pct('noise'):>7}{pct('mean'):>7}{pct('blur'):>7}{pct('generator'):>7}")
    for f, why in res.get("threshold_source", {}).items():
        if not why.startswith("Youden"):
            print(f"  {f}: threshold {why}")
    for f, why in res.get("skipped", {}).items():
        print(f"  {f}: not trained ({why}): its synthetic images are rejected as unverifiable")


def _print_acceptance(res: dict[str, Any]) -> None:
    per = res["summary"]
    total = sum(d["finished"] for d in per.values())
    acc = sum(d["accepted"] for d in per.values())
    print(f"\nSynthetic images accepted by the gate: {acc} of {total} planned"
          + (f" ({100 * acc / total:.0f}%)" if total else ""))
    for f, d in sorted(per.items()):
        print(f"  {f:<16}{d['accepted']:>4} of {d['finished']:<4}")
    print(f"  pool: {res['pool']} (images/, rejected/, masks/, provenance.csv with each item's verdict)")


def _augment_stage(
    cfg: RunConfig, train: NIHIndex, classifier: Path, generator: StageResult, upstream: list[str], parent_run_id: str,
    verifier: StageResult | None = None, classifier_findings: list[str] | None = None,
) -> StageResult:
    import mlflow

    from augment import tracking
    from augment.synthesis.fingerprint import generator_fingerprint
    from augment.synthesis.pool import PoolWriter
    from augment.evaluation.plots import image_grid, save_figure
    from jobs.augment import run_augment

    generator_ckpt = generator.path / generator.result["checkpoint"]
    key = stage_key(
        {"augment": cfg.augment.model_dump(mode="json"), "quality": cfg.quality.model_dump(mode="json"),
         "registration": cfg.registration.model_dump(mode="json"), "attention": cfg.attention.model_dump(mode="json"),
         "input_filter": cfg.input_filter.model_dump(mode="json"), "generator": generator_fingerprint(generator_ckpt),
         "sampling": cfg.inpainting.model_dump(mode="json", include=SAMPLING_KEYS | {"region_margin"}),
         "classifier_findings": classifier_findings or []},
        upstream + ([verifier.key] if verifier is not None else []),
    )
    # The pool lives beside the stage folders under a key of its own: a re-run with the
    # same inputs (the generator's weights included) resumes it (finished items are
    # skipped), other inputs get a new pool; a pool never mixes generators.
    pool_uri = f"{cfg.augment.output.rstrip('/')}/{key}"
    acfg = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"output": pool_uri})})

    def work(out: Path) -> dict[str, Any]:
        with tracking.start_run(acfg, "augment", parent_run_id) as run:
            res = run_augment(
                acfg, train, str(classifier), str(generator_ckpt),
                generator_run=generator.result.get("mlflow_run_id") or "",
                verifier_checkpoint=str(verifier.path / verifier.result["checkpoint"]) if verifier is not None else None,
                classifier_findings=classifier_findings,
            )
            per = res.summary
            tracking.metrics_to_mlflow({
                "planned": res.planned, "processed": res.processed, "skipped_done": res.skipped_done,
                "seconds": res.seconds, "items_per_s": res.throughput, "accepted_per_s": res.accepted_per_second,
                "accepted": sum(d["accepted"] for d in per.values()),
                "rejected": sum(d["rejected"] for d in per.values()),
                **{f"acceptance_rate.{f}": d["acceptance_rate"] for f, d in per.items()},
                **{f"accepted.{f}": d["accepted"] for f, d in per.items()},
            })
            rows = PoolWriter(pool_uri).rows()  # the current plan's items
            if rows and "://" not in pool_uri:
                root = Path(pool_uri)
                pick = [r for r in rows if r.accepted][:8] + [r for r in rows if not r.accepted][:4]
                imgs = [read_image(root / ("images" if r.accepted else "rejected") / r.image) for r in pick]
                masks = [read_image(root / "masks" / r.image) for r in pick]
                titles = [f"{'OK' if r.accepted else 'NO'} {r.finding} "
                          + (f"v {r.verifier_before:.2f}->{r.verifier_after:.2f}" if r.verifier_after is not None
                             else f"{r.prob_before or 0:.2f}->{r.prob_after or 0:.2f}") for r in pick]
                save_figure(image_grid(imgs, titles, ncols=6, overlays=masks), out / "examples.png")
                mlflow.log_artifact(str(out / "examples.png"))
            mlflow.log_text(json.dumps(per, indent=1), "acceptance.json")
            return {"pool": pool_uri, "planned": res.planned, "processed": res.processed, "summary": per,
                    "seconds": res.seconds, "accepted_per_s": res.accepted_per_second, "mlflow_run_id": run.info.run_id}

    return run_stage(cfg.output_dir, "augment", key, work)


def _compare_stage(cfg: RunConfig, base: StageResult, aug: StageResult, test: NIHIndex, val: NIHIndex,
                   parent_run_id: str) -> StageResult:
    """Both classifiers on the test split: AUC differences with a patient-level paired bootstrap,
    accuracy at each model's Youden threshold chosen on the validation split."""
    import mlflow

    from dataclasses import astuple

    from augment import tracking
    from augment.classifier.metrics import classification_metrics, youden_thresholds
    from augment.classifier.score import score_checkpoint
    from augment.evaluation.compare import compare_auc, comparison_figure
    from augment.evaluation.plots import save_figure

    key = stage_key({"test": sorted(r.image_index for r in test.records), "val": sorted(r.image_index for r in val.records),
                     "measures": 2}, [base.key, aug.key])

    def work(out: Path) -> dict[str, Any]:
        ckpt_b, ckpt_a = base.path / base.result["checkpoint"], aug.path / aug.result["checkpoint"]
        size = cfg.classifier.image_size
        (y, pb, lb), (_, pa, la) = (astuple(score_checkpoint(c, test, size)) for c in (ckpt_b, ckpt_a))
        (yv, pvb, _), (_, pva, _) = (astuple(score_checkpoint(c, val, size)) for c in (ckpt_b, ckpt_a))
        patients = [r.patient_id for r in test.records]  # the loader keeps the index's order
        rows = compare_auc(y, pb, pa, seed=cfg.seed, groups=patients)
        mb = classification_metrics(y, pb, loss=lb, thresholds=youden_thresholds(yv, pvb))
        ma = classification_metrics(y, pa, loss=la, thresholds=youden_thresholds(yv, pva))
        table = []
        for r in rows:
            d = r.to_dict()
            if r.finding != "macro":
                fb, fa = mb.finding(r.finding), ma.finding(r.finding)
                d["acc_youden_base"], d["acc_youden_augmented"] = fb.accuracy_at_youden, fa.accuracy_at_youden
            table.append(d)
        summary = {
            "test_images": len(test), "test_patients": len(set(patients)),
            "interval": "paired bootstrap over test patients", "youden_threshold_from": "validation split",
            "loss_base": lb, "loss_augmented": la,
            "gap_base": base.result["loss_gap"], "gap_augmented": aug.result["loss_gap"],
            "train_images_base": base.result["train_images"], "train_images_augmented": aug.result["train_images"],
        }
        (out / "comparison.json").write_text(json.dumps({"summary": summary, "per_finding": table}, indent=1))
        save_figure(comparison_figure(rows), out / "comparison.png")
        with tracking.start_run(cfg, "compare", parent_run_id) as run:
            macro = rows[-1]
            tracking.metrics_to_mlflow({
                "test.macro_auc_base": macro.auc_base, "test.macro_auc_augmented": macro.auc_augmented,
                "test.macro_auc_delta": macro.delta, "test.macro_auc_delta_low": macro.delta_low,
                "test.macro_auc_delta_high": macro.delta_high, **{f"test.{k}": v for k, v in summary.items()},
            })
            mlflow.log_table({k: [row.get(k) for row in table] for k in table[0]}, "comparison_table.json")
            mlflow.log_artifact(str(out / "comparison.png"))
            mlflow.log_artifact(str(out / "comparison.json"))
            return {"summary": summary, "per_finding": table, "mlflow_run_id": run.info.run_id}

    return run_stage(cfg.output_dir, "compare", key, work)


def _publish(cfg: RunConfig, files: dict[str, Path]) -> None:
    """Copy the run's models to the fixed places the Serve app reads by default (``serve.*``)."""
    from augment.data.io import atomic_write_bytes

    for rel, src in files.items():
        atomic_write_bytes(Path(cfg.output_dir) / rel, Path(src).read_bytes())
    log.info("models published under %s: %s", cfg.output_dir, ", ".join(files))


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _print_comparison(res: dict[str, Any]) -> None:
    s = res["summary"]
    print(f"\nBase (real only, {s['train_images_base']} train images) vs augmented (real + synthetic, "
          f"{s['train_images_augmented']}) on the same {s['test_images']} held-out real test images:")
    print(f"{'finding':<20}{'pos':>5}{'AUC base':>10}{'AUC aug':>10}{'delta [95% CI]':>26}  verdict")
    for r in res["per_finding"]:
        if r["auc_base"] is None and r["finding"] != "macro":
            continue
        ci = f"[{_fmt(r['delta_low'], '+.3f')}, {_fmt(r['delta_high'], '+.3f')}]"
        print(f"{r['finding']:<20}{r['n_positive']:>5}{_fmt(r['auc_base']):>10}{_fmt(r['auc_augmented']):>10}"
              f"{_fmt(r['delta'], '+.3f'):>9} {ci:>16}  {r['verdict']}")
    print(f"{'test loss':<20}{'':>5}{_fmt(s['loss_base'], '.4f'):>10}{_fmt(s['loss_augmented'], '.4f'):>10}")
    if "test_patients" in s:
        print(f"(95% intervals: paired bootstrap over the {s['test_patients']} test patients; accuracy at the Youden "
              "threshold chosen on the validation split)")
    print(f"{'train-val gap':<20}{'':>5}{_fmt(s['gap_base'], '.4f'):>10}{_fmt(s['gap_augmented'], '.4f'):>10}")


def run_pipeline(cfg: RunConfig, until: str | None = None) -> dict[str, Any]:
    """Run every stage under one parent MLflow run; return the stage results.

    ``until="augment"`` stops after the synthetic pool is made (and publishes the base
    classifier, generator and verifier): for experiments that retrain on the pool their own
    way, such as the long-tail benchmark (``bench/longtail.sh``).
    """
    if until not in (None, "augment"):
        raise ConfigError(f"--until takes 'augment' (stop once the pool is made), got {until!r}")
    from augment import tracking
    from augment.data import load_index
    from jobs.ray_utils import init_ray, shutdown_ray

    check_paths(cfg)  # a missing folder fails here, not after Ray and MLflow have started
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    stage_s: dict[str, float] = {}
    mark = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        stage_s[name] = round(now - mark[0], 1)
        mark[0] = now

    started = init_ray(cfg)  # once for all stages; each stage would otherwise start its own
    try:
        with tracking.start_run(cfg, "pipeline") as parent:
            pid = parent.info.run_id
            results["mlflow_run_id"] = pid
            lap("start")
            index, split = prepare_data(cfg)
            data = _data_stage(cfg, index, split, pid)
            results["data"] = data.result
            _print_counts(data.result)
            lap("data")
            base = _classifier_stage(cfg, "classifier-base", split.train, split.val, [data.key], pid)
            results["classifier_base"] = base.result
            base_ckpt = base.path / base.result["checkpoint"]
            lap("classifier_base")
            gen = _generator_stage(cfg, split.train, [data.key], pid)
            results["generator"] = gen.result
            lap("generator")
            ver = None
            if cfg.quality.judge == "verifier":
                ver = _verifier_stage(cfg, split.train, split.val, base_ckpt, [data.key, base.key], pid, gen)
                results["verifier"] = ver.result
                _print_verifier(ver.result)
                lap("verifier")
            sees = classifier_sees(base, cfg.quality.classifier_auc_floor) if cfg.quality.classifier_judge == "auto" else []
            aug = _augment_stage(cfg, split.train, base_ckpt, gen, [data.key, base.key, gen.key], pid, ver, sees)
            results["augment"] = aug.result
            _print_acceptance(aug.result)
            lap("augment")
            if until == "augment":
                _publish(cfg, {
                    "classifier/classifier.pt": base_ckpt,
                    "generator/generator.pt": gen.path / gen.result["checkpoint"],
                    **({"verifier/verifier.pt": ver.path / ver.result["checkpoint"]} if ver is not None else {}),
                })
                results["stage_seconds"] = stage_s
                results["seconds"] = round(time.perf_counter() - t0, 1)
                print("\nStopped after the augment stage (--until augment); stage wall times (s): "
                      + ", ".join(f"{k} {v}" for k, v in stage_s.items()))
                return results
            pool = load_index(aug.result["pool"]) if sum(d["accepted"] for d in aug.result["summary"].values()) else None
            if pool is None:
                # Same data, same seed, same config: retraining would reproduce the base model.
                log.warning("the gate accepted no synthetic image: the 'augmented' classifier is the base classifier")
                retrained = base
            else:
                retrained = _classifier_stage(
                    cfg, "classifier-augmented", split.train.concat(pool), split.val, [data.key, aug.key], pid
                )
            results["classifier_augmented"] = retrained.result
            lap("classifier_augmented")
            _publish(cfg, {
                "classifier/classifier.pt": base_ckpt,
                "generator/generator.pt": gen.path / gen.result["checkpoint"],
                "classifier-augmented/classifier.pt": retrained.path / retrained.result["checkpoint"],
                **({"verifier/verifier.pt": ver.path / ver.result["checkpoint"]} if ver is not None else {}),
            })
            cmp = _compare_stage(cfg, base, retrained, split.test, split.val, pid)
            results["compare"] = cmp.result
            lap("compare")
            _print_comparison(cmp.result)
            results["stage_seconds"] = stage_s
            print("\nStage wall times (s, cached stages take ~0): " + ", ".join(f"{k} {v}" for k, v in stage_s.items()))
            tracking.metrics_to_mlflow(
                {"pipeline.seconds": time.perf_counter() - t0, **{f"pipeline.seconds.{k}": v for k, v in stage_s.items()}}
            )
            for name in ("data", "classifier_base", "generator", "verifier", "augment", "classifier_augmented", "compare"):
                mlflow_id = results.get(name, {}).get("mlflow_run_id")
                if mlflow_id:
                    import mlflow

                    mlflow.set_tag(f"cxr.child.{name}", mlflow_id)
    finally:
        shutdown_ray(started)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = job_parser("python -m jobs.pipeline", __doc__, "classifier.epochs=2", config_default="configs/local.yaml", parent=False)
    p.add_argument("--until", choices=["augment"],
                   help="stop once the synthetic pool is made (no retraining, no comparison)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: _main(args), fixable=(ConfigError, DataError, PoolError))


def _main(args: argparse.Namespace) -> int:
    cfg = load_job_config(args)
    results = run_pipeline(cfg, until=args.until)
    from augment.tracking import ui_command

    print(f"\nPipeline finished in {results['seconds']} s; MLflow parent run {results['mlflow_run_id']}.")
    print(f"Open MLflow on it:\n  {ui_command(cfg.tracking)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
