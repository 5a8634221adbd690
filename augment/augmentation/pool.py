"""The augmented pool on disk: NIH layout plus a provenance table, written atomically.

Layout under the pool root (a local path, ``file://``, ``s3://``, ``gs://`` — any
filesystem pyarrow supports)::

    images/<name>.png            accepted synthetic images (8-bit, like NIH)
    masks/<name>.png             the painted region of each accepted image
    rejected/<name>.png          rejected images, kept for inspection
    items/<item id>.json         one record per finished plan item (the resume marker)
    Data_Entry_2017.csv          accepted images, NIH columns (readable by any NIH reader)
    provenance.csv               every item: source, reference, finding, mask, probabilities,
                                 accepted or not and why, generator run, seed

An item counts as done once its ``items/<id>.json`` exists; images are written before it,
each through a temporary name and a rename, so an interrupted run leaves no half-written
file and a re-run skips exactly the finished items.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow.fs as pafs

from augment.data.io import encode_png
from augment.data.nih import DATA_ENTRY_HEADER, Record

__all__ = ["ProvenanceRow", "PoolWriter", "open_filesystem", "summarize"]


@dataclass(frozen=True)
class ProvenanceRow:
    """One line of ``provenance.csv``."""

    item_id: str
    image: str
    finding: str
    source: str
    source_patient: int
    reference: str
    mask: str
    mask_area: float
    prob_before: float | None
    prob_after: float | None
    accepted: bool
    reason: str
    registration_ncc: float | None
    generator_run: str
    seed: int


PROVENANCE_COLUMNS = [f.name for f in fields(ProvenanceRow)]


def open_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI pyarrow understands."""
    if "://" not in uri:
        uri = str(Path(uri).resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with its own wording
        raise ValueError(f"output {uri!r} is not a path or a supported URI (file://, s3://, gs://): {exc}") from None


class PoolWriter:
    """Writes finished plan items into the pool and assembles the tables."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root = open_filesystem(uri)
        for sub in ("images", "masks", "rejected", "items"):
            self.fs.create_dir(f"{self.root}/{sub}", recursive=True)

    # -- atomic primitives -------------------------------------------------------------
    def _write(self, rel: str, data: bytes) -> None:
        final = f"{self.root}/{rel}"
        tmp = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as fh:
            fh.write(data)
        self.fs.move(tmp, final)

    def _read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{rel}") as fh:
            return fh.read()

    # -- items ---------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        """Ids of items already finished (their record exists)."""
        sel = pafs.FileSelector(f"{self.root}/items", allow_not_found=True)
        return {
            os.path.basename(i.path)[: -len(".json")]
            for i in self.fs.get_file_info(sel)
            if i.path.endswith(".json")
        }

    def write_item(self, row: ProvenanceRow, image: np.ndarray, mask: np.ndarray) -> None:
        """Write one finished item: its image (accepted or rejected), mask, then its record.

        Args:
            row: the provenance record.
            image: (H, W) float32 in [0, 1].
            mask: (H, W) region that was painted (bool or [0, 1]).
        """
        folder = "images" if row.accepted else "rejected"
        self._write(f"{folder}/{row.image}", encode_png(image))
        self._write(f"masks/{row.image}", encode_png(np.asarray(mask, dtype=np.float32)))
        self._write(f"items/{row.item_id}.json", json.dumps(asdict(row)).encode())

    def rows(self) -> list[ProvenanceRow]:
        """All finished items, sorted by id."""
        out = []
        for item_id in sorted(self.done_ids()):
            d = json.loads(self._read(f"items/{item_id}.json"))
            out.append(ProvenanceRow(**{k: d.get(k) for k in PROVENANCE_COLUMNS}))
        return out

    def finalize(self, generator_records: dict[str, Record] | None = None) -> dict[str, Any]:
        """Write ``provenance.csv`` and ``Data_Entry_2017.csv`` from the finished items.

        Args:
            generator_records: source image index -> its real record, to copy age, sex and
                view into the synthetic image's row.

        Returns:
            Counts per finding: planned-and-finished, accepted, rejected.
        """
        rows = self.rows()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=PROVENANCE_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
        self._write("provenance.csv", buf.getvalue().encode())

        buf = io.StringIO()
        cw = csv.writer(buf, lineterminator="\n")
        cw.writerow(DATA_ENTRY_HEADER)
        for r in rows:
            if not r.accepted:
                continue
            src = (generator_records or {}).get(r.source)
            cw.writerow([
                r.image, r.finding, 0, r.source_patient,
                "" if src is None or src.age is None else src.age,
                "" if src is None else src.sex,
                "" if src is None else src.view,
                "", "", "", "",
            ])
        self._write("Data_Entry_2017.csv", buf.getvalue().encode())
        return summarize(rows)


def summarize(rows: Iterable[ProvenanceRow]) -> dict[str, Any]:
    """Accepted/rejected counts and acceptance rate per finding."""
    per: dict[str, dict[str, float]] = {}
    for r in rows:
        d = per.setdefault(r.finding, {"finished": 0, "accepted": 0, "rejected": 0})
        d["finished"] += 1
        d["accepted" if r.accepted else "rejected"] += 1
    for d in per.values():
        d["acceptance_rate"] = d["accepted"] / d["finished"] if d["finished"] else 0.0
    return per
