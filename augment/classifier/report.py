"""Classifier results people look at: the loss-curve figure and the per-finding table files."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from augment.classifier.metrics import ClassifierMetrics
from augment.classifier.train import EpochRecord
from augment.data.io import atomic_write_bytes

__all__ = ["loss_curve_figure", "write_metrics_table", "history_to_json"]


def loss_curve_figure(history: Sequence[EpochRecord], title: str = "classifier"):
    """A matplotlib figure: training and validation loss per epoch, and their gap (val - train)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r.epoch for r in history]
    fig, (ax, gx) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    ax.plot(epochs, [r.train_loss for r in history], "o-", label="train")
    ax.plot(epochs, [r.val_loss for r in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("BCE loss")
    ax.set_title(f"{title}: loss")
    ax.legend()
    gx.axhline(0.0, color="0.6", lw=0.8)
    gx.plot(epochs, [r.loss_gap for r in history], "d-", color="C3")
    gx.set_xlabel("epoch")
    gx.set_ylabel("validation - training loss")
    gx.set_title("loss gap")
    for a in (ax, gx):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def write_metrics_table(metrics: ClassifierMetrics, folder: str | Path, stem: str = "per_finding") -> tuple[Path, Path]:
    """Write the per-finding table as ``<stem>.csv`` (empty cell = missing) and ``<stem>.json``."""
    folder = Path(folder)
    rows = metrics.table()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    csv_path = atomic_write_bytes(folder / f"{stem}.csv", buf.getvalue().encode())
    json_path = atomic_write_bytes(folder / f"{stem}.json", json.dumps(metrics.to_dict(), indent=2).encode())
    return csv_path, json_path


def history_to_json(history: Sequence[EpochRecord]) -> str:
    return json.dumps([asdict(r) for r in history], indent=2)
