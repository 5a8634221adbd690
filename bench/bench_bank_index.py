"""Benchmark: a gate actor's start-up with the near-copy bank as an index (issue 19).

Writes synthetic training folders (NIH layout, small grayscale PNGs) of each size, builds
the bank's index once per folder, and measures in fresh subprocesses (one per measurement,
so each peak RSS is that process's own):

* ``build``: :func:`build_bank_index` over the folder (once per run; reads every image);
* ``gate-none``: a gate actor without a bank (torch + the classifier): the baseline;
* ``gate-index``: ``GateStep(cfg, classifier, index)``: maps the index, reads no image;
* ``gate-images``: the old start-up, ``GateStep(cfg, classifier, train_index)``: reads every
  training image and embeds it with the classifier (only at the ``--old-sizes``);

each with its start-up seconds, peak RSS (``ru_maxrss``) and, after one gate batch of 8
items, the resident memory split into private (``RssAnon``) and file-backed pages
(``RssFile``: the mapped index, shared by every actor on the machine through the page cache).

    nice -n 10 python bench/bench_bank_index.py --sizes 500 50000 --old-sizes 500 2000

Results go to ``bench/results/bank-index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cfg(work: Path, image_size: int, thumb: int):
    from augment.config import load_config

    return load_config(REPO / "configs" / "local.yaml", [
        f"output_dir={work}/runs", "data.source=nih", f"data.root={work}", f"data.image_size={image_size}",
        "classifier.arch=efficientnet-b0", f"classifier.image_size={image_size}", f"quality.bank_image_size={thumb}",
        "resources.torch_threads=1", f"tracking.uri=sqlite:///{work}/mlflow.db",
    ])


def write_folder(root: Path, n: int, size: int, seed: int = 0) -> float:
    """n synthetic 'radiographs' (gradient + two blobs + noise), two per patient, in NIH layout."""
    from PIL import Image

    from augment.data.nih import DATA_ENTRY_HEADER

    if (root / "Data_Entry_2017.csv").is_file():
        return 0.0
    t0 = time.perf_counter()
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    lines = [",".join(DATA_ENTRY_HEADER)]
    for a in range(0, n, 1000):
        b = min(n, a + 1000)
        k = b - a
        c = rng.uniform(0, 1, (k, 8))
        img = 0.25 + 0.3 * (c[:, 0, None, None] * xx + c[:, 1, None, None] * yy)
        for j in (2, 5):
            cy, cx, r = c[:, j, None, None], c[:, j + 1, None, None], 0.05 + 0.15 * c[:, j + 2, None, None]
            img = img + 0.3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        img = img + 0.04 * rng.standard_normal((k, size, size))
        px = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
        for i in range(k):
            name = f"{(a + i) // 2:08d}_{(a + i) % 2:03d}.png"
            Image.fromarray(px[i]).save(root / "images" / name)
            lines.append(f"{name},No Finding,0,{(a + i) // 2 + 1},50,M,PA,{size},{size},0.143,0.143")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return time.perf_counter() - t0


def _status() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[k] = int(v.split()[0]) / 1024  # MiB
    return out


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)  # as a gate actor does (resources.torch_threads)
    work = Path(args.work)
    cfg = _cfg(work, args.image_size, args.thumb)
    before = _peak_mib()
    if args.child == "build":
        from augment.data.nih import load_index
        from augment.quality.bank_index import BankIndexSpec, build_bank_index

        index = load_index(work)
        t0 = time.perf_counter()
        info = build_bank_index(index, args.index, BankIndexSpec.from_config(cfg), progress=False)
        return {"seconds": time.perf_counter() - t0, "peak_rss_mib": _peak_mib(), "count": info.count,
                "index_mib": info.nbytes / 2**20, "encoder_fit_s": (info.encoder or {}).get("fit_seconds")}
    from augment.synthesis.steps import GateStep

    bank_arg = None
    if args.child == "gate-index":
        bank_arg = args.index
    elif args.child == "gate-images":
        from augment.data.nih import load_index

        bank_arg = load_index(work)
    t0 = time.perf_counter()
    step = GateStep(cfg, args.classifier, bank_arg)
    start_s = time.perf_counter() - t0
    peak_start = _peak_mib()
    at_start = _status()
    # one gate batch of 8 items: sources and paintings of the first images
    s = args.image_size
    rng = np.random.default_rng(1)
    src = rng.uniform(0.2, 0.8, (8, s, s)).astype(np.float32)
    syn = src.copy()
    syn[:, s // 4 : s // 2, s // 4 : s // 2] = 0.9
    mask = np.zeros((8, s, s), np.uint8)
    mask[:, s // 4 : s // 2, s // 4 : s // 2] = 1
    batch = {"item_id": np.array([f"i{k}" for k in range(8)]), "finding": np.array(["Nodule"] * 8),
             "source": np.array([f"{k:08d}_000.png" for k in range(8)]), "status": np.array([""] * 8, dtype=object),
             "image": src, "synthetic": syn, "mask": mask}
    t1 = time.perf_counter()
    step(batch)
    return {"startup_s": start_s, "bank_s": step.bank_seconds, "peak_rss_mib": peak_start, "peak_rss_before_mib": before, "rss_at_start": at_start,
            "first_batch_s": time.perf_counter() - t1, "rss_after_batch": _status(), "peak_rss_after_batch_mib": _peak_mib(),
            "bank_rows": 0 if step.bank is None else len(step.bank)}


def run_child(kind: str, work: Path, args: argparse.Namespace, **extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--work", str(work), "--image-size", str(args.image_size),
           "--thumb", str(args.thumb), "--classifier", str(args.classifier)]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 50000])
    p.add_argument("--old-sizes", type=int, nargs="*", default=[500])
    p.add_argument("--image-size", type=int, default=64, help="training images' side (data.image_size)")
    p.add_argument("--thumb", type=int, default=32, help="thumbnail side (quality.bank_image_size)")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "bank-index.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--index", help=argparse.SUPPRESS)
    p.add_argument("--classifier", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    base = Path(args.work or tempfile.mkdtemp(prefix="bench-bank-index-"))
    import torch

    from augment.classifier import build_classifier
    from augment.classifier.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = _cfg(base, args.image_size, args.thumb)
    args.classifier = save_checkpoint(base / "classifier.pt", build_classifier(cfg.classifier, load_pretrained=False), cfg.classifier)
    results: dict = {"command": "nice -n 10 python bench/bench_bank_index.py " + " ".join(sys.argv[1:]),
                     "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                     "image_size": args.image_size, "thumbnail": args.thumb, "classifier": "efficientnet-b0 (untrained)",
                     "sizes": {}}
    for n in sorted(set(args.sizes) | set(args.old_sizes)):
        work = base / f"n{n}"
        wrote = write_folder(work, n, args.image_size)
        r: dict = {"write_pngs_s": wrote}
        print(f"[{n}] folder ready ({wrote:.1f} s)", flush=True)
        if n in args.sizes:
            r["build"] = run_child("build", work, args, index=work / "index")
            print(f"[{n}] build {r['build']}", flush=True)
            r["gate_none"] = run_child("gate-none", work, args)
            r["gate_index"] = run_child("gate-index", work, args, index=work / "index")
            print(f"[{n}] gate with index {r['gate_index']}", flush=True)
        if n in args.old_sizes:
            r["gate_images"] = run_child("gate-images", work, args)
            print(f"[{n}] gate reading images {r['gate_images']}", flush=True)
        results["sizes"][str(n)] = r
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
