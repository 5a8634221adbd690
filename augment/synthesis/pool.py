"""The augmented pool on disk: NIH layout plus a provenance table, written atomically.

Layout under the pool root (a local path, ``file://``, ``s3://``, ``gs://`` — any
filesystem pyarrow supports)::

    images/<name>.png            accepted synthetic images, at their source's size and bit depth
                                 (8- or 16-bit grayscale; see :mod:`augment.synthesis.native`)
    masks/<name>.png             the painted region of each image (8-bit, 0 or 255), same size
    rejected/<name>.png          rejected images, kept for inspection
    items/<item id>.json         one record per finished plan item (the resume marker)
    pool.json                    the generator whose images the pool holds (its fingerprint)
    plan.json                    ids of the items of the last finalized plan
    Data_Entry_2017.csv          accepted images of that plan, NIH columns (readable by any NIH reader);
                                 original size and pixel spacing copied from the source's row
    provenance.csv               every item of that plan: source, reference, finding, mask,
                                 probabilities, accepted or not and why, generator run, seed

Items written before native-resolution output (no ``width``/``height``/``bits`` in their
record) still load; their Data_Entry rows leave size and spacing empty, as they did.

An item counts as done once its ``items/<id>.json`` exists; images are written before it,
each through a temporary name and a rename (on a local disk the file and then its folder
are fsynced around the rename), so an interrupted run leaves no half-written file and a
re-run skips exactly the finished items. A re-made item whose verdict flipped loses its
image from the other folder. Item ids carry the generator's fingerprint, and a pool holds
the images of one generator only (:meth:`PoolWriter.claim_generator`). ``.tmp`` files that
a killed run left behind are removed by :meth:`PoolWriter.remove_stale_tmp` when a job
starts. One job writes to a pool at a time.
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

from augment.data.io import atomic_write_bytes, encode_png, encode_png_pixels, fsync_dir
from augment.data.nih import DATA_ENTRY_HEADER, Record

__all__ = ["ProvenanceRow", "PoolWriter", "PoolError", "open_filesystem", "summarize"]

MANIFEST = "pool.json"
PLAN = "plan.json"
_FOLDERS = ("images", "masks", "rejected", "items")


class PoolError(ValueError):
    """The pool folder cannot take this run (another generator's images); the message says what to do."""


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
    verifier_before: float | None = None
    verifier_after: float | None = None
    verifier_threshold: float | None = None
    judges: str | None = None
    width: int | None = None  # the written image's size and bit depth (None: a pool from before issue 19)
    height: int | None = None
    bits: int | None = None
    resolution: str | None = None  # "native" (the source's grid) or "working" (the source was unreadable)


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
        for sub in _FOLDERS:
            self.fs.create_dir(f"{self.root}/{sub}", recursive=True)

    # -- atomic primitives -------------------------------------------------------------
    def _write(self, rel: str, data: bytes) -> None:
        final = f"{self.root}/{rel}"
        if isinstance(self.fs, pafs.LocalFileSystem):
            atomic_write_bytes(final, data)  # temp file, fsync, rename, fsync of the folder
            return
        # Object stores: the temporary object becomes visible under the final name only whole.
        tmp = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as fh:
            fh.write(data)
        self.fs.move(tmp, final)

    def _read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{rel}") as fh:
            return fh.read()

    def _exists(self, rel: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/{rel}").type != pafs.FileType.NotFound

    def _remove(self, rel: str) -> bool:
        """Delete one file if it is there; returns whether it was."""
        if not self._exists(rel):
            return False
        path = f"{self.root}/{rel}"
        self.fs.delete_file(path)
        if isinstance(self.fs, pafs.LocalFileSystem):
            fsync_dir(os.path.dirname(path))  # gone for good before the item's record says done
        return True

    # -- the pool as a whole -------------------------------------------------------------
    def claim_generator(self, fingerprint: str, checkpoint: str = "") -> None:
        """Record the pool's generator, or refuse another one.

        The first run on a folder writes ``pool.json``; later runs must bring the same
        fingerprint. Mixing generators in one pool would put two models' images under one
        Data_Entry table, so another generator is refused.

        Args:
            fingerprint: :func:`~augment.synthesis.fingerprint.generator_fingerprint` of the checkpoint.
            checkpoint: where the checkpoint was read from (recorded, named in errors).

        Raises:
            PoolError: the pool holds another generator's images.
        """
        if not fingerprint:
            raise ValueError("claim_generator needs the generator's fingerprint, got an empty string")
        if self._exists(MANIFEST):
            try:
                held = json.loads(self._read(MANIFEST))
            except ValueError as exc:
                raise PoolError(
                    f"{self.uri}/{MANIFEST} is not valid JSON ({exc}); it records the pool's generator: "
                    "use another output folder (augment.output) or delete this one"
                ) from None
            if held.get("generator_fingerprint") != fingerprint:
                raise PoolError(
                    f"pool {self.uri} holds images of generator {held.get('generator') or '?'} (fingerprint "
                    f"{held.get('generator_fingerprint')}), this run's generator {checkpoint or '?'} has fingerprint "
                    f"{fingerprint}; a pool holds one generator's images: set augment.output to another folder "
                    "(or delete this pool to start it over)"
                )
            return
        self._write(MANIFEST, json.dumps({"generator_fingerprint": fingerprint, "generator": str(checkpoint)}).encode())

    def generator_fingerprint(self) -> str | None:
        """The fingerprint recorded in ``pool.json`` (None for a pool without one)."""
        if not self._exists(MANIFEST):
            return None
        return json.loads(self._read(MANIFEST)).get("generator_fingerprint")

    def remove_stale_tmp(self) -> list[str]:
        """Delete ``*.tmp`` files left by an interrupted run; returns their paths.

        Call it when a job starts, before any writer runs: a writer's own temporary files
        exist only while it writes.
        """
        sel = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        stale = [i.path for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File and i.path.endswith(".tmp")]
        for path in stale:
            self.fs.delete_file(path)
        return stale

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

        A copy of the image in the other folder (an earlier try of the same item that got the
        other verdict) is removed before the record is written.

        Args:
            row: the provenance record; its ``width``/``height``, when set, must be the image's.
            image: (H, W) uint8 or uint16 stored values (written as they are, 8- or 16-bit),
                or float32 in [0, 1] (written at ``row.bits``, default 8).
            mask: (H, W) region that was painted (bool or [0, 1]), the image's size.

        Raises:
            ValueError: the image and mask (or the row's size) disagree, or a float image's
                ``row.bits`` is not 8 or 16.
        """
        img = np.asarray(image)
        msk = np.asarray(mask)
        if img.ndim == 3 and img.shape[0] == 1:  # (1, H, W), as encode_png took it
            img = img[0]
        if msk.ndim == 3 and msk.shape[0] == 1:
            msk = msk[0]
        if msk.shape != img.shape:
            raise ValueError(f"item {row.item_id}: mask of shape {msk.shape} does not match its image {img.shape}")
        if row.width is not None and row.height is not None and (row.height, row.width) != img.shape:
            raise ValueError(f"item {row.item_id}: the row says {row.width}x{row.height} (width x height), "
                             f"the image is {img.shape[1]}x{img.shape[0]}")
        if img.dtype in (np.uint8, np.uint16):
            if row.bits is not None and row.bits != img.dtype.itemsize * 8:
                raise ValueError(f"item {row.item_id}: the row says {row.bits}-bit, the image is {img.dtype}")
            data = encode_png_pixels(img)
        else:
            data = encode_png(img, bits=row.bits or 8)
        folder, other = ("images", "rejected") if row.accepted else ("rejected", "images")
        self._write(f"{folder}/{row.image}", data)
        self._remove(f"{other}/{row.image}")
        self._write(f"masks/{row.image}", encode_png(msk.astype(np.float32)))
        self._write(f"items/{row.item_id}.json", json.dumps(asdict(row)).encode())

    def _item_rows(self, item_ids: Iterable[str]) -> list[ProvenanceRow]:
        out = []
        for item_id in sorted(set(item_ids)):
            d = json.loads(self._read(f"items/{item_id}.json"))
            out.append(ProvenanceRow(**{k: d.get(k) for k in PROVENANCE_COLUMNS}))
        return out

    def current_ids(self) -> list[str] | None:
        """Ids of the last finalized plan (``plan.json``); None when the pool was never finalized."""
        if not self._exists(PLAN):
            return None
        return list(json.loads(self._read(PLAN))["items"])

    def rows(self, item_ids: Iterable[str] | None = None) -> list[ProvenanceRow]:
        """Finished items, sorted by id.

        Args:
            item_ids: which items (those not finished are left out); default the items of
                the last finalized plan, or every finished item when there is none.
        """
        done = self.done_ids()
        if item_ids is None:
            current = self.current_ids()
            item_ids = done if current is None else current
        return self._item_rows(i for i in item_ids if i in done)

    def finalize(
        self, generator_records: dict[str, Record] | None = None, item_ids: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """Write ``plan.json``, ``provenance.csv`` and ``Data_Entry_2017.csv`` for one plan.

        Items of earlier plans that are still in the folder (another seed, other findings)
        stay on disk but are left out of the tables.

        Args:
            generator_records: source image index -> its real record, to copy age, sex,
                view, original size and pixel spacing into the synthetic image's row. The
                size and spacing are NIH's ``OriginalImage[Width,Height]`` and
                ``OriginalImagePixelSpacing[x,y]``: they describe the source's original
                film, so a native-resolution item takes them from its source's record; where
                that record has no size, the written image's own size. Items of older pools
                (written at the working resolution, no size in their record) leave all four
                empty, as before.
            item_ids: the current plan's item ids (finished ones are written); default
                every finished item in the pool.

        Returns:
            Counts per finding: planned-and-finished, accepted, rejected.
        """
        done = self.done_ids()
        rows = self._item_rows(done if item_ids is None else [i for i in item_ids if i in done])
        self._write(PLAN, json.dumps({"items": [r.item_id for r in rows]}).encode())
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
                *_original_size_spacing(r, src),
            ])
        self._write("Data_Entry_2017.csv", buf.getvalue().encode())
        return summarize(rows)


def _original_size_spacing(r: ProvenanceRow, src: Record | None) -> list[Any]:
    """NIH's four original-size/spacing cells for an accepted item (empty where unknown)."""
    if r.width is None or r.height is None or r.resolution == "working":
        return ["", "", "", ""]  # an old pool's or a working-resolution image: not the source's grid
    width, height = r.width, r.height
    if src is not None and src.width is not None and src.height is not None:
        width, height = src.width, src.height
    sx = "" if src is None or src.spacing_x is None else src.spacing_x
    sy = "" if src is None or src.spacing_y is None else src.spacing_y
    return [width, height, sx, sy]


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
