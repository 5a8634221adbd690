import csv

import numpy as np
import pytest

from augment.augmentation import PoolWriter, ProvenanceRow, plan_augmentation
from augment.data.nih import load_index


@pytest.fixture
def index(make_nih_folder):
    rows = [(f"{p:08d}_000.png", "No Finding", p) for p in range(1, 6)]
    rows += [("00000010_000.png", "Mass", 10), ("00000011_000.png", "Mass|Nodule", 11), ("00000012_000.png", "Nodule", 12)]
    rows += [("00000013_000.png", "Nodule", 13)]
    return load_index(make_nih_folder(rows, size=16))


def test_plan_brings_each_finding_to_target_rarest_first(index):
    items = plan_augmentation(index, ["Nodule", "Mass", "Hernia"], target_count=4, max_per_finding=10, seed=1)
    per = {f: sum(i.finding == f for i in items) for f in ("Hernia", "Mass", "Nodule")}
    assert per == {"Hernia": 4, "Mass": 2, "Nodule": 1}
    assert [i.finding for i in items][:4] == ["Hernia"] * 4  # rarest first
    assert len({i.item_id for i in items}) == len(items)
    assert len({i.output_name for i in items}) == len(items)
    healthy = {r.image_index for r in index.healthy()}
    assert {i.source for i in items} <= healthy
    # round-robin: 7 items over 5 healthy sources uses every source
    assert len({i.source for i in items}) == 5


def test_plan_is_seeded_and_capped(index):
    a = plan_augmentation(index, ["Hernia"], 100, max_per_finding=3, seed=7)
    b = plan_augmentation(index, ["Hernia"], 100, max_per_finding=3, seed=7)
    c = plan_augmentation(index, ["Hernia"], 100, max_per_finding=3, seed=8)
    assert a == b and len(a) == 3
    assert [i.seed for i in a] != [i.seed for i in c]


def test_plan_bad_input(index):
    with pytest.raises(ValueError, match="unknown finding"):
        plan_augmentation(index, ["Flu"], 3, 3)
    sick = index.subset([r.image_index for r in index.records if not r.is_healthy])
    with pytest.raises(ValueError, match="no 'No Finding' image"):
        plan_augmentation(sick, ["Hernia"], 3, 3)


def _row(i, accepted):
    return ProvenanceRow(
        item_id=f"Mass-{i:05d}", image=f"syn_mass_{i:05d}_00000001_000.png", finding="Mass", source="00000001_000.png",
        source_patient=1, reference="00000010_000.png", mask=f"syn_mass_{i:05d}_00000001_000.png", mask_area=0.02,
        prob_before=0.1, prob_after=0.4 if accepted else 0.1, accepted=accepted, reason="ok" if accepted else "margin",
        registration_ncc=0.9, generator_run="run1", seed=i,
    )


@pytest.mark.parametrize("uri_style", ["path", "file"])
def test_pool_writes_resumes_and_is_nih_readable(tmp_path, uri_style):
    root = tmp_path / "pool"
    uri = str(root) if uri_style == "path" else f"file://{root}"
    w = PoolWriter(uri)
    img = np.full((16, 16), 0.5, np.float32)
    w.write_item(_row(0, True), img, np.zeros((16, 16)))
    w.write_item(_row(1, False), img, np.zeros((16, 16)))
    # a second writer on the same folder (a resumed run) sees what is done
    w2 = PoolWriter(uri)
    assert w2.done_ids() == {"Mass-00000", "Mass-00001"}
    w2.write_item(_row(2, True), img, np.zeros((16, 16)))
    summary = w2.finalize()
    assert summary["Mass"]["accepted"] == 2 and summary["Mass"]["rejected"] == 1
    assert summary["Mass"]["acceptance_rate"] == pytest.approx(2 / 3)
    prov = list(csv.DictReader(open(root / "provenance.csv")))
    assert [p["item_id"] for p in prov] == ["Mass-00000", "Mass-00001", "Mass-00002"]
    idx = load_index(root)  # the accepted images are an NIH folder
    assert len(idx) == 2 and all(r.labels == ("Mass",) for r in idx.records)
    assert (root / "rejected" / _row(1, False).image).is_file()
    assert not list(root.rglob("*.tmp"))


def test_pool_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="supported URI"):
        PoolWriter("nosuchscheme://bucket/x")
