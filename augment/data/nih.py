"""NIH ChestX-ray14 index: read and write the NIH folder layout.

A data set on disk is ``images/*.png`` plus ``Data_Entry_2017.csv`` (also NIH's
``Data_Entry_2017_v2020.csv`` and its ``.gz``), optionally ``BBox_List_2017.csv`` and the
official ``train_val_list.txt`` / ``test_list.txt``. The augmented pool is written in the
same layout, so any NIH reader (torchxrayvision's ``NIH_Dataset`` included) reads it.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from augment.data.io import atomic_write_bytes
from augment.findings import ALIASES, FINDINGS, LABELS, NO_FINDING

log = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "BBox",
    "Record",
    "NIHIndex",
    "DATA_ENTRY_HEADER",
    "BBOX_HEADER",
    "find_data_entry",
    "load_index",
    "label_folder",
    "write_data_entry",
    "write_bbox_list",
    "parse_labels",
]

# NIH's exact header: the two bracketed names span two columns each.
DATA_ENTRY_HEADER = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
]
BBOX_HEADER = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
DATA_ENTRY_NAMES = (
    "Data_Entry_2017.csv",
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017.csv.gz",
    "Data_Entry_2017_v2020.csv.gz",
)


class DataError(ValueError):
    """The data folder or one of its files is unusable; the message names the file and the fix."""


@dataclass(frozen=True)
class BBox:
    """An NIH bounding box in pixels of the stored image."""

    finding: str
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Record:
    """One row of ``Data_Entry_2017.csv``."""

    image_index: str
    labels: tuple[str, ...]
    patient_id: int
    follow_up: int = 0
    age: int | None = None
    sex: str = ""
    view: str = ""
    width: int | None = None
    height: int | None = None
    spacing_x: float | None = None
    spacing_y: float | None = None

    @property
    def is_healthy(self) -> bool:
        return self.labels == (NO_FINDING,)

    def multi_hot(self) -> np.ndarray:
        """(14,) float32 over :data:`FINDINGS`; all zeros for No Finding."""
        v = np.zeros(len(FINDINGS), dtype=np.float32)
        for lab in self.labels:
            if lab != NO_FINDING:
                v[FINDINGS.index(lab)] = 1.0
        return v


@dataclass(frozen=True)
class NIHIndex:
    """The rows of an NIH folder that have an image, with their boxes.

    Attributes:
        root: the folder.
        records: one per usable image, in CSV order.
        bboxes: image index -> boxes.
        skipped: rows dropped under ``on_bad_row='skip'``, as (image index, reason).
        official_test: image indices of ``test_list.txt`` when present, else None.
        image_dirs: image index -> images folder, for rows that live in another folder
            than ``root/images`` (an index joined from two folders, see :meth:`concat`).
    """

    root: Path
    records: tuple[Record, ...]
    bboxes: dict[str, tuple[BBox, ...]] = field(default_factory=dict)
    skipped: tuple[tuple[str, str], ...] = ()
    official_test: frozenset[str] | None = None
    image_dirs: dict[str, Path] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def image_dir(self) -> Path:
        return self.root / "images"

    def path(self, rec: Record | str) -> Path:
        name = rec.image_index if isinstance(rec, Record) else rec
        return self.image_dirs.get(name, self.image_dir) / name

    def labels_matrix(self) -> np.ndarray:
        """(N, 14) float32 multi-hot labels over :data:`FINDINGS`."""
        if not self.records:
            return np.zeros((0, len(FINDINGS)), dtype=np.float32)
        return np.stack([r.multi_hot() for r in self.records])

    def counts(self) -> dict[str, int]:
        """Images per label, NIH spelling, No Finding included."""
        out = {lab: 0 for lab in LABELS}
        for r in self.records:
            for lab in r.labels:
                out[lab] += 1
        return out

    def subset(self, image_indices: Iterable[str]) -> "NIHIndex":
        keep = set(image_indices)
        recs = tuple(r for r in self.records if r.image_index in keep)
        boxes = {k: v for k, v in self.bboxes.items() if k in keep}
        dirs = {k: v for k, v in self.image_dirs.items() if k in keep}
        return replace(self, records=recs, bboxes=boxes, image_dirs=dirs)

    def absolute(self) -> "NIHIndex":
        """The same index with absolute folders, for processes that run elsewhere (Ray workers
        start in their own working folder, where a relative root points nowhere)."""
        return replace(
            self, root=Path(self.root).resolve(), image_dirs={k: Path(v).resolve() for k, v in self.image_dirs.items()}
        )

    def concat(self, other: "NIHIndex") -> "NIHIndex":
        """This index followed by ``other``'s rows (e.g. real training images + a synthetic pool).

        Raises:
            DataError: an image index appears in both.
        """
        clash = {r.image_index for r in self.records} & {r.image_index for r in other.records}
        if clash:
            raise DataError(f"{len(clash)} image(s) are in both {self.root} and {other.root}, e.g. {sorted(clash)[:3]}")
        dirs = dict(self.image_dirs)
        dirs.update({r.image_index: other.path(r).parent for r in other.records})
        return replace(
            self,
            records=self.records + other.records,
            bboxes={**self.bboxes, **other.bboxes},
            skipped=self.skipped + other.skipped,
            image_dirs=dirs,
        )

    def with_finding(self, finding: str) -> list[Record]:
        return [r for r in self.records if finding in r.labels]

    def healthy(self) -> list[Record]:
        return [r for r in self.records if r.is_healthy]

    def fingerprint(self) -> str:
        """Hash of the index content and image file sizes: a data version for MLflow tags."""
        h = hashlib.sha256()
        for r in self.records:
            p = self.path(r)
            size = p.stat().st_size if p.exists() else -1
            h.update(f"{r.image_index}|{'|'.join(r.labels)}|{r.patient_id}|{size}\n".encode())
        return h.hexdigest()[:16]


def parse_labels(text: str, where: str) -> tuple[str, ...]:
    """Split NIH's ``A|B`` labels into canonical names.

    Raises:
        DataError: an unknown label (the message lists the known ones).
    """
    parts = [ALIASES.get(p.strip(), p.strip()) for p in str(text).split("|") if p.strip()]
    if not parts:
        raise DataError(f"{where}: empty 'Finding Labels'; write 'No Finding' for a healthy image")
    unknown = [p for p in parts if p not in LABELS]
    if unknown:
        raise DataError(f"{where}: unknown label(s) {unknown}; NIH labels are {list(LABELS)}")
    if NO_FINDING in parts and len(parts) > 1:
        raise DataError(f"{where}: 'No Finding' together with findings {parts}")
    # Keep NIH's order of the label vocabulary for a stable representation.
    return tuple(sorted(set(parts), key=LABELS.index))


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def find_data_entry(root: Path) -> Path | None:
    for name in DATA_ENTRY_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def _opt_int(v: str | None) -> int | None:
    try:
        return int(float(v)) if v not in (None, "") else None
    except ValueError:
        return None


def _opt_float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def record_from_row(row: dict[str, str], labels: tuple[str, ...], patient_id: int) -> Record:
    return Record(
        image_index=row["Image Index"],
        labels=labels,
        patient_id=patient_id,
        follow_up=_opt_int(row.get("Follow-up #")) or 0,
        age=_opt_int(row.get("Patient Age")),
        sex=row.get("Patient Gender", ""),
        view=row.get("View Position", ""),
        width=_opt_int(row.get("OriginalImage[Width")),
        height=_opt_int(row.get("Height]")),
        spacing_x=_opt_float(row.get("OriginalImagePixelSpacing[x")),
        spacing_y=_opt_float(row.get("y]")),
    )


def _read_rows(csv_path: Path) -> list[list[str]]:
    try:
        with _open_text(csv_path) as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise DataError(f"{csv_path}: cannot be read as CSV ({exc})") from None
    if not rows:
        raise DataError(f"{csv_path}: empty file; expected NIH's header {DATA_ENTRY_HEADER}")
    return rows


def read_data_entry_rows(csv_path: Path) -> Iterable[tuple[int, dict[str, str]]]:
    rows = _read_rows(csv_path)
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{csv_path}: missing required column(s) {missing}; found {header}. "
            f"NIH's Data_Entry_2017.csv has {DATA_ENTRY_HEADER}"
        )
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        yield lineno, {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}


def _read_bboxes(path: Path) -> dict[str, tuple[BBox, ...]]:
    out: dict[str, list[BBox]] = {}
    rows = _read_rows(path)
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) < 6 or not row[0].strip():
            continue
        try:
            label = ALIASES.get(row[1].strip(), row[1].strip())
            if label == "Infiltrate":  # NIH's box file spells it so
                label = "Infiltration"
            box = BBox(label, *(float(v) for v in row[2:6]))
        except ValueError:
            raise DataError(f"{path}:{lineno}: box coordinates must be numbers, got {row[2:6]}") from None
        if box.finding not in FINDINGS:
            raise DataError(f"{path}:{lineno}: unknown finding {row[1]!r} in a box")
        out.setdefault(row[0].strip(), []).append(box)
    return {k: tuple(v) for k, v in out.items()}


def _read_list(path: Path) -> frozenset[str]:
    return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())


def load_index(root: str | Path, on_bad_row: str = "error", check_images: bool = True) -> NIHIndex:
    """Read an NIH-layout folder.

    Args:
        root: the folder (local path or ``file://`` URI).
        on_bad_row: ``"error"`` raises on an unknown label or a missing image; ``"skip"``
            drops such rows, counts them in ``NIHIndex.skipped`` and logs the count.
        check_images: check that each row's PNG exists (only existence; decoding errors
            surface when the image is read).

    Raises:
        DataError: no folder, no images, no CSV and no way to label, bad CSV.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    root = Path(str(root).removeprefix("file://"))
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; set data.root to an NIH-layout folder")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DataError(f"{root}: no images/ folder; NIH layout is images/*.png + Data_Entry_2017.csv")
    present = {p.name for p in image_dir.glob("*.png")}
    if not present:
        raise DataError(f"{image_dir}: no PNG images; copy the NIH images/*.png here")
    csv_path = find_data_entry(root)
    if csv_path is None:
        raise DataError(
            f"{root}: no Data_Entry_2017.csv; to label a folder of NIH PNGs from NIH's own table "
            "run augment.data.nih.label_folder(root) (python -m augment.data.label ROOT)"
        )

    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for lineno, row in read_data_entry_rows(csv_path):
        name = row["Image Index"]
        where = f"{csv_path.name}:{lineno} ({name})"
        try:
            if name in seen:
                raise DataError(f"{where}: duplicate 'Image Index'")
            labels = parse_labels(row["Finding Labels"], where)
            pid = _opt_int(row.get("Patient ID"))
            if pid is None:
                raise DataError(f"{where}: 'Patient ID' must be an integer, got {row.get('Patient ID')!r}")
            if check_images and name not in present:
                raise DataError(f"{where}: image file images/{name} not found")
        except DataError as exc:
            if on_bad_row == "error":
                raise DataError(f"{exc}; fix the row, or set data.on_bad_row: skip to drop such rows") from None
            skipped.append((name, str(exc)))
            continue
        seen.add(name)
        records.append(record_from_row(row, labels, pid))
    if skipped:
        log.warning("skipped %d bad row(s) of %s (data.on_bad_row=skip); first: %s", len(skipped), csv_path, skipped[0][1])
    if not records:
        raise DataError(f"{csv_path}: no usable rows with an image in {image_dir}")
    bbox_path = root / "BBox_List_2017.csv"
    bboxes = _read_bboxes(bbox_path) if bbox_path.is_file() else {}
    names = {r.image_index for r in records}
    bboxes = {k: v for k, v in bboxes.items() if k in names}
    test_list = root / "test_list.txt"
    official = _read_list(test_list) if test_list.is_file() else None
    return NIHIndex(root=root, records=tuple(records), bboxes=bboxes, skipped=tuple(skipped), official_test=official)


def _record_row(r: Record) -> list[str]:
    def s(v: object) -> str:
        return "" if v is None else str(v)

    return [
        r.image_index,
        "|".join(r.labels),
        str(r.follow_up),
        str(r.patient_id),
        s(r.age),
        r.sex,
        r.view,
        s(r.width),
        s(r.height),
        s(r.spacing_x),
        s(r.spacing_y),
    ]


def write_data_entry(path: str | Path, records: Sequence[Record]) -> Path:
    """Atomically write ``Data_Entry_2017.csv`` with NIH's exact header."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(DATA_ENTRY_HEADER)
    for r in records:
        w.writerow(_record_row(r))
    return atomic_write_bytes(path, buf.getvalue().encode())


def write_bbox_list(path: str | Path, boxes: dict[str, Sequence[BBox]]) -> Path:
    """Atomically write ``BBox_List_2017.csv`` with NIH's header."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(BBOX_HEADER)
    for name, items in boxes.items():
        for b in items:
            w.writerow([name, b.finding, f"{b.x:.4f}", f"{b.y:.4f}", f"{b.w:.4f}", f"{b.h:.4f}"])
    return atomic_write_bytes(path, buf.getvalue().encode())


def _xrv_data_entry() -> Path:
    try:
        import torchxrayvision  # noqa: F401  (only for the path of its packaged CSV)
    except Exception as exc:  # torchxrayvision pulls torchvision; report why it is unusable
        raise DataError(f"labelling needs torchxrayvision's packaged NIH table, but it does not import: {exc}") from None
    base = Path(torchxrayvision.__file__).parent / "data"
    for name in ("Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv.gz"):
        if (base / name).is_file():
            return base / name
    raise DataError(f"torchxrayvision at {base} ships no Data_Entry_2017 table")


def label_folder(root: str | Path, table: str | Path | None = None) -> Path:
    """Write ``Data_Entry_2017.csv`` for a folder of NIH PNGs that came without one.

    The labels come from NIH's full table (by default the ``Data_Entry_2017_v2020.csv.gz``
    that torchxrayvision's wheel ships). Images not in the table are listed in the error.

    Returns:
        The path of the written CSV.
    """
    root = Path(root)
    names = sorted(p.name for p in (root / "images").glob("*.png"))
    if not names:
        raise DataError(f"{root / 'images'}: no PNG images to label")
    table = Path(table) if table else _xrv_data_entry()
    wanted = set(names)
    found: dict[str, Record] = {}
    for lineno, row in read_data_entry_rows(table):
        name = row["Image Index"]
        if name in wanted:
            labels = parse_labels(row["Finding Labels"], f"{table.name}:{lineno}")
            found[name] = record_from_row(row, labels, _opt_int(row.get("Patient ID")) or 0)
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(
            f"{len(missing)} image(s) in {root / 'images'} are not in NIH's table {table.name} "
            f"(first: {missing[:5]}); only NIH ChestX-ray14 file names can be labelled this way"
        )
    return write_data_entry(root / "Data_Entry_2017.csv", [found[n] for n in names])
