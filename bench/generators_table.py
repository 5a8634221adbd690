"""One table of the generators compared by ``bench/compare_generators.sh``: acceptance, realism, utility.

::

    python bench/generators_table.py --root runs/local/compare-generators --kinds flow vae lsgan \
        --out bench/results/generators-local

Reads, per generator kind (``identity``: the unpainted control of ``bench/identity_pool.py``),
``pool-<kind>/provenance.csv`` (the gate's decisions),
``evaluate-<kind>/evaluation.json`` (jobs.evaluate) and ``utility-<kind>/utility.json``
(jobs.utility), and writes ``<out>.json`` and ``<out>.md``. A part that is missing is
reported as missing, not as a number.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from augment.data.io import atomic_write_bytes  # noqa: E402
from jobs.utility import interval_text  # noqa: E402


def acceptance(pool: Path) -> dict[str, Any] | None:
    path = pool / "provenance.csv"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and all(r["reason"] == "identity" for r in rows):
        return {"items": len(rows), "gated": False}  # bench/identity_pool.py's control: nothing painted, nothing gated
    per: dict[str, list[int]] = {}
    for r in rows:
        per.setdefault(r["finding"], [0, 0])[r["accepted"] == "True"] += 1
    return {
        "items": len(rows),
        "accepted": sum(a for _, a in per.values()),
        "rate": sum(a for _, a in per.values()) / len(rows) if rows else None,
        "per_finding": {f: {"items": n + a, "accepted": a, "rate": a / (n + a)} for f, (n, a) in sorted(per.items())},
    }


def realism(ev: Path) -> dict[str, Any] | None:
    path = ev / "evaluation.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    fid = {k: {x: v.get(x) for x in ("fid", "low", "high", "n_real", "n_synthetic", "kid", "kid_std")}
           for k, v in d.get("fid", {}).items()}
    ts = {k: {x: v.get(x) for x in ("auc", "low", "high", "n_test", "auc_repeats", "grouped", "folds", "repeats")}
          for k, v in d.get("two_sample", {}).items()}
    div = {f: {"synthetic": (v.get("synthetic") or {}).get("mean"), "real": (v.get("real") or {}).get("mean")}
           for f, v in d.get("diversity", {}).items()}
    mem = d.get("memorisation", {})
    return {"fid": fid, "two_sample": ts, "ms_ssim": div, "near_copies": len(mem.get("flagged", [])) if mem else None,
            "near_copy_train_images": mem.get("n_train") if mem else None,
            "n_real": d["inputs"]["n_real"], "n_synthetic": d["inputs"]["n_synthetic"],
            "real_disjoint_from_sources": bool(d["inputs"].get("real_disjoint_from_sources")),
            "include_rejected": bool(d["inputs"].get("include_rejected"))}


def utility(ut: Path) -> dict[str, Any] | None:
    path = ut / "utility.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    out = {}
    for fraction, part in d["fractions"].items():
        get = {(r["key"], r["arm"]): r for r in part["aggregate"]}
        out[fraction] = {
            "seeds": len(part["cells"]),
            "synthetic_images": [c["synthetic_images"] for c in part["cells"]],
            "real_images": [c["real_images"] for c in part["cells"]],
            **{f"macro_{arm}": {x: (get.get(("macro", arm)) or {}).get(x) for x in ("mean", "low", "high")}
               for arm in ("base", "augmented", "delta")},
            "per_finding_delta": {k: {x: r.get(x) for x in ("mean", "low", "high")}
                                  for (k, arm), r in get.items() if arm == "delta" and k not in ("macro", "loss_gap")},
        }
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Generators compared: {res['root']}", "", f"Machine: {res['machine']}. Written {res['written']}.", ""]
    def iv(d: dict[str, Any] | None, key: str, fmt: str) -> str:
        if not d or d.get(key) is None:
            return "n/a"
        out = fmt.format(d[key])
        return out + (f" [{fmt.format(d['low'])}, {fmt.format(d['high'])}]" if d.get("low") is not None else "")

    evaluated = {(r["realism"] or {}).get("include_rejected") for r in res["generators"].values() if r["realism"]}
    if evaluated:
        lines += ["Realism measured on " + " / ".join(
            "every generated image, the gate's rejects included (--include-rejected)" if e else "the images the gate accepted"
            for e in sorted(evaluated)) + ".", ""]
    def kid(d: dict[str, Any] | None) -> str:
        return "n/a" if not d or d.get("kid") is None else f"{d['kid']:.4f} ± {d['kid_std']:.4f}"

    def auc(d: dict[str, Any] | None) -> str:
        if not d or d.get("auc") is None:
            return "n/a"
        reps = d.get("auc_repeats") or []
        spread = f" (repeats {min(reps):.2f}-{max(reps):.2f})" if len(reps) > 1 else ""
        return iv(d, "auc", "{:.3f}") + spread + ("" if d.get("grouped") else " ungrouped")

    old = [k for k, r in res["generators"].items() if r["realism"] and not r["realism"].get("real_disjoint_from_sources")]
    lines += ["Real side: images of patients that gave no source to the pool. Two-sample AUC: grouped k-fold by "
              "patient/source, mean over repeats, 95% interval from a bootstrap over groups, the repeats' range beside it. "
              "FID and KID in 32x32 pixels and in an autoencoder trained on the real training images (spaces the gate never "
              "selected in); the gate classifier's own embedding "
              "last, for reference only." + (f" Not yet re-measured this way: {', '.join(old)}." if old else ""), "",
              "| generator | accepted / items | FID, 32x32 pixels [95%] | KID, 32x32 pixels (± sd) | "
              "FID, autoencoder of real training images [95%] | KID, autoencoder (± sd) | "
              "two-sample AUC, whole image [95%] | two-sample AUC, crops [95%] | near-copies / training images searched | "
              "real / synthetic evaluated | FID, gate classifier's embedding [95%] |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, r in res["generators"].items():
        acc = r["acceptance"]
        rl = r["realism"] or {}
        fid, ts = rl.get("fid") or {}, rl.get("two_sample") or {}
        acc_s = "n/a" if not acc else (f"{acc['accepted']} / {acc['items']}" if acc.get("gated", True) else f"not gated / {acc['items']}")
        lines.append(f"| {kind} | {acc_s} | {iv(fid.get('pixels'), 'fid', '{:.2f}')} | {kid(fid.get('pixels'))} | "
                     f"{iv(fid.get('encoder'), 'fid', '{:.1f}')} | {kid(fid.get('encoder'))} | "
                     f"{auc(ts.get('image'))} | {auc(ts.get('crop'))} | {rl.get('near_copies', 'n/a')} / "
                     f"{rl.get('near_copy_train_images', 'n/a')} | {rl.get('n_real', 'n/a')} / {rl.get('n_synthetic', 'n/a')} | "
                     f"{iv(fid.get('classifier'), 'fid', '{:.2f}')} |")
    findings = sorted({f for r in res["generators"].values() for f in ((r["realism"] or {}).get("ms_ssim") or {})})
    if findings:
        lines += ["", "Acceptance and diversity per finding (MS-SSIM among samples of one finding: lower = more diverse; real images of the finding in parentheses).", "",
                  "| generator | " + " | ".join(f"{f} accepted | {f} MS-SSIM" for f in findings) + " |",
                  "| --- |" + " --- | --- |" * len(findings)]
        for kind, r in res["generators"].items():
            cells = []
            for f in findings:
                a = ((r["acceptance"] or {}).get("per_finding") or {}).get(f)
                m = ((r["realism"] or {}).get("ms_ssim") or {}).get(f) or {}
                cells.append("n/a" if not a else f"{a['accepted']}/{a['items']} ({a['rate']:.0%})")
                cells.append("n/a" if m.get("synthetic") is None else
                             f"{m['synthetic']:.3f} ({'n/a' if m.get('real') is None else format(m['real'], '.3f')})")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Utility: test macro AUC, mean [95% t-interval] over seeds.", "",
              "| generator | fraction | seeds | synthetic images per seed | base | augmented | augmented - base |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind, r in res["generators"].items():
        for fraction, u in (r["utility"] or {}).items():
            cols = [interval_text(u[f"macro_{arm}"], "macro", arm) for arm in ("base", "augmented", "delta")]
            lines.append(f"| {kind} | {fraction} | {u['seeds']} | {u['synthetic_images']} | {' | '.join(cols)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="the compare-generators folder of a profile's output_dir")
    p.add_argument("--kinds", nargs="+", default=["flow", "vae", "lsgan"])
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args()
    root = Path(args.root)
    res = {
        "root": str(root),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "generators": {
            k: {"acceptance": acceptance(root / f"pool-{k}"), "realism": realism(root / f"evaluate-{k}"),
                "utility": utility(root / f"utility-{k}")}
            for k in args.kinds
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(res, indent=1).encode())
    atomic_write_bytes(out.with_suffix(".md"), markdown(res).encode())
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
