"""Benchmark: batched torch Demons against SimpleITK's Demons filters, on real NIH pairs.

One command::

    .venv/bin/python bench/bench_registration.py --out bench/results/registration.json

For each image size (256 and 512; 512 is the 256 sample upsampled) it registers the same
real pairs (image 2i onto image 2i+1 of the sorted ``nih-sample`` folder) with 100
iterations, no early stop (SimpleITK ``MaximumRMSError`` 0 / ``tolerance`` 0), one
resolution level and no pre-alignment, so both sides do exactly the same work:

* SimpleITK ``FastSymmetricForcesDemonsRegistrationFilter`` (the reference, FSF);
* SimpleITK ``DiffeomorphicDemonsRegistrationFilter``;
* the torch version (``variant="symmetric"``) at batch 1, 8 and 32, and the torch
  diffeomorphic variant at batch 32;

and reports pairs per second, the ratio to SimpleITK FSF, and the NCC after registration
(mean over the pairs every method saw, so the NCC columns compare like with like). Both
libraries get the same number of threads (``--threads``, default 2); torch's OpenMP
threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it).
Machine information, with the load average before and after, goes into the JSON. On a CUDA device the torch version is also timed at 256x256 with a
large batch, and the memory traffic of one iteration (counted from the loop's tensor
reads and writes) is compared with the card's measured copy bandwidth.
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin at the barrier that ends every op; on a shared machine a
# spinning thread takes the core from the one still working, and 2-thread torch ran slower
# than SimpleITK under load. Passive waiting must be set before torch loads OpenMP; an
# explicit OMP_WAIT_POLICY in the environment wins. SimpleITK has its own thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from augment.data.io import read_image  # noqa: E402
from augment.registration.demons import DemonsParams, demons_torch  # noqa: E402
from augment.registration.sitk_backend import demons_sitk  # noqa: E402
from augment.registration.smoothing import gaussian_kernel1d  # noqa: E402
from augment.registration.warp import ncc, warp_image  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "nih-sample"


def machine_info(threads: int) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "simpleitk": sitk.Version.VersionString(),
        "numpy": np.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "load_average_start": list(os.getloadavg()),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return info


def _python_name() -> str:
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(REPO))
    except ValueError:
        return exe.name


def load_pairs(data: Path, n_pairs: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    paths = sorted((data / "images").glob("*.png"))[: 2 * n_pairs]
    if len(paths) < 2 * n_pairs:
        raise SystemExit(f"need {2 * n_pairs} images in {data / 'images'}, found {len(paths)}")
    imgs = torch.stack([torch.from_numpy(read_image(p, size)) for p in paths])[:, None]
    return imgs[0::2].contiguous(), imgs[1::2].contiguous()


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bytes_per_pixel_iteration(p: DemonsParams) -> int:
    """float32 bytes read + written per pixel by one symmetric-forces iteration of demons_torch.

    Counted from the loop: sampling grid 6, grid_sample 4, sum/difference/shrink 8,
    gradients 6, denominator 8, outside test 10, division 3, update 8, and the separable
    smoothing 12 per tap pair and axis (2 channels).
    """
    r = gaussian_kernel1d(p.sigma_field).numel() // 2
    floats = 6 + 4 + 8 + 6 + 8 + 10 + 3 + 8 + 2 * 12 * r
    return 4 * floats


def bench_size(size: int, args, params: DemonsParams) -> dict:
    n_max = max(args.batches)
    fixed, moving = load_pairs(args.data, n_max, size)
    n_common = args.sitk_pairs_256 if size <= 256 else args.sitk_pairs_512
    common = slice(0, n_common)
    rows = []

    def record(name, backend, variant, batch, n_pairs, seconds, ncc_after, iterations):
        rows.append(
            {
                "method": name,
                "backend": backend,
                "variant": variant,
                "batch": batch,
                "pairs": n_pairs,
                "seconds": round(seconds, 4),
                "pairs_per_s": round(n_pairs / seconds, 4),
                "ncc_after_common": round(float(ncc_after.mean()), 4),
                "iterations": sorted(set(iterations.tolist())),
            }
        )
        print(f"  {size}px {name:28s} {n_pairs / seconds:8.3f} pairs/s  NCC {float(ncc_after.mean()):.4f}", flush=True)

    f_c, m_c = fixed[common], moving[common]
    ncc_before = ncc(f_c, m_c)
    # warm-up (allocator, first calls) on one small pair
    demons_torch(f_c[:1], m_c[:1], DemonsParams(iterations=2, levels=1))
    demons_sitk(f_c[:1], m_c[:1], DemonsParams(iterations=2, levels=1))

    for variant, name in (("symmetric", "SimpleITK FastSymmetricForces"), ("diffeomorphic", "SimpleITK Diffeomorphic")):
        p = DemonsParams(**{**params.__dict__, "variant": variant})
        sec, out = timed(lambda p=p: demons_sitk(f_c, m_c, p), args.repeats)
        record(name, "simpleitk", variant, 1, n_common, sec, ncc(f_c, warp_image(m_c, out.field)), out.iterations)

    for batch in args.batches:
        n = max(batch, n_common)

        def run(batch=batch, n=n):
            fields, its = [], []
            for s in range(0, n, batch):
                o = demons_torch(fixed[s : min(s + batch, n)], moving[s : min(s + batch, n)], params)
                fields.append(o.field)
                its.append(o.iterations)
            return torch.cat(fields), torch.cat(its)

        sec, (field, its) = timed(run, args.repeats)
        record(f"torch symmetric b{batch}", "torch", "symmetric", batch, n, sec, ncc(f_c, warp_image(m_c, field[common])), its)

    p = DemonsParams(**{**params.__dict__, "variant": "diffeomorphic"})
    b = max(args.batches)
    sec, out = timed(lambda: demons_torch(fixed[:b], moving[:b], p), args.repeats)
    record(f"torch diffeomorphic b{b}", "torch", "diffeomorphic", b, b, sec, ncc(f_c, warp_image(m_c, out.field[common])), out.iterations)

    fsf = rows[0]["pairs_per_s"]
    dif = rows[1]["pairs_per_s"]
    for r in rows:
        r["ratio_vs_sitk_fsf"] = round(r["pairs_per_s"] / fsf, 3)
        if r["variant"] == "diffeomorphic":
            r["ratio_vs_sitk_diffeomorphic"] = round(r["pairs_per_s"] / dif, 3)
    return {
        "size": size,
        "common_pairs": n_common,
        "ncc_before_common": round(float(ncc_before.mean()), 4),
        "rows": rows,
    }


def bench_cuda(args, params: DemonsParams) -> dict:
    """Throughput at 256x256 with a large batch, and distance from the bandwidth bound."""
    dev = torch.device("cuda")
    fixed, moving = load_pairs(args.data, 32, 256)
    reps = -(-args.gpu_batch // 32)
    f = fixed.repeat(reps, 1, 1, 1)[: args.gpu_batch].to(dev)
    m = moving.repeat(reps, 1, 1, 1)[: args.gpu_batch].to(dev)
    demons_torch(f, m, DemonsParams(iterations=5, levels=1))
    torch.cuda.synchronize()
    out = {}
    for variant in ("symmetric", "diffeomorphic"):
        p = DemonsParams(**{**params.__dict__, "variant": variant})
        best = float("inf")
        for _ in range(max(2, args.repeats)):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            demons_torch(f, m, p)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        out[variant] = {"batch": args.gpu_batch, "seconds": round(best, 4), "pairs_per_s": round(args.gpu_batch / best, 1)}
        print(f"  cuda 256px torch {variant:13s} b{args.gpu_batch}: {args.gpu_batch / best:9.1f} pairs/s", flush=True)
    # measured device-to-device copy bandwidth (read + write)
    x = torch.empty(256 * 1024 * 1024, dtype=torch.float32, device=dev)
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    bandwidth = 10 * 2 * x.numel() * 4 / (time.perf_counter() - t0)
    bpp = bytes_per_pixel_iteration(params)
    bytes_per_pair = bpp * 256 * 256 * params.iterations
    bound = bandwidth / bytes_per_pair
    sym = out["symmetric"]["pairs_per_s"]
    out["bandwidth_bound"] = {
        "measured_copy_bandwidth_GBps": round(bandwidth / 1e9, 1),
        "bytes_per_pixel_iteration": bpp,
        "bytes_per_pair": bytes_per_pair,
        "bound_pairs_per_s": round(bound, 1),
        "achieved_fraction_of_bound": round(sym / bound, 3),
        "peak_memory_GB": round(torch.cuda.max_memory_allocated() / 1e9, 2),
    }
    print(f"  bandwidth {bandwidth / 1e9:.0f} GB/s, bound {bound:.0f} pairs/s, achieved {sym / bound:.0%}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "registration.json")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="best of this many runs per method")
    ap.add_argument("--sitk-pairs-256", type=int, default=8, help="pairs SimpleITK registers at 256 (and the NCC subset)")
    ap.add_argument("--sitk-pairs-512", type=int, default=4)
    ap.add_argument("--gpu-batch", type=int, default=512)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    params = DemonsParams(variant="symmetric", iterations=args.iterations, levels=1, tolerance=0.0)
    result = {
        "benchmark": "registration (issue 8): Demons, torch vs SimpleITK",
        "command": " ".join([_python_name(), *sys.argv]),
        "machine": machine_info(args.threads),
        "params": {**params.__dict__, "prealign": "none", "data": str(args.data)},
        "sizes": [],
    }
    for size in args.sizes:
        result["sizes"].append(bench_size(size, args, params))
    if torch.cuda.is_available():
        result["cuda"] = bench_cuda(args, params)
    result["machine"]["load_average_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
