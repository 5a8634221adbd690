"""Classifier speed: EfficientNet training and inference images/s per resolution, and the
plain PyTorch loop against the same loop under Ray Train with one worker.

    python bench/bench_classifier.py                      # full: B4 at 128/224/380, 500 images
    python bench/bench_classifier.py --quick              # reduced: for a busy machine
    python bench/bench_classifier.py --ray-images 200 --sizes 128 224

Writes ``bench/results/classifier.json``. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from augment.classifier.model import build_classifier  # noqa: E402
from augment.classifier.train import fit, make_loader  # noqa: E402
from augment.device import run_device  # noqa: E402
from augment.config import ClassifierConfig, RunConfig  # noqa: E402


def _machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_size(arch: str, size: int, batch: int, steps: int, device: torch.device, bf16: bool) -> dict:
    """Training (Adam step) and inference images/s at one resolution, channels_last."""
    cfg = ClassifierConfig(arch=arch, image_size=size, batch_norm_momentum=0.9)
    torch.manual_seed(0)
    model = build_classifier(cfg).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 14, device=device) < 0.1).float()
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    def train_step():
        with torch.autocast(**amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    train_step()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    _sync(device)
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad(), torch.autocast(**amp):
        model(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        _sync(device)
    infer_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        "arch": arch,
        "size": size,
        "batch": batch,
        "steps": steps,
        "bf16": bf16,
        "train_img_per_s": round(batch * steps / train_s, 2),
        "infer_img_per_s": round(batch * steps / infer_s, 2),
        "gpu_peak_gib": peak,
    }


def bench_ray_overhead(arch: str, n_images: int, n_val: int, size: int, threads: int, out: Path) -> dict:
    """One epoch over ``n_images`` NIH-sample images: plain ``fit`` vs ``train_classifier`` (1 Ray worker)."""
    import ray

    from augment.data.nih import load_index
    from jobs.ray_utils import init_ray
    from jobs.train_classifier import train_classifier

    root = REPO.parent / "shared" / "data" / "nih-sample"
    index = load_index(root)
    if len(index) < n_images + n_val:
        raise SystemExit(f"{root} has {len(index)} images; need {n_images + n_val}")
    train = index.subset(r.image_index for r in index.records[:n_images])
    val = index.subset(r.image_index for r in index.records[n_images : n_images + n_val])
    cfg = RunConfig.model_validate(
        {
            "classifier": {"arch": arch, "image_size": size, "epochs": 1, "batch_size": 16, "augment": True},
            "resources": {"num_cpus": threads, "num_workers": 1, "cpus_per_worker": threads, "torch_threads": threads},
            "tracking": {"enabled": False},
        }
    )
    ccfg = cfg.classifier
    # Decode the images once so that both sides read the page cache, not a cold disk.
    for r in list(train.records) + list(val.records):
        train.path(r).read_bytes()

    def plain() -> tuple[float, object]:
        t0 = time.perf_counter()
        torch.manual_seed(ccfg.seed)
        model = build_classifier(ccfg)
        res = fit(model, make_loader(train, ccfg, shuffle=True), make_loader(val, ccfg, shuffle=False), ccfg,
                  device=torch.device("cpu"))
        return time.perf_counter() - t0, res.history[0]

    plain_s, plain_epoch = plain()

    t0 = time.perf_counter()
    init_ray(cfg)
    ray_init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = train_classifier(cfg, train, val, out / "ray-bench")
    ray_total_s = time.perf_counter() - t0
    ray.shutdown()
    ray_epoch = trained.history[0]
    # The plain loop again after Ray: on a shared machine the two plain runs show the noise.
    plain2_s, plain2_epoch = plain()
    return {
        "arch": arch,
        "size": size,
        "train_images": n_images,
        "val_images": n_val,
        "threads": threads,
        "plain_total_s": round(plain_s, 1),
        "plain_epoch_s": round(plain_epoch.seconds, 1),
        "plain_train_img_per_s": round(plain_epoch.train_images_per_s, 2),
        "plain_again_total_s": round(plain2_s, 1),
        "plain_again_epoch_s": round(plain2_epoch.seconds, 1),
        "ray_init_s": round(ray_init_s, 1),
        "ray_fit_s": round(trained.seconds, 1),
        "ray_call_total_s": round(ray_total_s, 1),
        "ray_epoch_s": round(ray_epoch.seconds, 1),
        "ray_train_img_per_s": round(ray_epoch.train_images_per_s, 2),
        "ray_fixed_overhead_s": round(trained.seconds - ray_epoch.seconds, 1),
        # start: fit() until the loop runs in the worker; teardown: the loop's end until fit() returns.
        "ray_fit_phases_s": {k: round(v, 1) for k, v in trained.fit_phases.items()},
        "ray_start_plus_teardown_s": round(trained.fit_phases["start"] + trained.fit_phases["teardown"], 1),
        # The goal's measure: what fit() costs beyond the plain loop's whole call, as a share of a plain epoch.
        "ray_overhead_vs_plain_epoch": round(
            (trained.seconds - (plain_s + plain2_s) / 2) / ((plain_epoch.seconds + plain2_epoch.seconds) / 2), 3
        ),
        "overhead_vs_plain_total": round(trained.seconds / ((plain_s + plain2_s) / 2) - 1, 3),
        "epoch_slowdown_in_worker": round(ray_epoch.seconds / ((plain_epoch.seconds + plain2_epoch.seconds) / 2) - 1, 3),
    }


def _report_only(config: dict) -> None:
    """A Ray Train loop that does nothing but report once: what a fit costs with no work."""
    import tempfile

    import ray.train

    # Ray Train V2 returns the metrics of the last report that carried a checkpoint.
    with tempfile.TemporaryDirectory() as d:
        Path(d, "empty").write_text("")
        ray.train.report({"loop_started_at": time.time()}, checkpoint=ray.train.Checkpoint.from_directory(d))


def bench_ray_floor(threads: int, out: Path, polls: tuple[float, ...] = (2.0, 0.5), repeats: int = 2) -> dict:
    """Ray Train's own cost per ``fit()``: a loop that only reports, one worker, per poll interval.

    The poll interval is Ray Train's controller health-check period (2 s by default; the
    project's ``resources.train_poll_interval_s`` sets 0.5 s). All fits share one Ray session,
    so only the first pays for the placement-group cleaner actor.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from jobs.ray_utils import init_ray

    cfg = RunConfig.model_validate({"resources": {"num_cpus": threads, "cpus_per_worker": threads}, "tracking": {"enabled": False}})
    before = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    init_ray(cfg)
    rows = []
    try:
        for poll in polls:
            os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(poll)
            for i in range(repeats):
                trainer = TorchTrainer(
                    _report_only,
                    scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
                    run_config=ray.train.RunConfig(name=f"floor-{poll}-{i}", storage_path=str(out / "floor")),
                )
                t0, started = time.perf_counter(), time.time()
                result = trainer.fit()
                sec = time.perf_counter() - t0
                start = result.metrics["loop_started_at"] - started
                rows.append({"poll_s": poll, "fit_s": round(sec, 2), "start_s": round(start, 2), "after_loop_s": round(sec - start, 2)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)
        else:
            os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = before
    return {"threads": threads, "fits": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="efficientnet-b4")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224, 380])
    p.add_argument("--steps", type=int, nargs="+", default=[4, 3, 2], help="timed batches per size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ray-images", type=int, default=500)
    p.add_argument("--val-images", type=int, default=32)
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    p.add_argument("--quick", action="store_true", help="reduced: sizes 128/224 (1 batch at 380), 96 Ray images")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--ray-floor", action="store_true", help="also time fit() of a loop that only reports, at Ray's and our poll interval")
    p.add_argument("--skip-sizes", action="store_true", help="keep the 'sizes' of an existing results file")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "classifier.json"))
    args = p.parse_args()
    if args.quick:
        args.steps = [2, 1, 1]
        args.ray_images = min(args.ray_images, 96)
    torch.set_num_threads(args.threads)
    device = run_device(torch.cuda.is_available())
    load_before = os.getloadavg()
    results = {"machine": _machine(), "command": " ".join([Path(sys.executable).name] + sys.argv),
               "load_avg_before": [round(v, 2) for v in load_before], "sizes": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part, so that a failure later keeps what was measured
        results["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
        out.write_text(json.dumps(results, indent=2))

    steps = dict(zip(args.sizes, args.steps + [args.steps[-1]] * len(args.sizes)))
    if args.skip_sizes and out.is_file():
        old = json.loads(out.read_text())
        results["sizes"] = old.get("sizes", [])
        results["sizes_from"] = {k: old.get(k) for k in ("command", "load_avg_before", "load_avg_after")}
    for size in [] if args.skip_sizes else args.sizes:
        for bf16 in ([False, True] if device.type == "cuda" else [False]):
            r = bench_size(args.arch, size, args.batch, steps[size], device, bf16)
            r["load_avg_1min"] = round(os.getloadavg()[0], 2)
            print(json.dumps(r), flush=True)
            results["sizes"].append(r)
            save()
    if not args.skip_ray:
        try:
            with tempfile.TemporaryDirectory() as d:
                r = bench_ray_overhead(args.arch, args.ray_images, args.val_images, 128, args.threads, Path(d))
        except Exception as exc:  # keep the size figures; say what failed
            r = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(r), flush=True)
        results["ray_vs_plain"] = r
        save()
    elif out.is_file() and "ray_vs_plain" in (old := json.loads(out.read_text())):
        results["ray_vs_plain"] = old["ray_vs_plain"]  # measured earlier; this run did not repeat it
    if args.ray_floor:
        with tempfile.TemporaryDirectory() as d:
            results["ray_floor"] = bench_ray_floor(args.threads, Path(d))
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
