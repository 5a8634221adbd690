"""Serve speed: latency p50/p95 and throughput of POST /v1/generate at concurrency 1, 4 and 16,
with and without ``@serve.batch``.

Each mode is a real ``serve run`` of ``services.app:app`` on 127.0.0.1 (Ray token auth on, as
in the tests; see ``tests/services/serve_process.py``), with random-weight models of the
sizes of ``configs/local.yaml`` (EfficientNet-B0 at 128 px, a [32, 64, 64] UNet at 64 px
crops, 10 Euler steps with guidance 1.5, Demons 50 iterations at 128 px) and 128x128 phantom
radiographs. ``--gpu`` asks for a GPU replica (``resources.use_gpu``).

    python bench/bench_serve.py                    # full: 48 requests per concurrency level
    python bench/bench_serve.py --requests 16      # reduced, for a busy machine
    python bench/bench_serve.py --tiny             # the tests' tiny models (smoke run)

Writes ``bench/results/serve.json``. Not part of the test run. The figures are random-weight
models: they measure the service, not the quality of the images.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "services"))
sys.path.insert(0, str(REPO / "bench"))

from overload import percentile as _percentile  # noqa: E402
from serve_process import free_port, serve_env, start_serve, stop_serve, wait_ready, write_serve_config  # noqa: E402
from tiny_models import build_tiny_setup  # noqa: E402


def _machine() -> dict:
    from bench_classifier import _machine as machine

    return {**machine(), "load_1min_before": round(os.getloadavg()[0], 2)}


async def _level(base: str, headers: dict, body: bytes, concurrency: int, n: int, finding: str) -> dict:
    lat: list[float] = []
    batch: list[int] = []
    status: dict[int, int] = {}
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=httpx.Limits(max_connections=concurrency + 2)) as c:
        async def one(i: int) -> None:
            async with sem:
                t0 = time.perf_counter()
                r = await c.post(f"/v1/generate?finding={finding}&seed={i}", content=body, headers=headers)
                dt = time.perf_counter() - t0
                status[r.status_code] = status.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    lat.append(dt)
                    batch.append(int(r.json()["batch_size"]))

        for i in range(min(concurrency, 4)):  # warm-up, not counted
            await one(10_000 + i)
        status.clear(), lat.clear(), batch.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(n)])
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": n,
        "status": {str(k): v for k, v in sorted(status.items())},
        "p50_ms": round(1000 * _percentile(lat, 0.5), 1),
        "p95_ms": round(1000 * _percentile(lat, 0.95), 1),
        "throughput_rps": round(len(lat) / wall, 3),
        "mean_batch_size": round(statistics.mean(batch), 2) if batch else None,
        "wall_s": round(wall, 2),
    }


def run_mode(root: Path, profile: Path, batching: bool, levels: list[int], n: int, gpu: bool) -> dict:
    raw = yaml.safe_load(profile.read_text())
    raw["serve"]["batching"] = batching
    if gpu:
        raw["resources"]["use_gpu"] = True
    mode_profile = root / f"profile-{'batch' if batching else 'nobatch'}.yaml"
    mode_profile.write_text(yaml.safe_dump(raw, sort_keys=False))
    token = secrets.token_hex(32)  # the service refuses tokens under 32 characters
    port = free_port()
    # Generous queues: the benchmark measures latency, not rejection.
    config = write_serve_config(root / f"serve-{batching}.yaml", mode_profile, port,
                                generator={"max_ongoing_requests": 16, "max_queued_requests": 256})
    log = root / f"serve-{batching}.log"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}
    proc = start_serve(config, serve_env(token), log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, base, headers, log, timeout_s=400)
        from augment.data.nih import load_index

        index = load_index(root / "references")
        body = index.path(index.healthy()[0]).read_bytes()
        out = []
        for c in levels:
            res = asyncio.run(_level(base, headers, body, c, n, "Nodule"))
            print(f"batching={batching} concurrency={c}: p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms, "
                  f"{res['throughput_rps']} req/s, mean batch {res['mean_batch_size']}, status {res['status']}", flush=True)
            out.append(res)
        return {"batching": batching, "levels": out}
    finally:
        stop_serve(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny models instead of configs/local.yaml sizes")
    ap.add_argument("--gpu", action="store_true", help="a GPU Generator replica (resources.use_gpu)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serve.json"))
    args = ap.parse_args(argv)
    machine = _machine()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        if args.tiny:
            profile = build_tiny_setup(root)
            models = "tests' tiny models: EfficientNet-B0 at 32 px, [8, 16] UNet at 32 px crops, 2 steps, Demons 8 iterations at 64 px"
        else:
            profile = build_tiny_setup(root, work_size=128, crop_size=64, n_images=32, classifier_side=128,
                                       block_out_channels=(32, 64, 64), steps=10, iterations=50)
            raw = yaml.safe_load(profile.read_text())
            raw["inpainting"]["guidance"] = 1.5
            raw["registration"].update({"pyramid_levels": 2, "prealign": "similarity"})
            raw["resources"]["torch_threads"] = 2
            profile.write_text(yaml.safe_dump(raw, sort_keys=False))
            models = ("configs/local.yaml sizes, random weights: EfficientNet-B0 at 128 px, [32, 64, 64] UNet at 64 px crops, "
                      "10 Euler steps, guidance 1.5; Demons 50 iterations, 2 levels, similarity pre-alignment, at 128 px")
        t0 = time.time()
        modes = [run_mode(root, profile, b, args.concurrency, args.requests, args.gpu) for b in (True, False)]
    result = {
        "benchmark": "POST /v1/generate over HTTP (serve run on 127.0.0.1), one Generator replica",
        "command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv if argv is not None else sys.argv[1:])]),
        "machine": {**machine, "load_1min_after": round(os.getloadavg()[0], 2)},
        "models": models,
        "image": "128x128 8-bit PNG" if not args.tiny else "64x64 8-bit PNG",
        "requests_per_level": args.requests,
        "max_batch_size": 8,
        "batch_wait_timeout_s": 0.01,
        "modes": modes,
        "seconds": round(time.time() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
