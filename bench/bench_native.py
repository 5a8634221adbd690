"""Benchmark: the write step's per-item cost with native-resolution paste-back (issue 19).

The pool used to be written at the working resolution (``data.image_size``); now
:class:`augment.synthesis.steps.WriteStep` reads each item's source as stored and pastes
the painted region back into it (:func:`augment.synthesis.native.paste_native`). This
measures, per item, on batches like the job's (working size 128, the local profile):

* ``working``: the old write, the working-resolution image and mask through
  :meth:`PoolWriter.write_item` (8-bit PNGs of 128x128) and the item's record;
* ``phantom``: ``WriteStep`` on 256x256 8-bit phantom sources (the demo's data);
* ``nih-like-8bit``: ``WriteStep`` on 1024x1024 8-bit NIH-like sources (NIH's PNGs are 8-bit);
* ``nih-like-16bit``: ``WriteStep`` on 1024x1024 16-bit NIH-like sources;
* ``nih-sample``: ``WriteStep`` on the shared real NIH sample (radiographs stored downscaled
  to 256x256, 8-bit), when it is there;

and, for the native cases, the parts: reading the source (``read_raw``), the paste
(``paste_native``) and writing image, mask and record (``write_item``). Regions are discs of
``--areas`` (fractions of the image; the attention's bound ``attention.max_area`` is 0.25).
The issue's goal is about the whole per-item chain: ``--chain-seconds`` (default 1.059 s, the
plain loop's measured per-item time of the local profile, docs/benchmarks.md "Augmentation
job and pipeline") plus the extra write cost, over the chain: at most 1.5.

    nice -n 10 python bench/bench_native.py          # bench/results/native.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORK = 128
NIH_SAMPLE = Path(os.environ.get("CXR_SHARED", REPO.parent / "shared")) / "data" / "nih-sample"  # as tests/shared_paths.py
CHAIN_SECONDS = 1.059  # plain loop, local profile (128 px), 115 items in 121.8 s: docs/benchmarks.md


def _nih_like_16bit(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 0.55 + 0.25 * np.exp(-((xx - 0.5) ** 2) / 0.08)
    lungs = 0.25 * (np.exp(-(((xx - 0.3) / 0.12) ** 2 + ((yy - 0.45) / 0.25) ** 2))
                    + np.exp(-(((xx - 0.7) / 0.12) ** 2 + ((yy - 0.45) / 0.25) ** 2)))
    arr = np.clip(body - lungs + 0.02 * rng.standard_normal((size, size)), 0, 1)
    return np.round(arr * 65535).astype(np.uint16)


def make_sources(root: Path, kind: str, n: int) -> list[str]:
    """n source PNGs in NIH layout under root; returns their names."""
    from augment.data.io import encode_png, encode_png_pixels
    from augment.data.nih import DATA_ENTRY_HEADER

    (root / "images").mkdir(parents=True, exist_ok=True)
    names, lines = [], [",".join(DATA_ENTRY_HEADER)]
    if kind == "nih":
        files = sorted((NIH_SAMPLE / "images").glob("*.png"))[:n]
        for i, f in enumerate(files):
            (root / "images" / f.name).write_bytes(f.read_bytes())
            names.append(f.name)
    for i in range(n - len(names)):
        name = f"{i + 1:08d}_000.png"
        if kind == "phantom":
            from augment.data.phantom import render_phantom

            data = encode_png(render_phantom(np.random.default_rng(i), 256, []).image)
        elif kind == "nih8":
            data = encode_png_pixels((_nih_like_16bit(1024, i) >> 8).astype(np.uint8))
        else:
            data = encode_png_pixels(_nih_like_16bit(1024, i))
        (root / "images" / name).write_bytes(data)
        names.append(name)
    for i, name in enumerate(names):
        lines.append(f"{name},No Finding,0,{i + 1},50,F,PA,,,,")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return names


def make_batch(index, names: list[str], area: float, seed: int = 0) -> dict:
    """A write step's input batch: the sources at 128 px, a disc of ``area`` painted brighter."""
    from augment.data.io import read_image

    rng = np.random.default_rng(seed)
    n = len(names)
    image = np.stack([read_image(index.path(s), WORK) for s in names])
    yy, xx = np.mgrid[0:WORK, 0:WORK]
    r = np.sqrt(area * WORK * WORK / np.pi)
    masks, syn = [], []
    for i in range(n):
        cy, cx = rng.uniform(r + 2, WORK - r - 2, 2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        masks.append(m.astype(np.uint8))
        syn.append(np.where(m, np.clip(image[i] + 0.2 + 0.02 * rng.standard_normal((WORK, WORK)), 0, 1), image[i]))
    return {
        "item_id": np.array([f"Mass-{i:05d}-bench" for i in range(n)]),
        "finding": np.array(["Mass"] * n),
        "source": np.array(names),
        "source_patient": np.arange(1, n + 1),
        "seed": np.arange(n),
        "output_name": np.array([f"syn_mass_{i:05d}_{s}" for i, s in enumerate(names)]),
        "image": image,
        "synthetic": np.stack(syn).astype(np.float32),
        "mask": np.stack(masks),
        "reference": np.array(["ref.png"] * n, dtype=object),
        "registration_ncc": np.full(n, 0.9, np.float32),
        "status": np.array([""] * n, dtype=object),
        "prob_before": np.full(n, 0.1, np.float32),
        "prob_after": np.full(n, 0.6, np.float32),
        "accepted": np.ones(n, bool),
        "reason": np.array(["accepted"] * n, dtype=object),
    }


def time_working(pool: str, batch: dict) -> float:
    """Seconds per item of the old write: the working-resolution image and mask, the record."""
    from augment.synthesis.pool import PoolWriter, ProvenanceRow

    w = PoolWriter(pool)
    n = len(batch["item_id"])
    t0 = time.perf_counter()
    for i in range(n):
        m = batch["mask"][i]
        row = ProvenanceRow(
            item_id=str(batch["item_id"][i]), image=str(batch["output_name"][i]), finding="Mass",
            source=str(batch["source"][i]), source_patient=int(batch["source_patient"][i]), reference="ref.png",
            mask=str(batch["output_name"][i]), mask_area=float(m.mean()), prob_before=0.1, prob_after=0.6,
            accepted=True, reason="accepted", registration_ncc=0.9, generator_run="bench", seed=i,
        )
        w.write_item(row, batch["synthetic"][i], m)
    return (time.perf_counter() - t0) / n


def time_native(pool: str, index, batch: dict) -> dict[str, float]:
    """Seconds per item of WriteStep (whole), and of its parts measured apart."""
    from augment.synthesis.native import paste_native
    from augment.synthesis.steps import WriteStep
    from augment.data.io import read_raw

    n = len(batch["item_id"])
    step = WriteStep(pool, "bench", index)
    t0 = time.perf_counter()
    out = step(batch)
    whole = (time.perf_counter() - t0) / n
    assert bool(np.all(out["accepted"])), "every item should stay accepted"
    t_read = t_paste = 0.0
    raws = []
    for s in batch["source"]:
        t0 = time.perf_counter()
        raws.append(read_raw(index.path(str(s))))
        t_read += time.perf_counter() - t0
    for i, raw in enumerate(raws):
        t0 = time.perf_counter()
        paste_native(raw.pixels, batch["synthetic"][i], batch["mask"][i], working_source=batch["image"][i])
        t_paste += time.perf_counter() - t0
    return {"write_step": whole, "read_source": t_read / n, "paste": t_paste / n,
            "encode_and_write": whole - (t_read + t_paste) / n, "bits": raws[0].bits,
            "size": list(raws[0].pixels.shape)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=24, help="items per case (one batch)")
    p.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported")
    p.add_argument("--areas", type=float, nargs="+", default=[0.03, 0.25], help="region area, fraction of the image")
    p.add_argument("--chain-seconds", type=float, default=CHAIN_SECONDS,
                   help="the whole chain's per-item seconds at the working resolution (measured elsewhere)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "native.json"))
    args = p.parse_args(argv)

    import torch

    from augment.data.nih import load_index

    kinds = ["phantom", "nih8", "nih16"] + (["nih"] if (NIH_SAMPLE / "images").is_dir() else [])
    labels = {"phantom": "phantom", "nih8": "nih-like-8bit", "nih16": "nih-like-16bit", "nih": "nih-sample"}
    results: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                 "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                                 "load_before": os.getloadavg()},
                     "working_size": WORK, "items": args.items, "repeats": args.repeats,
                     "chain_seconds": args.chain_seconds, "cases": []}
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:  # the repo's disk, as a pool would be
        tmp = Path(tmp)
        for kind in kinds:
            names = make_sources(tmp / f"src-{kind}", kind, args.items)
            index = load_index(tmp / f"src-{kind}")
            for area in args.areas:
                batch = make_batch(index, names, area)
                work_runs, native_runs = [], []
                for r in range(args.repeats):
                    work_runs.append(time_working(str(tmp / f"pool-w-{kind}-{area}-{r}"), batch))
                    native_runs.append(time_native(str(tmp / f"pool-n-{kind}-{area}-{r}"), index, batch))
                med = {k: statistics.median(x[k] for x in native_runs)
                       for k in ("write_step", "read_source", "paste", "encode_and_write")}
                working = statistics.median(work_runs)
                chain_native = args.chain_seconds - working + med["write_step"]
                case = {"case": labels[kind], "source_size": native_runs[0]["size"], "bits": native_runs[0]["bits"],
                        "area": area, "working_write_s": working, **{f"native_{k}_s": v for k, v in med.items()},
                        "write_ratio": med["write_step"] / working,
                        "chain_ratio": chain_native / args.chain_seconds}
                results["cases"].append(case)
                print(f"{case['case']:>14} {case['source_size'][0]}x{case['source_size'][1]} {case['bits']:2d}-bit "
                      f"area {area:.2f}: working write {1e3 * working:6.1f} ms, native write "
                      f"{1e3 * med['write_step']:6.1f} ms (read {1e3 * med['read_source']:5.1f}, paste "
                      f"{1e3 * med['paste']:5.1f}, encode+write {1e3 * med['encode_and_write']:6.1f}); "
                      f"write x{case['write_ratio']:.1f}, whole chain x{case['chain_ratio']:.3f}")
    results["machine"]["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
