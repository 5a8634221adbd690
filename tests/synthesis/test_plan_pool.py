import csv
import json
import os
from dataclasses import replace

import numpy as np
import pytest

from augment.synthesis import (
    PoolError,
    PoolWriter,
    ProvenanceRow,
    generator_fingerprint,
    item_key,
    plan_augmentation,
)
from augment.data.nih import load_index

GEN = "gen-a"


@pytest.fixture
def index(make_nih_folder):
    rows = [(f"{p:08d}_000.png", "No Finding", p) for p in range(1, 6)]
    rows += [("00000010_000.png", "Mass", 10), ("00000011_000.png", "Mass|Nodule", 11), ("00000012_000.png", "Nodule", 12)]
    rows += [("00000013_000.png", "Nodule", 13)]
    return load_index(make_nih_folder(rows, size=16))


def test_plan_brings_each_finding_to_target_rarest_first(index):
    items = plan_augmentation(index, ["Nodule", "Mass", "Hernia"], target_count=4, max_per_finding=10, seed=1, generator=GEN)
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
    a = plan_augmentation(index, ["Hernia"], 100, max_per_finding=3, seed=7, generator=GEN)
    b = plan_augmentation(index, ["Hernia"], 100, max_per_finding=3, seed=7, generator=GEN)
    c = plan_augmentation(index, ["Hernia"], 100, max_per_finding=3, seed=8, generator=GEN)
    assert a == b and len(a) == 3
    assert [i.seed for i in a] != [i.seed for i in c]


def test_plan_bad_input(index):
    with pytest.raises(ValueError, match="unknown finding"):
        plan_augmentation(index, ["Flu"], 3, 3, generator=GEN)
    sick = index.subset([r.image_index for r in index.records if not r.is_healthy])
    with pytest.raises(ValueError, match="no 'No Finding' image"):
        plan_augmentation(sick, ["Hernia"], 3, 3, generator=GEN)
    with pytest.raises(ValueError, match=r"\['Mass'\] listed more than once"):
        plan_augmentation(index, ["Mass", "Hernia", "Mass"], 3, 3, generator=GEN)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        plan_augmentation(index, ["Hernia"], 3, 3, seed=-1, generator=GEN)
    with pytest.raises(ValueError, match="fingerprint"):
        plan_augmentation(index, ["Hernia"], 3, 3, generator="")


def test_item_ids_depend_on_seed_generator_and_source(index):
    base = plan_augmentation(index, ["Hernia", "Mass"], 3, 3, seed=7, generator=GEN)
    ids = {i.item_id for i in base}
    assert len(ids) == len(base) == 4  # Hernia 3 + Mass 1, each id once
    # the same plan gives the same ids (a resumed run finds its items)
    assert [i.item_id for i in plan_augmentation(index, ["Hernia", "Mass"], 3, 3, seed=7, generator=GEN)] == [
        i.item_id for i in base
    ]
    other_gen = plan_augmentation(index, ["Hernia", "Mass"], 3, 3, seed=7, generator="gen-b")
    # same sources and seeds, another generator: no id in common (never a false "done")
    assert [(i.source, i.seed) for i in other_gen] == [(i.source, i.seed) for i in base]
    assert not ids & {i.item_id for i in other_gen}
    assert not {i.output_name for i in base} & {i.output_name for i in other_gen}
    other_seed = plan_augmentation(index, ["Hernia", "Mass"], 3, 3, seed=8, generator=GEN)
    assert not ids & {i.item_id for i in other_seed}
    # the key itself: each input changes it
    k = item_key("Mass", 0, "00000001_000.png", 7, 123, GEN)
    assert k == item_key("Mass", 0, "00000001_000.png", 7, 123, GEN) and len(k) == 10
    changed = [
        item_key("Nodule", 0, "00000001_000.png", 7, 123, GEN),
        item_key("Mass", 1, "00000001_000.png", 7, 123, GEN),
        item_key("Mass", 0, "00000002_000.png", 7, 123, GEN),
        item_key("Mass", 0, "00000001_000.png", 8, 123, GEN),
        item_key("Mass", 0, "00000001_000.png", 7, 124, GEN),
        item_key("Mass", 0, "00000001_000.png", 7, 123, "gen-b"),
    ]
    assert k not in changed and len(set(changed)) == len(changed)
    for it in base:  # the id and the file name carry the key; the name keeps the source's
        assert it.item_id.startswith(f"{it.finding}-") and it.item_id.rsplit("-", 1)[1] in it.output_name
        assert it.output_name.endswith(it.source)


def test_generator_fingerprint_follows_the_bytes(tmp_path):
    a = tmp_path / "a" / "generator.pt"
    a.parent.mkdir()
    a.write_bytes(b"weights-1")
    copy = tmp_path / "copy.pt"
    copy.write_bytes(b"weights-1")
    other = tmp_path / "other.pt"
    other.write_bytes(b"weights-2")
    fa = generator_fingerprint(a)
    assert fa == generator_fingerprint(str(copy)) == generator_fingerprint(f"file://{a}")
    assert fa == generator_fingerprint(a.parent)  # a folder: the checkpoint it holds
    assert fa != generator_fingerprint(other)
    assert generator_fingerprint("runs:/abc/model") != generator_fingerprint("runs:/abd/model")
    with pytest.raises(ValueError, match=r"nope\.pt.*not found"):
        generator_fingerprint(tmp_path / "nope.pt")


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


def test_pool_refuses_another_generator(tmp_path):
    uri = str(tmp_path / "pool")
    PoolWriter(uri).claim_generator("fp-a", "runs/a/generator.pt")
    PoolWriter(uri).claim_generator("fp-a", "elsewhere/generator.pt")  # same weights: fine
    assert PoolWriter(uri).generator_fingerprint() == "fp-a"
    with pytest.raises(PoolError, match=r"fp-a.*fp-b.*set augment\.output to another folder"):
        PoolWriter(uri).claim_generator("fp-b", "runs/b/generator.pt")
    assert PoolWriter(uri).generator_fingerprint() == "fp-a"  # the record is kept


def test_finalize_writes_only_the_current_plan(tmp_path):
    root = tmp_path / "pool"
    w = PoolWriter(str(root))
    img = np.full((16, 16), 0.5, np.float32)
    old = [_row(0, True), _row(1, True)]  # an earlier plan (another seed)
    new = [replace(_row(i, a), item_id=f"Mass-{i:05d}-new", image=f"new_{i}.png", mask=f"new_{i}.png")
           for i, a in ((0, True), (1, False))]
    for r in old + new:
        w.write_item(r, img, np.zeros((16, 16)))
    planned = [r.item_id for r in new] + ["Mass-00002-new"]  # the last one not finished
    summary = w.finalize(item_ids=planned)
    assert summary == {"Mass": {"finished": 2, "accepted": 1, "rejected": 1, "acceptance_rate": 0.5}}
    prov = list(csv.DictReader(open(root / "provenance.csv")))
    assert [p["item_id"] for p in prov] == ["Mass-00000-new", "Mass-00001-new"]
    idx = load_index(root)
    assert [r.image_index for r in idx.records] == ["new_0.png"]
    # readers see the current plan; the older items stay on disk (a later run may use them)
    assert [r.item_id for r in PoolWriter(str(root)).rows()] == ["Mass-00000-new", "Mass-00001-new"]
    assert len(w.done_ids()) == 4 and (root / "images" / old[0].image).is_file()


def test_flipped_verdict_removes_the_stale_image(tmp_path):
    root = tmp_path / "pool"
    w = PoolWriter(str(root))
    img = np.full((16, 16), 0.5, np.float32)
    w.write_item(_row(0, True), img, np.zeros((16, 16)))
    name = _row(0, True).image
    assert (root / "images" / name).is_file()
    # the item is made again (its record was lost) and now rejected
    (root / "items" / "Mass-00000.json").unlink()
    w.write_item(_row(0, False), img, np.zeros((16, 16)))
    assert not (root / "images" / name).exists() and (root / "rejected" / name).is_file()
    w.finalize()
    assert name not in (root / "Data_Entry_2017.csv").read_text()
    assert [p["accepted"] for p in csv.DictReader(open(root / "provenance.csv"))] == ["False"]
    # and back: accepted again
    w.write_item(_row(0, True), img, np.zeros((16, 16)))
    assert (root / "images" / name).is_file() and not (root / "rejected" / name).exists()
    assert json.loads((root / "items" / "Mass-00000.json").read_text())["accepted"] is True


def test_stale_tmp_files_are_removed(tmp_path):
    root = tmp_path / "pool"
    w = PoolWriter(str(root))
    w.write_item(_row(0, True), np.full((16, 16), 0.5, np.float32), np.zeros((16, 16)))
    stale = [root / "images" / ".syn_x.png.ab12cd.tmp", root / "items" / "Mass-00001.json.1234abcd.tmp",
             root / ".provenance.csv.zz.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    removed = PoolWriter(str(root)).remove_stale_tmp()
    assert sorted(removed) == sorted(str(p) for p in stale)
    assert not list(root.rglob("*.tmp"))
    assert w.done_ids() == {"Mass-00000"} and (root / "images" / _row(0, True).image).is_file()


def test_pool_writes_are_fsynced(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    PoolWriter(str(tmp_path / "pool")).write_item(_row(0, True), np.full((16, 16), 0.5, np.float32), np.zeros((16, 16)))
    assert len(calls) >= 6  # image, mask, record: each file and its folder
