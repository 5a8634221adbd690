"""Phantom radiographs beside real NIH ones: writes docs/images/phantom_vs_real.png.

    python bench/make_phantom_figure.py [--nih-sample ../shared/data/nih-sample] [--out docs/images/phantom_vs_real.png]

Top row: four real NIH ChestX-ray14 images (read-only, from the shared sample; they appear
only in this figure). Two rows of phantoms with the findings named above each, the masks
outlined in the last row. Bottom: the intensity histograms of 60 real and 60 phantom
images. The figure is deterministic for a seed; the renderer's time per image is printed.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from augment.data.io import read_image  # noqa: E402
from augment.data.phantom import render_phantom  # noqa: E402

SIZE = 256
REAL_LABELS = ("No Finding", "Cardiomegaly", "Effusion", "Pneumothorax")
PHANTOMS = [
    [],
    ["Cardiomegaly"],
    ["Effusion"],
    ["Pneumothorax"],
    ["Nodule"],
    ["Mass"],
    ["Consolidation"],
    ["Atelectasis", "Effusion"],
]


def _real_examples(root: Path) -> list[tuple[str, str]]:
    """One PA image per label in REAL_LABELS (the first in file order that has only it)."""
    with open(root / "Data_Entry_2017.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    out = []
    for label in REAL_LABELS:
        for r in rows:
            if r[1] == label and r[6] == "PA" and (root / "images" / r[0]).is_file():
                out.append((r[0], label))
                break
    return out


def make_figure(nih_sample: Path, out: Path, seed: int = 0) -> dict[str, float]:
    reals = _real_examples(nih_sample)
    t0 = time.perf_counter()
    phantoms = [render_phantom(np.random.default_rng([seed, i]), SIZE, f) for i, f in enumerate(PHANTOMS)]
    per_image = (time.perf_counter() - t0) / len(phantoms)

    fig = plt.figure(figsize=(10, 11.6), dpi=80)
    grid = fig.add_gridspec(4, 4, height_ratios=[1, 1, 1, 0.62], hspace=0.18, wspace=0.04)
    for j, (name, label) in enumerate(reals):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(read_image(nih_sample / "images" / name, SIZE), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"real NIH: {label}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.set_ylabel("real (NIH ChestX-ray14)", fontsize=9)
        else:
            ax.axis("off")
    for k, ph in enumerate(phantoms):
        ax = fig.add_subplot(grid[1 + k // 4, k % 4])
        ax.imshow(ph.image, cmap="gray", vmin=0, vmax=1)
        if k >= 4:  # outline the ground truth in the second phantom row
            for m in ph.masks.values():
                ax.contour(m, levels=[0.5], colors="#ff5a36", linewidths=0.6)
        ax.set_title("phantom: " + (" + ".join(ph.findings) or "No Finding"), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if k % 4 == 0:
            ax.set_ylabel("phantom" if k < 4 else "phantom, mask outlined", fontsize=9)
        else:
            ax.axis("off")

    # Intensity histograms over more images than shown.
    with open(nih_sample / "Data_Entry_2017.csv", newline="") as fh:
        names = [r[0] for r in list(csv.reader(fh))[1:] if (nih_sample / "images" / r[0]).is_file()]
    picked = [names[i] for i in np.random.default_rng(seed).choice(len(names), size=min(60, len(names)), replace=False)]
    real_px = np.concatenate([read_image(nih_sample / "images" / n, 128).ravel() for n in picked])
    rng = np.random.default_rng([seed, 99])
    choices = [[], ["Cardiomegaly"], ["Effusion"], ["Nodule"], ["Consolidation"], ["Atelectasis"]]
    ph_px = np.concatenate([
        render_phantom(rng, 128, choices[i % len(choices)]).image.ravel() for i in range(60)
    ])
    ax = fig.add_subplot(grid[3, :])
    bins = np.linspace(0, 1, 65)
    ax.hist(real_px, bins=bins, density=True, histtype="step", lw=1.6, color="#1f5fa8", label="60 real NIH images")
    ax.hist(ph_px, bins=bins, density=True, histtype="step", lw=1.6, color="#d1495b", label="60 phantoms")
    ax.set_xlabel("pixel intensity")
    ax.set_ylabel("density")
    ax.set_title(
        f"intensity histograms at 128x128 (median: real {np.median(real_px):.2f}, phantom {np.median(ph_px):.2f})",
        fontsize=9,
    )
    ax.legend(fontsize=8, frameon=False)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    return {"ms_per_image": 1000 * per_image, "bytes": out.stat().st_size,
            "real_median": float(np.median(real_px)), "phantom_median": float(np.median(ph_px))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nih-sample", type=Path, default=REPO.parent / "shared" / "data" / "nih-sample")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "phantom_vs_real.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not (args.nih_sample / "Data_Entry_2017.csv").is_file():
        print(f"no NIH sample at {args.nih_sample}; pass --nih-sample PATH", file=sys.stderr)
        return 2
    stats = make_figure(args.nih_sample, args.out, args.seed)
    print(f"wrote {args.out} ({stats['bytes'] / 1024:.0f} KiB); {stats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
