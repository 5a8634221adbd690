"""Controls that show the gate's verifier means something, per finding.

On the augment job's own plan (same sources, references, carried regions and seeds) each
arm paints every item, and the local finding verifier judges it exactly as the gate does
(its probability on the painted crop passes the finding's validation threshold and rose over
the source's crop):

* ``positive``: the reference's real lesion added at the carried place with its own shape
  (:func:`augment.registration.lesion.carry_lesion`, no generator): should pass (>= 80%);
* ``noise``: the region filled with noise matched to its surroundings: should fail (<= 10%);
* ``label``: the flow model conditioned on "No Finding" with the flow arm's coupling: should
  fail, and says whether the finding conditioning changes what is painted;
* ``label-noise``: the same from pure noise (``inpainting.coupling: noise``);
* ``flow``: the flow model as the augment job paints (``inpainting.coupling``, ``coupling_t0``);
* ``flow-noise``: the flow model inventing the lesion from noise;
* ``vae``, ``lsgan``: the baselines, when their checkpoints are given.

Usage (after ``make demo``; the checkpoints it publishes are the defaults)::

    python bench/gate_controls.py --config configs/local.yaml
    python bench/gate_controls.py --config configs/local.yaml --vae runs/local/generator-vae/generator.pt \
        --lsgan runs/local/generator-lsgan/generator.pt

Writes ``bench/results/gate_controls-<profile>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from augment.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--generator", help="flow checkpoint (default <output_dir>/generator/generator.pt)")
    p.add_argument("--verifier", help="verifier checkpoint (default <output_dir>/verifier/verifier.pt)")
    p.add_argument("--vae")
    p.add_argument("--lsgan")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from augment.synthesis.plan import plan_augmentation
    from augment.synthesis.steps import InpaintStep, RegisterStep, items_to_batches
    from augment.data import prepare_data
    from augment.inpainting import findings_tensor
    from augment.quality.verifier import fill, load_verifier
    from jobs.augment import build_bank, filter_inputs

    cfg = load_config(args.config, args.overrides)
    out_dir = Path(cfg.output_dir)
    generator = args.generator or str(out_dir / "generator" / "generator.pt")
    verifier = load_verifier(args.verifier or out_dir / "verifier" / "verifier.pt")
    t_start = time.perf_counter()
    _, split = prepare_data(cfg)
    plan_index, ref_index, _ = filter_inputs(cfg, split.train)
    plan = plan_augmentation(plan_index, list(cfg.augment.findings), cfg.augment.target_count,
                             cfg.augment.max_per_finding, cfg.augment.seed, generator="controls")
    bank = build_bank(cfg, ref_index, str(out_dir / "classifier" / "classifier.pt"))
    batches = [RegisterStep(cfg, split.train, bank)(b) for b in items_to_batches(plan, cfg.augment.batch_size)]
    cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    ok = cat["status"] == ""
    src = torch.from_numpy(cat["image"][ok])[:, None]
    masks = torch.from_numpy(cat["mask"][ok].astype(np.float32))[:, None]
    base = torch.from_numpy(cat["base"][ok])[:, None]
    findings = [str(f) for f in cat["finding"][ok]]
    seeds = [int(s) for s in cat["seed"][ok]]

    def paint(checkpoint: str, coupling: str, label: bool) -> torch.Tensor:
        icfg = cfg.inpainting.model_copy(update={"coupling": coupling})
        step = InpaintStep(cfg.model_copy(update={"inpainting": icfg}), checkpoint)
        outs = []
        for i in range(0, src.shape[0], cfg.augment.batch_size):
            sl = slice(i, i + cfg.augment.batch_size)
            cond = findings_tensor(findings[sl]) if label else torch.zeros(len(findings[sl]), 14)
            gens = [torch.Generator().manual_seed(s * 1_000_003 + 3) for s in seeds[sl]]
            outs.append(step.painter.paint(src[sl], masks[sl] > 0.5, cond, icfg, generator=gens, base=base[sl]).images)
        return torch.cat(outs)

    arms: dict[str, torch.Tensor] = {
        "positive": base,
        "noise": fill(src, masks, "noise", generator=torch.Generator().manual_seed(0)),
        "label": paint(generator, cfg.inpainting.coupling, False),
        "label-noise": paint(generator, "noise", False),
        "flow": paint(generator, cfg.inpainting.coupling, True),
        "flow-noise": paint(generator, "noise", True),
    }
    for name, ckpt in (("vae", args.vae), ("lsgan", args.lsgan)):
        if ckpt:
            arms[name] = paint(ckpt, "noise", True)
    known = [f in verifier.findings and verifier.knows(f) for f in findings]
    before = np.full(len(findings), np.nan, np.float32)
    idx = [i for i, k in enumerate(known) if k]
    before[idx] = verifier.score(src[idx], masks[idx], [findings[i] for i in idx])
    table: dict[str, dict[str, dict[str, float | int]]] = {}
    for name, images in arms.items():
        after = np.full(len(findings), np.nan, np.float32)
        after[idx] = verifier.score(images[idx], masks[idx], [findings[i] for i in idx])
        thr = np.array([verifier.thresholds.get(f) or np.nan for f in findings], np.float32)
        passed = (after >= thr) & (after - before > cfg.quality.verifier_margin)
        row = {}
        for f in sorted(set(findings)):
            sel = np.array([g == f for g in findings]) & np.array(known)
            row[f] = {"n": int(sel.sum()), "passed": int(passed[sel].sum()),
                      "rate": float(passed[sel].mean()) if sel.any() else None,
                      "median_after": float(np.median(after[sel])) if sel.any() else None}
        sel = np.array(known)
        row["all"] = {"n": int(sel.sum()), "passed": int(passed[sel].sum()), "rate": float(passed[sel].mean()) if sel.any() else None}
        table[name] = row
    res = {
        "profile": cfg.name, "items": int(ok.sum()), "planned": len(plan), "coupling": cfg.inpainting.coupling,
        "coupling_t0": cfg.inpainting.coupling_t0, "verifier_thresholds": verifier.thresholds,
        "threshold_source": verifier.threshold_source, "table": table, "seconds": round(time.perf_counter() - t_start, 1),
        "generator": generator,
    }
    out = Path(args.out or REPO / "bench" / "results" / f"gate_controls-{cfg.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    fs = sorted(set(findings))
    print(f"verifier pass rate per arm ({res['items']} items; thresholds {verifier.thresholds}):")
    print(f"{'arm':<13}" + "".join(f"{f:>18}" for f in fs) + f"{'all':>14}")
    for name, row in table.items():
        print(f"{name:<13}" + "".join(f"{row[f]['passed']:>9}/{row[f]['n']:<3} {100 * (row[f]['rate'] or 0):>3.0f}%" for f in fs)
              + f"{row['all']['passed']:>7}/{row['all']['n']:<3}{100 * (row['all']['rate'] or 0):>3.0f}%")
    print(f"wrote {out} in {res['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
