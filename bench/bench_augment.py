"""The augmentation job: Ray Data against a plain in-process loop over the same plan.

    python bench/bench_augment.py --config configs/local.yaml \\
        --classifier runs/local/classifier/classifier.pt --generator runs/local/generator/generator.pt
    python bench/bench_augment.py --config configs/nih-sample.yaml --classifier ... --generator ...

Both sides run :func:`jobs.augment.run_augment` on the same plan, the same models and the
same references, into fresh pools: once with ``use_ray=False`` (register -> inpaint -> gate
-> write, one batch at a time, in this process, torch on all cores) and once as the Ray Data
job (actor pools from the config). Each side's time runs from the call to the finished pool
(provenance table written), so model loading and, for Ray, starting the local Ray and its
actors are inside it. The ratio of the Ray job's throughput to the loop's is the figure the
issue asks for (goal: >= 0.8 on 2 cores). ``--actors N`` adds runs with N actors per pool.

Also reports: accepted synthetic images per second, the loop's time share per stage
(register / inpaint / gate / write), and peak memory as the largest sum of resident set sizes
over this process and all its descendants (Ray's GCS, raylet and workers included; shared
pages are counted once per process, so this is an upper bound), sampled every 0.2 s.

Writes ``bench/results/augment-<profile>.json``. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_classifier import _machine  # noqa: E402


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        out: list[int] = []
        for t in tasks:
            txt = (t / "children").read_text().split()
            out += [int(c) for c in txt]
        return out
    except OSError:
        return []


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_gib(root: int) -> float:
    """Sum of VmRSS over ``root`` and all its descendants, GiB."""
    seen, stack, total = set(), [root], 0
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _rss_kib(pid)
        stack += _children(pid)
    return total / 2**20


class PeakMemory:
    """Samples :func:`tree_rss_gib` of this process in a thread; ``peak`` in GiB."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.peak, self._stop = every_s, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_gib(os.getpid()))
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def result_header(script: str, argv: list[str] | None, profile: str, load_before: tuple[float, ...]) -> dict:
    """What every result file of these benches starts with: machine, command, profile, load."""
    return {
        "machine": _machine(),
        "command": f"python bench/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": profile,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(out: Path, result: dict) -> None:
    """Write the result JSON atomically (a temporary file, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)


def run_side(cfg, train, classifier: str, generator: str, bank, use_ray: bool, out: Path, warm: bool = False) -> dict:
    """One run into a fresh pool. ``warm``: Ray is started before the clock (as in the pipeline,
    which starts it once for all stages), so only the job's own actors and streaming are timed."""
    import ray

    from jobs.augment import run_augment
    from jobs.ray_utils import init_ray

    if out.exists():
        shutil.rmtree(out)
    acfg = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"output": str(out)})})
    if use_ray and warm:
        init_ray(acfg)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        res = run_augment(acfg, train, classifier, generator, use_ray=use_ray, bank=bank)
        wall = time.perf_counter() - t0
    if use_ray:
        ray.shutdown()
    accepted = sum(d["accepted"] for d in res.summary.values())
    shares = {}
    if res.stage_seconds:
        tot = sum(res.stage_seconds.values())
        shares = {k: round(v / tot, 3) for k, v in res.stage_seconds.items()}
    return {
        "mode": ("ray, warm" if warm else "ray, cold start") if use_ray else "loop",
        "actors_per_pool": acfg.augment.inpaint_actors if use_ray else None,
        "items": res.processed,
        "accepted": accepted,
        "wall_s": round(wall, 1),
        "items_per_s": round(res.processed / wall, 3),
        "accepted_per_s": round(accepted / wall, 3),
        "stage_seconds": {k: round(v, 1) for k, v in res.stage_seconds.items()},
        "stage_shares": shares,
        "peak_rss_gib": round(mem.peak, 2),
        "summary": res.summary,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--classifier", required=True)
    p.add_argument("--generator", required=True)
    p.add_argument("--actors", type=int, nargs="*", default=[], help="extra Ray runs with this many actors per pool")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/augment-<profile>.json)")
    p.add_argument("--warm", action="store_true", help="also run the Ray job with Ray started before the clock")
    args = p.parse_args(argv)

    from augment.config import load_config
    from augment.data import prepare_data
    from jobs.augment import build_bank

    cfg = load_config(args.config, args.overrides)
    _, split = prepare_data(cfg)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    bank = build_bank(cfg, split.train, args.classifier)
    bank_s = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-augment-"))
    runs = []
    try:
        runs.append(run_side(cfg, split.train, args.classifier, args.generator, bank, False, work / "loop"))
        print(json.dumps(runs[-1]), flush=True)
        runs.append(run_side(cfg, split.train, args.classifier, args.generator, bank, True, work / "ray"))
        print(json.dumps(runs[-1]), flush=True)
        if args.warm:
            runs.append(run_side(cfg, split.train, args.classifier, args.generator, bank, True, work / "ray-warm", warm=True))
            print(json.dumps(runs[-1]), flush=True)
        for n in args.actors:
            a = cfg.augment.model_copy(update={"register_actors": n, "inpaint_actors": n, "gate_actors": n})
            runs.append(run_side(cfg.model_copy(update={"augment": a}), split.train, args.classifier, args.generator, bank, True, work / f"ray{n}"))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loop, ray_run = runs[0], runs[1]
    result = {
        **result_header("bench_augment.py", argv, cfg.name, load_before),
        "reference_bank_s": round(bank_s, 1),
        "runs": runs,
        "ray_over_loop_throughput": round(ray_run["items_per_s"] / loop["items_per_s"], 3) if loop["items_per_s"] else None,
        "ray_warm_over_loop_throughput": (
            round(runs[2]["items_per_s"] / loop["items_per_s"], 3) if args.warm and loop["items_per_s"] else None
        ),
        "goal": "ray_over_loop_throughput >= 0.8 on 2 cores",
    }
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"augment-{cfg.name}.json"
    write_result(out, result)
    print(json.dumps({k: result[k] for k in ("ray_over_loop_throughput", "load_avg_before", "load_avg_after")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
