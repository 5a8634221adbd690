"""The augmentation job on paper: the plan and its cost, without reading an image.

``python -m jobs.augment --dry-run`` reads only the Data_Entry table, splits it as the job
would, makes the same plan (:func:`augment.synthesis.plan.plan_augmentation`), and
prints per finding the real training positives, the synthetic items planned and the
reference bank's size, then the expected time from per-item costs: this machine's measured
figure (or one passed in) and a GPU figure spread over N workers. Nothing here starts Ray,
loads a model or reads an image; the input quality filter (which reads images) is skipped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from augment.synthesis.plan import plan_augmentation
from augment.data.nih import DataError, NIHIndex, read_data_entry_rows, record_from_row, find_data_entry, parse_labels

if TYPE_CHECKING:  # pragma: no cover
    from augment.config import RunConfig

__all__ = ["CPU_SECONDS_PER_ITEM", "CPU_BASIS", "DryRun", "read_table", "dry_run", "format_dry_run"]

# Measured (docs/benchmarks.md, "Augmentation job and pipeline"): the plain loop made 115
# items in 121.8 s on the 2-core AMD EPYC VM (local profile: 128 px, crop 64, 10 Euler steps).
CPU_SECONDS_PER_ITEM = 121.8 / 115
CPU_BASIS = (
    "measured: 115 items in 121.8 s, plain loop, local profile (128 px, crop 64, 10 steps), "
    "2-core AMD EPYC VM (docs/benchmarks.md, issue 5)"
)


@dataclass(frozen=True)
class DryRun:
    """The plan and its expected cost.

    Attributes:
        table: the Data_Entry file read.
        rows: its usable rows; ``skipped``: rows dropped (unknown label, bad patient id).
        train_rows / train_healthy: the training split and its 'No Finding' images (the sources).
        findings: finding -> (real training positives, planned synthetic items, reference bank size).
        items: planned items in all.
        sources_used: distinct healthy sources the plan paints into.
        cpu_seconds_per_item / gpu_seconds_per_item: the per-item costs used; ``*_basis`` says where from.
        gpu_workers: workers the GPU figure is spread over.
        seconds: wall time of the dry run itself.
    """

    table: str
    rows: int
    skipped: int
    train_rows: int
    train_healthy: int
    findings: dict[str, tuple[int, int, int]]
    items: int
    sources_used: int
    cpu_seconds_per_item: float
    cpu_basis: str
    gpu_seconds_per_item: float | None
    gpu_basis: str
    gpu_workers: int
    seconds: float

    @property
    def cpu_hours(self) -> float:
        return self.items * self.cpu_seconds_per_item / 3600

    @property
    def gpu_hours(self) -> float | None:
        if self.gpu_seconds_per_item is None:
            return None
        return self.items * self.gpu_seconds_per_item / self.gpu_workers / 3600


def read_table(root: str | Path) -> tuple[NIHIndex, int, Path]:
    """Read a Data_Entry table into an index without looking at images.

    Args:
        root: an NIH-layout folder (its ``Data_Entry_2017*.csv[.gz]``) or the table itself.

    Returns:
        (index, rows skipped for an unknown label or a bad patient id, the table's path).

    Raises:
        DataError: no table, or no usable row.
    """
    p = Path(str(root).removeprefix("file://"))
    table = p if p.is_file() else find_data_entry(p) if p.is_dir() else None
    if table is None:
        raise DataError(
            f"{root}: no Data_Entry_2017.csv; give an NIH-layout folder or the table itself "
            "(bench/make_nih_scale_csv.py writes a made-up one)"
        )
    records, seen, skipped = [], set(), 0
    for lineno, row in read_data_entry_rows(table):
        name = row["Image Index"]
        try:
            labels = parse_labels(row["Finding Labels"], f"{table.name}:{lineno}")
            pid = int(float(row.get("Patient ID") or ""))
        except (DataError, ValueError):
            skipped += 1
            continue
        if name in seen:
            skipped += 1
            continue
        seen.add(name)
        records.append(record_from_row(row, labels, pid))
    if not records:
        raise DataError(f"{table}: no usable rows")
    root_dir = table.parent
    test_list = root_dir / "test_list.txt"
    official = frozenset(test_list.read_text().split()) if test_list.is_file() else None
    return NIHIndex(root=root_dir, records=tuple(records), official_test=official), skipped, table


def dry_run(
    cfg: "RunConfig",
    root: str | Path | None = None,
    cpu_seconds_per_item: float | None = None,
    gpu_seconds_per_item: float | None = None,
    gpu_workers: int = 1,
    gpu_basis: str = "",
) -> DryRun:
    """Plan the augmentation of ``root``'s table (default ``data.root``) and cost it.

    Args:
        cfg: the run profile (``data.split``, ``augment``).
        root: NIH-layout folder or Data_Entry table; images need not exist.
        cpu_seconds_per_item: seconds per item on this machine (default: the measured
            :data:`CPU_SECONDS_PER_ITEM`).
        gpu_seconds_per_item: seconds per item on one GPU worker; None gives no GPU figure.
        gpu_workers: GPU workers sharing the items (>= 1).
        gpu_basis: where the GPU figure comes from, printed beside it.

    Raises:
        ValueError: no root, non-positive costs or workers; DataError: unusable table.
    """
    from augment.data.splits import split_index

    t0 = time.perf_counter()
    root = root if root is not None else cfg.data.root
    if not root:
        raise ValueError("a dry run needs a Data_Entry table: set data.root (--set data.root=DIR) or pass --data-entry")
    if gpu_workers < 1:
        raise ValueError(f"gpu_workers must be >= 1, got {gpu_workers}")
    for name, v in (("cpu_seconds_per_item", cpu_seconds_per_item), ("gpu_seconds_per_item", gpu_seconds_per_item)):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a positive number of seconds, got {v}")
    index, skipped, table = read_table(root)
    s = cfg.data.split
    train = split_index(index, s.val_fraction, s.test_fraction, s.seed, s.use_official_lists).train
    a = cfg.augment
    plan = plan_augmentation(train, list(a.findings), a.target_count, a.max_per_finding, a.seed, generator="dry-run")
    counts = train.counts()
    per: dict[str, tuple[int, int, int]] = {}
    for f in a.findings:
        per[f] = (counts[f], sum(1 for i in plan if i.finding == f), min(a.references_per_finding, counts[f]))
    cpu = CPU_SECONDS_PER_ITEM if cpu_seconds_per_item is None else float(cpu_seconds_per_item)
    basis = CPU_BASIS if cpu_seconds_per_item is None else "given (--per-item-seconds)"
    return DryRun(
        table=str(table), rows=len(index), skipped=skipped, train_rows=len(train), train_healthy=len(train.healthy()),
        findings=per, items=len(plan), sources_used=len({i.source for i in plan}),
        cpu_seconds_per_item=cpu, cpu_basis=basis,
        gpu_seconds_per_item=gpu_seconds_per_item, gpu_basis=gpu_basis or "given (--per-item-seconds-gpu), not measured here",
        gpu_workers=int(gpu_workers), seconds=time.perf_counter() - t0,
    )


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def format_dry_run(d: DryRun) -> str:
    """The dry run as the lines the job prints."""
    lines = [
        f"DRY RUN: no Ray started, no model loaded, no image read (the input quality filter is skipped)",
        f"table {d.table}: {d.rows} rows ({d.skipped} skipped); training split {d.train_rows} images, "
        f"{d.train_healthy} 'No Finding' sources",
        f"{'finding':<20}{'real':>8}{'planned':>9}{'bank':>6}",
    ]
    for f, (real, planned, bank) in d.findings.items():
        lines.append(f"{f:<20}{real:>8}{planned:>9}{bank:>6}")
    lines.append(f"expected items: {d.items} on {d.sources_used} distinct healthy sources; "
                 f"reference bank: {sum(b for _, _, b in d.findings.values())} images")
    lines.append(f"this machine: {d.items} x {d.cpu_seconds_per_item:.3f} s = {_hours(d.cpu_hours)} ({d.cpu_basis})")
    if d.gpu_hours is None:
        lines.append("GPU: no per-item figure given; pass --per-item-seconds-gpu S (GPU costs are not measured here)")
    else:
        lines.append(f"GPU: {d.items} x {d.gpu_seconds_per_item:.3f} s / {d.gpu_workers} worker(s) = "
                     f"{_hours(d.gpu_hours)} ({d.gpu_basis})")
    lines.append(f"dry run took {d.seconds:.1f} s")
    return "\n".join(lines)
