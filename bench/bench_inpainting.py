"""Inpainting speed (and, given trained models, acceptance) of the flow-matching generator.

    python bench/bench_inpainting.py                         # CPU: images/s at 5/10/20/50 steps, crop vs full
    python bench/bench_inpainting.py --quick                 # fewer repeats, for a busy machine
    python bench/bench_inpainting.py --reconstruction --generator runs/local/generator/generator.pt
    python bench/bench_inpainting.py --acceptance \\
        --classifier runs/local/classifier/classifier.pt --generator runs/local/generator/generator.pt

Speed: a batch of 16 phantom radiographs of 256x256 with a lesion-sized mask each (the
phantom's Nodule / Mass masks), the network of ``configs/local.yaml`` (random weights: the
cost does not depend on them), default solver and guidance. Reports images/s and seconds
per image at each step count, the cost of the crop against the full 256x256 image, the
FLOPs per image (counted with ``torch.utils.flop_counter``) and the FLOP rate reached. On
a CUDA GPU it also measures 256x256 and 1024x1024 images at the largest batch that fits and
compares FLOPs/s with the card's peak.

Acceptance (``--acceptance``): healthy test images get a finding carried over by Demons
registration from a diseased training image (its ground-truth mask warped); the region is
filled by the generator at each step count, by copy-paste of the registered reference,
and by plain noise; the gate (with the given classifier) decides. Needs trained models.

Writes ``bench/results/inpainting.json`` (merging with what is there). Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from augment.config import InpaintingConfig, load_config  # noqa: E402
from augment.findings import FINDINGS  # noqa: E402
from augment.inpainting.model import build_model, inference_layout, load_generator  # noqa: E402
from augment.painter import load_painter  # noqa: E402
from augment.inpainting.sampler import inpaint  # noqa: E402

RESULTS = REPO / "bench" / "results" / "inpainting.json"
# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets.
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12, "T4": 65e12}


def _machine() -> dict:
    cpu = platform.processor() or ""
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        for line in info.splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg()[0],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def phantom_batch(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n phantom radiographs with a Nodule or Mass each: (images, masks, findings)."""
    from augment.data.phantom import render_phantom

    rng = np.random.default_rng(seed)
    imgs, masks, fs = [], [], []
    for i in range(n):
        f = ("Nodule", "Mass")[i % 2]
        ph = render_phantom(rng, size, [f])
        imgs.append(torch.from_numpy(ph.image)[None])
        masks.append(torch.from_numpy(np.asarray(ph.masks[f], dtype=bool))[None])
        v = torch.zeros(len(FINDINGS))
        v[FINDINGS.index(f)] = 1
        fs.append(v)
    return torch.stack(imgs), torch.stack(masks), torch.stack(fs)


def flops_per_forward(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """FLOPs of one network pass on one (1, 1, size, size) input."""
    from torch.utils.flop_counter import FlopCounterMode

    from augment.inpainting.model import Conditioning

    x = torch.zeros(1, 1, size, size, device=device)
    cond = Conditioning(x, x, torch.zeros(1, 2, size, size, device=device), torch.zeros(1, 14, device=device))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, torch.zeros(1, device=device), cond)
    return float(fc.get_total_flops())


def passes_per_step(icfg: InpaintingConfig) -> int:
    per_eval = 1 if icfg.guidance in (0.0, 1.0) else 2
    return per_eval * (2 if icfg.solver == "heun" else 1)


def time_inpaint(model, images, masks, findings, icfg: InpaintingConfig, device, repeats: int) -> float:
    """Best-of-``repeats`` seconds for one ``inpaint`` call on the batch (after a warm-up)."""
    inpaint(model, images[:2], masks[:2], findings[:2], icfg.model_copy(update={"steps": 1}), torch.Generator().manual_seed(0))
    best = float("inf")
    for r in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        inpaint(model, images, masks, findings, icfg, torch.Generator().manual_seed(r))
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_speed(icfg: InpaintingConfig, device: torch.device, batch: int, step_counts: list[int], repeats: int, full_batch: int) -> dict:
    torch.manual_seed(0)
    # as load_generator gives it to the augment job and the service
    model = inference_layout(build_model(icfg).to(device).eval())
    images, masks, findings = phantom_batch(batch, 256)
    mask_frac = float(masks.float().mean())
    f_crop = flops_per_forward(model, icfg.crop_size, device)
    f_full = flops_per_forward(model, 256, device)
    out: dict[str, Any] = {
        "config": {k: icfg.model_dump()[k] for k in ("crop_size", "block_out_channels", "layers_per_block", "mid_attention", "solver", "guidance", "bf16", "context")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "image_size": 256,
        "mean_mask_fraction": mask_frac,
        "flops_per_pass_crop": f_crop,
        "flops_per_pass_full_256": f_full,
        "per_steps": {},
    }
    for steps in step_counts:
        cfg = icfg.model_copy(update={"steps": steps})
        sec = time_inpaint(model, images, masks, findings, cfg, device, repeats)
        flops = f_crop * passes_per_step(cfg) * steps
        out["per_steps"][str(steps)] = {
            "seconds_per_batch": sec,
            "images_per_s": batch / sec,
            "seconds_per_image": sec / batch,
            "gflops_per_image": flops / 1e9,
            "gflops_per_s": flops * batch / sec / 1e9,
        }
        print(f"crop {icfg.crop_size}, {steps:3d} steps: {batch / sec:6.2f} images/s ({sec / batch:.3f} s/image)", flush=True)
    steps = icfg.steps
    full_cfg = icfg.model_copy(update={"region": "full"})
    sec_full = time_inpaint(model, images[:full_batch], masks[:full_batch], findings[:full_batch], full_cfg, device, 1)
    sec_crop = out["per_steps"].get(str(steps), {}).get("seconds_per_image")
    if sec_crop is None:
        sec_crop = time_inpaint(model, images, masks, findings, icfg, device, repeats) / batch
    out["crop_vs_full"] = {
        "steps": steps,
        "crop_seconds_per_image": sec_crop,
        "full_seconds_per_image": sec_full / full_batch,
        "full_batch": full_batch,
        "speedup": (sec_full / full_batch) / sec_crop,
        "pixel_ratio": (256 / icfg.crop_size) ** 2,
    }
    print(f"full 256x256 at {steps} steps: {sec_full / full_batch:.3f} s/image; crop: {sec_crop:.3f} s/image", flush=True)
    return out


def _largest_batch(model, size, icfg, device, start: int = 8, limit: int = 4096) -> tuple[int, float]:
    images, masks, findings = phantom_batch(start, size)
    best = (0, float("nan"))
    b = start
    while b <= limit:
        reps = (b + start - 1) // start
        imgs, m, f = images.repeat(reps, 1, 1, 1)[:b], masks.repeat(reps, 1, 1, 1)[:b], findings.repeat(reps, 1)[:b]
        try:
            sec = time_inpaint(model, imgs, m, f, icfg, device, 2)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        best = (b, b / sec)
        b *= 2
    return best


def bench_gpu(icfg: InpaintingConfig) -> dict:
    """256 and 1024 images, crop and full, largest batch that fits, bf16; FLOPs vs the card's peak."""
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in GPU_PEAKS.items() if k in name), None)
    torch.manual_seed(0)
    model = build_model(icfg).to(device).eval()
    out: dict[str, Any] = {"device": name, "peak_bf16_flops": peak, "steps": icfg.steps, "runs": []}
    for size in (256, 1024):
        for region in ("crop", "full"):
            cfg = icfg.model_copy(update={"region": region, "bf16": True})
            batch, ips = _largest_batch(model, size, cfg, device, start=8, limit=1024 if region == "crop" else 256)
            px = icfg.crop_size if region == "crop" else size
            flops = flops_per_forward(model, px, device) * passes_per_step(cfg) * cfg.steps
            out["runs"].append({
                "image_size": size, "region": region, "batch": batch, "images_per_s": ips,
                "gflops_per_image": flops / 1e9, "tflops_per_s": flops * ips / 1e12,
                "share_of_peak": (flops * ips / peak) if peak and ips == ips else None,
            })
            print(out["runs"][-1], flush=True)
    return out


def bench_acceptance(
    cfg_path: str | None,
    classifier: str,
    generator: str,
    step_counts: list[int],
    n: int,
    threads: int,
    findings: list[str] | None = None,
    others: dict[str, str] | None = None,
) -> dict:
    """Gate acceptance of generated images per step count, against copy-paste and noise baselines
    (and against other generators' checkpoints, e.g. the LSGAN / VAE baselines, by name)."""
    from augment.classifier.checkpoint import load_classifier
    from augment.classifier.predict import embed_images, predict_proba
    from augment.data import prepare_data
    from augment.data.io import read_batch
    from augment.data.phantom import load_phantom_mask
    from augment.quality import TrainingBank, acceptance_summary, evaluate_gate
    from augment.registration import transfer_region

    cfg = load_config(cfg_path)
    index, split = prepare_data(cfg)
    size = cfg.data.image_size
    clf = load_classifier(classifier)
    gen_model = load_generator(generator)
    icfg = gen_model.cfg.model_copy(update={k: getattr(cfg.inpainting, k) for k in ("guidance", "solver", "bf16", "context")})

    def prob_fn(x):
        if x.shape[-1] != clf_size:
            x = torch.nn.functional.interpolate(x, size=(clf_size, clf_size), mode="bilinear", antialias=True)
        return predict_proba(clf, x)

    def embed_fn(x):
        if x.shape[-1] != clf_size:
            x = torch.nn.functional.interpolate(x, size=(clf_size, clf_size), mode="bilinear", antialias=True)
        return embed_images(clf, x)

    clf_size = cfg.classifier.image_size
    train_imgs = read_batch([split.train.path(r) for r in split.train.records], size)
    bank = TrainingBank.build(train_imgs, [r.image_index for r in split.train.records], embed_fn, cfg.quality.bank_image_size)
    healthy = split.test.healthy() + split.val.healthy()
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {"n_per_finding": n, "findings": {}}
    phantom_findings = [f for f in cfg.data.phantom.prevalence if split.train.with_finding(f) and (not findings or f in findings)]
    other_models = {name: load_painter(path) for name, path in (others or {}).items()}
    methods = [f"flow_{s}" for s in step_counts] + list(other_models) + ["copy_paste", "noise"]
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    counted: dict[str, int] = {m: 0 for m in methods}
    decisions: dict[str, list] = {m: [] for m in methods}
    for finding in phantom_findings:
        refs = split.train.with_finding(finding)
        q = [healthy[i] for i in rng.choice(len(healthy), size=min(n, len(healthy)), replace=False)]
        r = [refs[i] for i in rng.choice(len(refs), size=len(q), replace=True)]
        fixed = read_batch([index.path(x) for x in q], size)
        moving = read_batch([index.path(x) for x in r], size)
        ref_masks = torch.stack([
            torch.nn.functional.interpolate(torch.from_numpy(load_phantom_mask(index.root, x.image_index, finding).astype(np.float32))[None, None], size=(size, size), mode="area")[0]
            for x in r
        ])
        tr = transfer_region(fixed, moving, ref_masks, cfg.registration)  # the product's path (lesion filled first)
        masks = tr.mask
        keep = masks.flatten(1).any(1)
        fixed, masks, warped = fixed[keep], masks[keep], tr.registration.warped[keep]
        ids = [x.image_index for x, k in zip(q, keep.tolist()) if k]
        targets = torch.zeros(len(ids), len(FINDINGS))
        targets[:, FINDINGS.index(finding)] = 1
        p_before = prob_fn(fixed)
        per: dict[str, Any] = {"pairs": len(ids)}
        for m in methods:
            t0 = time.perf_counter()
            if m in other_models:
                syn = other_models[m].paint(fixed, masks, targets, icfg, torch.Generator().manual_seed(0)).images
            elif m.startswith("flow_"):
                steps = int(m.split("_")[1])
                syn = inpaint(gen_model, fixed, masks, targets, icfg.model_copy(update={"steps": steps}), torch.Generator().manual_seed(0)).images
            elif m == "copy_paste":
                syn = torch.where(masks, warped, fixed)
            else:
                g = torch.Generator().manual_seed(0)
                mu = (fixed * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
                noise = (mu.view(-1, 1, 1, 1) + 0.15 * torch.randn(fixed.shape, generator=g)).clamp(0, 1)
                syn = torch.where(masks, noise, fixed)
            seconds[m] += time.perf_counter() - t0
            counted[m] += len(ids)
            ds = evaluate_gate(fixed, syn, masks, targets, cfg.quality, prob_fn, embed_fn, bank, ids, p_before=p_before)
            decisions[m] += ds
            s = acceptance_summary(ds)
            per[m] = {"acceptance_rate": s["acceptance_rate"], "mean_rise": s["mean_rise"], "reasons": s["reasons"]}
        results["findings"][finding] = per
        print(finding, json.dumps(per), flush=True)
    results["overall"] = {m: acceptance_summary(decisions[m])["acceptance_rate"] for m in methods}
    results["seconds_per_image"] = {m: round(seconds[m] / max(1, counted[m]), 3) for m in methods}
    results["classifier"], results["generator"], results["others"] = classifier, generator, others or {}
    return results


def bench_reconstruction(cfg_path: str | None, generator: str, steps: int, max_images: int = 60) -> dict:
    """A classifier-free check that the generator learned the findings.

    On held-out phantom images that have a finding, the finding's ground-truth region is
    masked and filled (a) by the generator asked for that finding, (b) asked for no finding,
    (c) with the mean of the known pixels. Reported: RMS error inside the mask against the
    real image, and the mean intensity change against the real one. A sampler's RMS is
    about sqrt(2) times that of the best point estimate, so mean filling can win on RMS;
    the mean shift says whether the fill has the finding's density (near 0 when it does).
    """
    from augment.data import prepare_data
    from augment.data.io import read_batch
    from augment.data.phantom import load_phantom_mask

    cfg = load_config(cfg_path)
    index, split = prepare_data(cfg)
    size = cfg.data.image_size
    model = load_generator(generator)
    icfg = model.cfg.model_copy(update={"steps": steps, **{k: getattr(cfg.inpainting, k) for k in ("guidance", "solver", "bf16", "context")}})
    rows = []
    for rec in split.test.records + split.val.records:
        for f in rec.labels:
            if f in cfg.data.phantom.prevalence:
                m = load_phantom_mask(index.root, rec.image_index, f)
                if m.any():
                    rows.append((rec, f, m))
    rows = rows[:max_images]
    imgs = read_batch([index.path(r) for r, _, _ in rows], size)
    masks = torch.stack([
        torch.nn.functional.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(size, size), mode="area")[0] > 0.5
        for _, _, m in rows
    ])
    targets = torch.zeros(len(rows), len(FINDINGS))
    for i, (_, f, _) in enumerate(rows):
        targets[i, FINDINGS.index(f)] = 1
    known_mean = (imgs * ~masks).flatten(1).sum(1) / (~masks).flatten(1).sum(1)
    fills = {
        "flow_finding": inpaint(model, imgs, masks, targets, icfg, torch.Generator().manual_seed(0)).images,
        "flow_no_finding": inpaint(model, imgs, masks, torch.zeros_like(targets), icfg.model_copy(update={"guidance": 1.0}), torch.Generator().manual_seed(0)).images,
        "mean_fill": torch.where(masks, known_mean.view(-1, 1, 1, 1).expand_as(imgs), imgs),
    }
    out: dict[str, Any] = {"images": len(rows), "steps": steps, "per_finding": {}}
    names = sorted({f for _, f, _ in rows})
    for name, x in fills.items():
        err = ((x - imgs) ** 2 * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
        dmean = ((x - imgs) * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
        out[name] = {"rms_in_mask": float(err.mean().sqrt()), "mean_shift_in_mask": float(dmean.mean())}
        for f in names:
            sel = torch.tensor([g == f for _, g, _ in rows])
            d = out["per_finding"].setdefault(f, {"n": int(sel.sum())})
            d[name] = {"rms": float(err[sel].mean().sqrt()), "mean_shift": float(dmean[sel].mean())}
    print(json.dumps(out, indent=1), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--quick", action="store_true", help="one timed repeat, full-image batch of 2")
    p.add_argument("--acceptance", action="store_true")
    p.add_argument("--reconstruction", action="store_true", help="held-out finding regions refilled (needs --generator)")
    p.add_argument("--classifier", default=None)
    p.add_argument("--generator", default=None)
    p.add_argument("--n-per-finding", type=int, default=20)
    p.add_argument("--findings", nargs="*", default=None, help="acceptance: only these findings")
    p.add_argument("--key", default=None, help="acceptance: the results key to write (default from --findings/--other)")
    p.add_argument("--other", nargs="*", default=[], metavar="NAME=CHECKPOINT",
                   help="acceptance: more generators to compare, e.g. lsgan=runs/local/generator-lsgan/generator.pt")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    icfg = load_config(args.config).inpainting
    result: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    result["machine"] = _machine()
    result["command"] = "python bench/bench_inpainting.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["date"] = time.strftime("%Y-%m-%d %H:%M")
    device = torch.device("cpu")
    if args.reconstruction:
        if not args.generator:
            p.error("--reconstruction needs --generator")
        result["reconstruction"] = bench_reconstruction(args.config, args.generator, load_config(args.config).inpainting.steps)
    elif args.acceptance:
        if not (args.classifier and args.generator):
            p.error("--acceptance needs --classifier and --generator checkpoints")
        others = dict(o.split("=", 1) for o in args.other)
        key = args.key or ("acceptance" if not (args.findings or others) else "acceptance_" + "_".join(sorted(others) or ["flow"]))
        result[key] = bench_acceptance(
            args.config, args.classifier, args.generator, args.steps, args.n_per_finding, args.threads, args.findings, others
        )
    else:
        result["cpu"] = bench_speed(icfg, device, args.batch, args.steps, 1 if args.quick else 2, 2 if args.quick else 4)
        if torch.cuda.is_available():
            result["gpu"] = bench_gpu(icfg)
    result["machine"]["load_avg_at_end"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
