import gzip

import numpy as np
import pytest

from augment.data.nih import (
    BBox,
    DataError,
    Record,
    label_folder,
    load_index,
    parse_labels,
    write_bbox_list,
    write_data_entry,
)
from augment.data.splits import split_index
from augment.findings import FINDINGS

ROWS = [
    ("00000001_000.png", "Cardiomegaly", 1),
    ("00000001_001.png", "Cardiomegaly|Effusion", 1),
    ("00000002_000.png", "No Finding", 2),
    ("00000003_000.png", "Pleural_Thickening", 3),
    ("00000004_000.png", "No Finding", 4),
    ("00000005_000.png", "Hernia", 5),
]


def test_reads_tiny_folder(make_nih_folder):
    idx = load_index(make_nih_folder(ROWS))
    assert len(idx) == 6
    y = idx.labels_matrix()
    assert y.shape == (6, 14)
    assert y[1, FINDINGS.index("Cardiomegaly")] == 1 and y[1, FINDINGS.index("Effusion")] == 1
    assert y[2].sum() == 0  # No Finding is all zeros
    assert idx.counts()["No Finding"] == 2
    assert idx.records[1].patient_id == 1


def test_parse_labels_canonical_and_errors():
    assert parse_labels("Effusion|Cardiomegaly", "x") == ("Cardiomegaly", "Effusion")
    assert parse_labels("Pleural Thickening", "x") == ("Pleural_Thickening",)
    with pytest.raises(DataError, match="unknown label"):
        parse_labels("Broken Arm", "row 3")
    with pytest.raises(DataError, match="No Finding"):
        parse_labels("No Finding|Mass", "row 3")


def test_unknown_label_error_names_row_and_fix(make_nih_folder):
    root = make_nih_folder(ROWS + [("00000006_000.png", "Flu", 6)])
    with pytest.raises(DataError, match=r"Data_Entry_2017.csv:8 \(00000006_000.png\).*on_bad_row: skip"):
        load_index(root)
    idx = load_index(root, on_bad_row="skip")
    assert len(idx) == 6 and len(idx.skipped) == 1 and "Flu" in idx.skipped[0][1]


def test_missing_image(make_nih_folder):
    root = make_nih_folder(ROWS)
    (root / "images" / "00000002_000.png").unlink()
    with pytest.raises(DataError, match="images/00000002_000.png not found"):
        load_index(root)
    assert len(load_index(root, on_bad_row="skip")) == 5


def test_missing_required_column(make_nih_folder):
    root = make_nih_folder(ROWS)
    csv = root / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("Patient ID", "PatientId"))
    with pytest.raises(DataError, match=r"missing required column\(s\) \['Patient ID'\]"):
        load_index(root)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_index(tmp_path / "nope")
    (tmp_path / "a" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no PNG images"):
        load_index(tmp_path / "a")


def test_v2020_gz_variant_and_file_uri(make_nih_folder):
    root = make_nih_folder(ROWS)
    csv = root / "Data_Entry_2017.csv"
    with gzip.open(root / "Data_Entry_2017_v2020.csv.gz", "wt") as fh:
        fh.write(csv.read_text())
    csv.unlink()
    assert len(load_index(f"file://{root}")) == 6


def test_write_read_round_trip_with_boxes(tmp_path, make_nih_folder):
    src = load_index(make_nih_folder(ROWS))
    out = tmp_path / "copy"
    (out / "images").mkdir(parents=True)
    for r in src.records:
        (out / "images" / r.image_index).write_bytes(src.path(r).read_bytes())
    write_data_entry(out / "Data_Entry_2017.csv", src.records)
    write_bbox_list(out / "BBox_List_2017.csv", {"00000001_000.png": [BBox("Cardiomegaly", 1, 2, 10.5, 8)]})
    back = load_index(out)
    assert back.records == src.records
    assert back.bboxes["00000001_000.png"][0] == BBox("Cardiomegaly", 1.0, 2.0, 10.5, 8.0)


def test_label_folder_from_nih_table(tmp_path, make_nih_folder):
    root = make_nih_folder(ROWS[:3])
    table = tmp_path / "table.csv"
    (root / "Data_Entry_2017.csv").rename(table)
    label_folder(root, table)
    assert [r.image_index for r in load_index(root).records] == sorted(r[0] for r in ROWS[:3])
    (root / "images" / "99999999_000.png").write_bytes((root / "images" / ROWS[0][0]).read_bytes())
    with pytest.raises(DataError, match="not in NIH's table"):
        label_folder(root, table)


@pytest.mark.integration
def test_label_folder_with_torchxrayvision_table(tmp_path, nih_sample):
    root = tmp_path / "unlabelled"
    (root / "images").mkdir(parents=True)
    names = sorted(p.name for p in (nih_sample / "images").glob("*.png"))[:5]
    for n in names:
        (root / "images" / n).write_bytes((nih_sample / "images" / n).read_bytes())
    label_folder(root)  # NIH's full table shipped in the torchxrayvision wheel
    ours = {r.image_index: r.labels for r in load_index(root).records}
    real = {r.image_index: r.labels for r in load_index(nih_sample).records if r.image_index in ours}
    assert ours == real


def test_patient_wise_split_has_no_leak(make_nih_folder):
    rows = [(f"{p:08d}_{f:03d}.png", "No Finding" if p % 2 else "Mass", p) for p in range(1, 31) for f in range(2)]
    idx = load_index(make_nih_folder(rows, size=16))
    s = split_index(idx, 0.2, 0.2, seed=3)
    sides = [{r.patient_id for r in part.records} for part in (s.train, s.val, s.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert sum(s.sizes().values()) == 60
    assert s.sizes()["test"] == pytest.approx(12, abs=2)
    again = split_index(idx, 0.2, 0.2, seed=3)
    assert [r.image_index for r in again.test.records] == [r.image_index for r in s.test.records]
    other = split_index(idx, 0.2, 0.2, seed=4)
    assert [r.image_index for r in other.test.records] != [r.image_index for r in s.test.records]


def test_official_test_list_is_used(make_nih_folder):
    rows = [(f"{p:08d}_000.png", "No Finding", p) for p in range(1, 21)]
    root = make_nih_folder(rows, size=16)
    (root / "test_list.txt").write_text("00000001_000.png\n00000002_000.png\n")
    s = split_index(load_index(root), 0.2, 0.2)
    assert s.method == "official"
    assert {r.image_index for r in s.test.records} == {"00000001_000.png", "00000002_000.png"}


@pytest.mark.integration
def test_real_nih_sample(nih_sample):
    idx = load_index(nih_sample)
    assert len(idx) == 559
    c = idx.counts()
    assert c["No Finding"] == 114 and c["Hernia"] == 19 and c["Edema"] == 13
    assert len(idx.bboxes) >= 1
    s = split_index(idx, 0.15, 0.2, seed=0)
    assert not {r.patient_id for r in s.train.records} & {r.patient_id for r in s.test.records}


@pytest.mark.integration
def test_torchxrayvision_reads_what_we_write(tmp_path, nih_sample):
    xrv = pytest.importorskip("torchxrayvision")
    src = load_index(nih_sample)
    recs = src.records[:12]
    out = tmp_path / "pool"
    (out / "images").mkdir(parents=True)
    for r in recs:
        (out / "images" / r.image_index).write_bytes(src.path(r).read_bytes())
    write_data_entry(out / "Data_Entry_2017.csv", recs)
    ds = xrv.datasets.NIH_Dataset(
        imgpath=str(out / "images"), csvpath=str(out / "Data_Entry_2017.csv"), unique_patients=False, views=["PA", "AP"]
    )
    assert len(ds) == 12
    item = ds[0]
    assert item["img"].shape[-1] == 256
    # torchxrayvision's label columns agree with ours for the findings both name
    for i, r in enumerate(recs):
        for j, name in enumerate(ds.pathologies):
            if name in FINDINGS:
                assert ds.labels[i, j] == (1.0 if name in r.labels else 0.0)


def test_record_multi_hot():
    r = Record("x.png", ("Hernia", "Mass"), 1)
    v = r.multi_hot()
    assert v.sum() == 2 and v[FINDINGS.index("Hernia")] == 1
    assert np.all(Record("y.png", ("No Finding",), 2).multi_hot() == 0)


def test_concat_keeps_each_rows_folder(tmp_path, make_nih_folder):
    a = load_index(make_nih_folder(ROWS[:3], name="real"))
    b = load_index(make_nih_folder([("syn_mass_00000_00000002_000.png", "Mass", 2)], name="pool"))
    both = a.concat(b)
    assert len(both) == 4
    assert both.path("syn_mass_00000_00000002_000.png").parent == b.image_dir
    assert both.path(ROWS[0][0]).parent == a.image_dir
    assert all(both.path(r).is_file() for r in both.records)
    assert both.subset(["syn_mass_00000_00000002_000.png"]).path("syn_mass_00000_00000002_000.png").is_file()
    with pytest.raises(DataError, match="in both"):
        a.concat(a)


def test_absolute_index_reads_from_any_working_folder(tmp_path, make_nih_folder, monkeypatch):
    # A pool joined by a relative path: Ray workers run in another folder and must still find it.
    make_nih_folder(ROWS[:2], name="real")
    make_nih_folder([("syn_mass_00000_00000002_000.png", "Mass", 2)], name="pool")
    monkeypatch.chdir(tmp_path)
    both = load_index("real").concat(load_index("pool")).absolute()
    monkeypatch.chdir(tmp_path / "real")
    assert both.root.is_absolute() and all(both.path(r).is_absolute() and both.path(r).is_file() for r in both.records)
