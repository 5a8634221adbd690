"""What the input quality filter drops on a folder of good images (issue 19, item 3).

::

    python bench/input_filter_check.py --data ../shared/data/nih-sample --out bench/results/input-filter-nih-sample.json
    python bench/input_filter_check.py --phantom 240 --out bench/results/input-filter-phantom.json

Scores every image of an NIH-layout folder (or of a freshly generated phantom set, written
under a temporary folder) with the default ``input_filter`` section, prints the counts per
reason, the score ranges, the dropped images and writes a grid of them next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment.config import load_config  # noqa: E402
from augment.data import load_index  # noqa: E402
from augment.data.input_filter import filter_index  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="NIH-layout folder")
    src.add_argument("--phantom", type=int, metavar="N", help="generate N phantoms (256x256) in a temporary folder")
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="JSON result; the grid of dropped images goes beside it (.png)")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        if args.phantom:
            from augment.data.phantom import generate_phantom

            root = Path(tmp) / "phantom"
            generate_phantom(cfg.data.phantom.model_copy(update={"n_images": args.phantom}), root)
        else:
            root = Path(args.data)
        index = load_index(root)
        t0 = time.perf_counter()
        res = filter_index(index, index.records, cfg.input_filter)
        secs = time.perf_counter() - t0
    pct = {k: [round(float(q), 4) for q in np.nanpercentile(v, [0, 1, 50, 99, 100])] for k, v in res.scores.items()
           if np.isfinite(v).any()}
    out = {
        "data": str(args.data or f"phantom x{args.phantom}"),
        "filter": cfg.input_filter.model_dump(mode="json"),
        "summary": res.summary(),
        "dropped_fraction": round(len(res.dropped) / max(1, len(res.ids)), 4),
        "population_checked": res.population_checked,
        "seconds": round(secs, 2),
        "score_percentiles_0_1_50_99_100": pct,
        "dropped": {k: list(v) for k, v in res.dropped.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("data", "summary", "dropped_fraction", "seconds")}))
    for k, v in res.dropped.items():
        i = res.ids.index(k)
        print(f"  dropped {k}: {','.join(v)} " + " ".join(f"{m}={res.scores[m][i]:.3f}" for m in
              ("std", "saturated", "symmetry_lr", "symmetry_ud", "band_contrast", "template_corr", "rotated_corr", "exposure_z", "outlier_z")))
    if res.thumbnails:
        from augment.evaluation.plots import image_grid, save_figure

        save_figure(image_grid(list(res.thumbnails.values()), [f"{res.reason(k)} {k[:14]}" for k in res.thumbnails]),
                    Path(args.out).with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
