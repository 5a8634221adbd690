"""How well Grad-CAM of our classifier finds known lesions.

- Phantom set (ground truth known): per finding, mean IoU of the Grad-CAM mask
  (``to_mask`` with the profile's threshold and areas) with the true lesion mask, and the
  pointing-game hit rate, on the test split's positive images.
- NIH sample (``../shared/data/nih-sample``): pointing game on its 9 NIH boxes.

Each classifier is EfficientNet trained here from scratch with the plain loop (no Ray).

    python bench/bench_localization.py                    # B0 at 128 px, 8 epochs each
    python bench/bench_localization.py --epochs 3 --skip-nih

Writes ``bench/results/localization.json``. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from augment.attention import BBoxSource, GradCAMSource, PhantomMaskSource, mask_iou, pointing_hits, to_mask  # noqa: E402
from augment.classifier import build_classifier, fit, make_loader  # noqa: E402
from augment.config import RunConfig, load_config  # noqa: E402
from augment.data import prepare_data  # noqa: E402
from augment.data.dataset import NIHImageDataset  # noqa: E402
from augment.data.nih import NIHIndex, load_index  # noqa: E402
from augment.data.splits import split_index  # noqa: E402


def _train(cfg: RunConfig, train: NIHIndex, val: NIHIndex) -> tuple[torch.nn.Module, dict]:
    c = cfg.classifier
    torch.manual_seed(c.seed)
    model = build_classifier(c)
    t0 = time.perf_counter()
    res = fit(model, make_loader(train, c, shuffle=True), make_loader(val, c, shuffle=False), c, device=torch.device("cpu"))
    info = {
        "arch": c.arch, "image_size": c.image_size, "epochs": c.epochs, "lr": c.lr,
        "train_images": len(train), "val_images": len(val), "train_seconds": round(time.perf_counter() - t0, 1),
        "val_macro_auc": res.metrics.macro_auc, "final_loss_gap": res.history[-1].loss_gap,
    }
    return model.eval(), info


def _images(index: NIHIndex, names: list[str], size: int) -> torch.Tensor:
    ds = NIHImageDataset(index.subset(names), size)
    order = {r.image_index: i for i, r in enumerate(ds.index.records)}
    return torch.stack([ds.image(order[n]) for n in names])


def phantom_localization(cfg: RunConfig, layers: list[str]) -> dict:
    index, split = prepare_data(cfg)
    model, info = _train(cfg, split.train, split.val)
    truth = PhantomMaskSource(index.root)
    size = cfg.data.image_size
    a = cfg.attention
    out: dict = {"classifier": info, "attention": a.model_dump(), "per_layer": {}}
    for layer in layers:
        cam = GradCAMSource(model, a.gradcam_variant, layer)
        per: dict = {}
        for finding in sorted({f for r in split.test.records for f in r.labels if f != "No Finding"}):
            names = [r.image_index for r in split.test.records if finding in r.labels]
            x = _images(split.test, names, size)
            maps = cam.finding_map(x, finding)
            true = truth.finding_map(x, finding, names) > 0.5
            pred = to_mask(maps, a.threshold, a.min_area, a.max_area)
            iou = mask_iou(pred, true).nan_to_num(0.0)
            per[finding] = {
                "n": len(names),
                "mean_iou": round(float(iou.mean()), 3),
                "pointing_hit_rate": round(float(pointing_hits(maps, true).float().mean()), 3),
                "empty_masks": int((pred.flatten(1).sum(1) == 0).sum()),
            }
        out["per_layer"][layer] = per
    return out


def nih_pointing(cfg: RunConfig, root: Path, layers: list[str]) -> dict:
    index = load_index(root)
    s = cfg.data.split
    split = split_index(index, s.val_fraction, s.test_fraction, s.seed, s.use_official_lists)
    model, info = _train(cfg, split.train, split.val)
    boxes = BBoxSource(index)
    size = cfg.data.image_size
    names = sorted(index.bboxes)
    out: dict = {"classifier": info, "boxes": len(names), "per_layer": {}}
    in_train = sum(n in {r.image_index for r in split.train.records} for n in names)
    out["boxed_images_in_training_split"] = in_train
    x = _images(index, names, size)
    for layer in layers:
        cam = GradCAMSource(model, cfg.attention.gradcam_variant, layer)
        rows = []
        for i, name in enumerate(names):
            for b in index.bboxes[name]:
                m = cam.finding_map(x[i : i + 1], b.finding)
                t = boxes.finding_map(x[i : i + 1], b.finding, [name]) > 0.5
                tol = max(1, round(15 * size / 224))  # the pointing game's 15 px at 224
                rows.append({
                    "image": name, "finding": b.finding,
                    "hit": bool(pointing_hits(m, t)[0]), "hit_tolerance": bool(pointing_hits(m, t, tol)[0]),
                    "box_area": round(float(t.float().mean()), 3),
                })
        out["per_layer"][layer] = {
            "hit_rate": round(float(np.mean([r["hit"] for r in rows])), 3),
            "hit_rate_tolerance": round(float(np.mean([r["hit_tolerance"] for r in rows])), 3),
            "mean_box_area": round(float(np.mean([r["box_area"] for r in rows])), 3),
            "boxes": rows,
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--arch", default="efficientnet-b0")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", nargs="+", default=["head", "stride16"])
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    p.add_argument("--skip-phantom", action="store_true")
    p.add_argument("--skip-nih", action="store_true")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "localization.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"classifier.epochs={args.epochs}", f"classifier.arch={args.arch}",
                                    f"classifier.lr={args.lr}", "tracking.enabled=false"])
    result: dict = {"command": " ".join([Path(sys.executable).name] + sys.argv), "load_avg_before": os.getloadavg()}
    if not args.skip_phantom:
        result["phantom"] = phantom_localization(cfg, args.layers)
        print(json.dumps(result["phantom"]["per_layer"], indent=1), flush=True)
    nih = REPO.parent / "shared" / "data" / "nih-sample"
    if not args.skip_nih and nih.is_dir():
        result["nih_sample"] = nih_pointing(cfg, nih, args.layers)
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "boxes"} for k, v in result["nih_sample"]["per_layer"].items()}), flush=True)
    result["load_avg_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
