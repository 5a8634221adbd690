"""Write a made-up Data_Entry_2017.csv at NIH scale (112,120 rows) for the augment job's dry run.

::

    python bench/make_nih_scale_csv.py --out /tmp/nih-scale            # 112,120 rows
    python bench/make_nih_scale_csv.py --out /tmp/nih-small --rows 3000
    python -m jobs.augment --config configs/cluster-gpu.yaml --dry-run --data-entry /tmp/nih-scale

Rows follow NIH's format and statistics: each row's "Finding Labels" (the whole
combination, so co-occurrence is kept) and "View Position" are drawn from NIH's own table
(``Data_Entry_2017_v2020.csv.gz``, shipped in torchxrayvision's wheel); patients get 1 to
many images as in NIH (the real images-per-patient counts, shuffled). Image names, ages and
sizes are made up; no image is written (the dry run reads none). ``--real`` writes NIH's own
rows instead (its first ``--rows``).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment.data.nih import DATA_ENTRY_HEADER  # noqa: E402

NIH_ROWS = 112_120


def nih_table() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")  # the wheel's data folder; no import (it pulls torchvision)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchxrayvision is not installed; it ships NIH's Data_Entry_2017_v2020.csv.gz")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "Data_Entry_2017_v2020.csv.gz"
    if not path.is_file():
        raise SystemExit(f"{path} not found in the torchxrayvision wheel")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write Data_Entry_2017.csv into (created)")
    p.add_argument("--rows", type=int, default=NIH_ROWS, help=f"rows to write (default NIH's {NIH_ROWS})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", action="store_true", help="write NIH's own first --rows rows instead of made-up ones")
    args = p.parse_args(argv)
    if args.rows < 1 or args.seed < 0:
        raise SystemExit("--rows must be >= 1 and --seed >= 0")
    with gzip.open(nih_table(), "rt", newline="") as fh:
        real = list(csv.DictReader(fh))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(DATA_ENTRY_HEADER)
    if args.real:
        for r in real[: args.rows]:
            w.writerow([r.get(h, "") for h in DATA_ENTRY_HEADER])
    else:
        rng = np.random.default_rng(args.seed)
        per_patient = np.array(list(Counter(r["Patient ID"] for r in real).values()))
        rng.shuffle(per_patient)
        picks = rng.integers(0, len(real), size=args.rows)
        pid, k, left = 1, 0, int(per_patient[0])
        for n, i in enumerate(picks):
            r = real[i]
            if left == 0:
                pid += 1
                left = int(per_patient[pid % len(per_patient) - 1])
                k = 0
            w.writerow([f"{pid:08d}_{k:03d}.png", r["Finding Labels"], k, pid, int(rng.integers(1, 95)),
                        "M" if rng.uniform() < 0.565 else "F", r["View Position"], 2500, 2048, 0.143, 0.143])
            k += 1
            left -= 1
    (out / "Data_Entry_2017.csv").write_text(buf.getvalue())
    labels = Counter(lab for line in buf.getvalue().splitlines()[1:] for lab in line.split(",")[1].split("|"))
    print(f"wrote {out / 'Data_Entry_2017.csv'}: {args.rows} rows; " + ", ".join(f"{k} {v}" for k, v in labels.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
