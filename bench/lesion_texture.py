"""What a generator does to the lesion it paints, against its healthy source, pool by pool.

For every accepted image of a ``jobs.augment`` pool, inside its painted region (``masks/``):
the difference synthetic minus source (both read at the pool image's size, in [0, 1]) and

- ``lift``: its mean (how much brighter the region became);
- ``lift_p95``: its 95th percentile (the lesion's peak);
- ``gradient``: the mean gradient magnitude of the difference (edges and texture added);
- ``detail``: the mean absolute difference minus its 2-px Gaussian blur (fine texture added).

Copy-paste moves a real lesion unchanged, so its figures are the reference: a generator that
keeps the lesion's lift and peak but adds gradient and detail paints texture over it. Medians
per pool and finding, printed and written as JSON::

    python bench/lesion_texture.py --data runs/longtail/data/phantom-<id> \\
        --pool copy-paste=runs/longtail/pools/copy-paste --pool flow=runs/longtail/augmented/<id> \\
        --out bench/results/lesion_texture-longtail.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, sobel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment.data.io import read_image  # noqa: E402
from augment.data.nih import load_index  # noqa: E402
from augment.evaluation.report import read_provenance  # noqa: E402

MEASURES = ("lift", "lift_p95", "gradient", "detail")


def measures(syn: np.ndarray, src: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The four figures of one image; ``mask`` is boolean, the arrays of one shape in [0, 1]."""
    d = syn.astype(np.float64) - src.astype(np.float64)
    grad = np.hypot(sobel(d, 0), sobel(d, 1)) / 8.0  # Sobel's kernel sums to 8: a per-pixel slope
    fine = np.abs(d - gaussian_filter(d, 2.0))
    inside = d[mask]
    return {"lift": float(inside.mean()), "lift_p95": float(np.percentile(inside, 95)),
            "gradient": float(grad[mask].mean()), "detail": float(fine[mask].mean())}


def pool_measures(data_root: str | Path, pool: str | Path) -> dict[str, list[dict[str, float]]]:
    """finding -> the figures of every accepted image of ``pool`` whose source is in ``data_root``."""
    data, pool = load_index(data_root), Path(pool)
    by_name = {r.image_index: r for r in data.records}
    out: dict[str, list[dict[str, float]]] = {}
    for name, row in sorted(read_provenance(pool).items()):
        img = pool / "images" / name
        if not row.accepted or not img.is_file() or row.source not in by_name:
            continue
        syn = read_image(img)
        src = read_image(data.path(by_name[row.source]), size=syn.shape[0])
        mask = read_image(pool / "masks" / name, size=syn.shape[0]) > 0.5
        if mask.any():
            out.setdefault(row.finding, []).append(measures(syn, src, mask))
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    return {"n": len(rows), **{k: round(float(np.median([r[k] for r in rows])), 4) for k in MEASURES}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="the real data the pools were painted on (NIH layout)")
    ap.add_argument("--pool", action="append", required=True, metavar="NAME=DIR", help="a jobs.augment pool; repeat")
    ap.add_argument("--out", help="write the medians here as JSON")
    args = ap.parse_args(argv)
    report: dict[str, dict[str, dict[str, float]]] = {}
    for item in args.pool:
        name, sep, root = item.partition("=")
        if not sep or not root:
            ap.error(f"--pool takes NAME=DIR, got {item!r}")
        if not (Path(root) / "provenance.csv").is_file():
            ap.error(f"--pool {name}: {root} has no provenance.csv; give a jobs.augment pool")
        report[name] = {f: summarise(rows) for f, rows in sorted(pool_measures(args.data, root).items())}
    print(f"{'pool':<12} {'finding':<13} {'n':>3} " + " ".join(f"{m:>9}" for m in MEASURES))
    for name, per in report.items():
        for f, s in per.items():
            print(f"{name:<12} {f:<13} {s['n']:>3} " + " ".join(f"{s[m]:>9.4f}" for m in MEASURES))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
