"""The phantom data set: renderer, label plan, NIH-layout writer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import augment.data.phantom as phantom
from augment.config import PhantomConfig
from augment.data.phantom import (
    PHANTOM_FINDINGS,
    generate_phantom,
    load_phantom_mask,
    plan_labels,
    render_phantom,
)
from augment.findings import NO_FINDING

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h]"

SMALL = PhantomConfig(n_images=24, image_size=64, n_patients=8, seed=3, healthy_fraction=0.25)


def _render(seed: int, size: int, findings: list[str]):
    return render_phantom(np.random.default_rng(seed), size, findings)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate_phantom(SMALL, tmp_path_factory.mktemp("phantom") / "set", progress=False)


# --- renderer ------------------------------------------------------------------------------


def test_render_is_deterministic_and_in_range():
    a = _render(7, 64, ["Nodule", "Effusion"])
    b = _render(7, 64, ["Effusion", "Nodule"])
    c = _render(8, 64, ["Nodule", "Effusion"])
    assert a.image.dtype == np.float32 and a.image.shape == (64, 64)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    np.testing.assert_array_equal(a.image, b.image)
    assert set(a.masks) == {"Nodule", "Effusion"}
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("finding", PHANTOM_FINDINGS)
def test_mask_lies_where_the_finding_lives(finding):
    for seed in (0, 1, 2):
        ph = _render(seed, 64, [finding])
        m = ph.masks[finding]
        assert m.dtype == bool and m.shape == (64, 64) and m.any()
        assert not (m & ~ph.body).any()
        if finding != "Cardiomegaly":
            assert not (m & ~ph.lungs).any(), f"{finding} mask leaves the lungs"
        x, y, w, h = ph.boxes[finding]
        rows, cols = np.nonzero(m)
        assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)


@pytest.mark.parametrize("finding", PHANTOM_FINDINGS)
def test_finding_changes_the_image_inside_its_mask(finding):
    for seed in (3, 4):
        with_f = _render(seed, 96, [finding])
        without = _render(seed, 96, [])
        m = with_f.masks[finding]
        diff = np.abs(with_f.image - without.image)
        inside, outside = float(diff[m].mean()), float(diff[~m].mean())
        assert inside > 0.02, f"{finding} barely visible: {inside:.4f}"
        assert inside > 4 * outside, f"{finding}: change inside {inside:.4f} vs outside {outside:.4f}"


@pytest.mark.parametrize("finding", ["Mass", "Nodule"])
def test_lesion_contrast_makes_the_same_lesion_more_conspicuous(finding):
    import numpy as np

    plain = phantom.render_phantom(np.random.default_rng(5), 96, [finding])
    strong = phantom.render_phantom(np.random.default_rng(5), 96, [finding], contrast={finding: 2.0})
    healthy = phantom.render_phantom(np.random.default_rng(5), 96, [])
    m = plain.masks[finding]
    assert np.array_equal(m, strong.masks[finding])  # same draw, same place and shape
    lift = lambda ph: float((ph.image - healthy.image)[m].mean())  # noqa: E731
    assert lift(strong) > 1.5 * lift(plain) > 0
    from scipy import ndimage as ndi

    far = ~ndi.binary_dilation(m, iterations=3)  # away from the lesion and its soft rim
    change = np.abs(strong.image - plain.image)
    assert float(change[m].mean()) > 10 * float(change[far].mean())
    with pytest.raises(ValueError, match="applies to Nodule and Mass"):
        PhantomConfig(lesion_contrast={"Effusion": 2.0})
    with pytest.raises(ValueError, match=r"in \(0, 5\]"):
        PhantomConfig(lesion_contrast={"Mass": 0.0})
    # an empty setting is left out of dumps: the hashes of earlier folders and stages stay
    assert "lesion_contrast" not in PhantomConfig().model_dump() and PhantomConfig(lesion_contrast={"Mass": 2}).model_dump()["lesion_contrast"]


def test_cardiomegaly_enlarges_the_heart():
    big, normal = _render(5, 96, ["Cardiomegaly"]), _render(5, 96, [])
    assert big.ctr > 0.5 > normal.ctr
    assert big.heart.sum() > 1.2 * normal.heart.sum()


def test_same_anatomy_for_follow_ups():
    anatomy = _render(0, 64, []).anatomy
    a = render_phantom(np.random.default_rng(1), 64, [], anatomy=anatomy)
    b = render_phantom(np.random.default_rng(2), 64, [], anatomy=anatomy)
    assert a.anatomy == b.anatomy == anatomy
    assert not np.array_equal(a.image, b.image)  # pose, exposure and noise still vary


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="cannot draw 'Hernia'"):
        _render(0, 64, ["Hernia"])
    with pytest.raises(ValueError, match="unknown finding 'Nodules'"):
        _render(0, 64, ["Nodules"])
    with pytest.raises(TypeError, match="wrap it in a list"):
        _render(0, 64, "Nodule")
    with pytest.raises(ValueError, match="at least 32"):
        _render(0, 16, [])


# --- label plan ------------------------------------------------------------------------------


def test_prevalence_is_honoured_on_a_large_sample():
    cfg = PhantomConfig(n_images=4000, seed=1)
    labels = plan_labels(cfg)
    healthy = sum(1 for x in labels if not x)
    assert healthy == round(cfg.healthy_fraction * cfg.n_images)
    diseased = [x for x in labels if x]
    for name, p in cfg.prevalence.items():
        share = sum(name in x for x in diseased) / len(diseased)
        assert abs(share - p) < 0.03, f"{name}: {share:.3f} vs {p}"


def test_prevalences_below_one_give_one_finding_each():
    cfg = PhantomConfig(n_images=2000, seed=2, healthy_fraction=0.5, prevalence={"Nodule": 0.3, "Mass": 0.1})
    diseased = [x for x in plan_labels(cfg) if x]
    assert all(len(x) == 1 for x in diseased)
    assert abs(sum("Nodule" in x for x in diseased) / len(diseased) - 0.75) < 0.04


def test_plan_rejects_findings_it_cannot_draw():
    with pytest.raises(ValueError, match="Hernia"):
        plan_labels(PhantomConfig(prevalence={"Hernia": 0.1, "Nodule": 1.0}))
    plan_labels(PhantomConfig(prevalence={"Hernia": 0.0, "Nodule": 1.0}))  # zero is fine


# --- writer ----------------------------------------------------------------------------------


def test_layout_and_csvs_match_nih(small_set, nih_sample_header):
    root = small_set
    names = sorted(p.name for p in (root / "images").iterdir())
    assert len(names) == SMALL.n_images
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", n) for n in names)
    with Image.open(root / "images" / names[0]) as im:
        assert im.mode == "L" and im.size == (64, 64)
    lines = (root / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == DATA_ENTRY_HEADER
    bbox_lines = (root / "BBox_List_2017.csv").read_text().splitlines()
    assert bbox_lines[0] == BBOX_HEADER
    if nih_sample_header is not None:
        assert (lines[0], bbox_lines[0]) == nih_sample_header
    rows = [ln.split(",") for ln in lines[1:]]
    assert all(len(r) == 11 for r in rows)
    assert sorted(r[0] for r in rows) == names
    healthy = [r for r in rows if r[1] == NO_FINDING]
    assert len(healthy) == round(SMALL.healthy_fraction * SMALL.n_images)
    # Patients with follow-ups: numbered 0.. per patient, and some patient has several.
    per_patient: dict[str, list[int]] = {}
    for r in rows:
        assert r[0] == f"{int(r[3]):08d}_{int(r[2]):03d}.png"
        per_patient.setdefault(r[3], []).append(int(r[2]))
    assert len(per_patient) == SMALL.n_patients
    assert all(sorted(v) == list(range(len(v))) for v in per_patient.values())
    assert max(len(v) for v in per_patient.values()) >= 2
    # One box and one mask per finding of every image.
    boxes = {(ln.split(",")[0], ln.split(",")[1]) for ln in bbox_lines[1:]}
    for r in rows:
        found = [] if r[1] == NO_FINDING else r[1].split("|")
        for f in found:
            assert (r[0], f) in boxes
            mask = load_phantom_mask(root, r[0], f)
            assert mask.shape == (64, 64) and mask.any()
        for f in set(PHANTOM_FINDINGS) - set(found):
            assert not load_phantom_mask(root, r[0], f).any()
    manifest = json.loads((root / "phantom.json").read_text())
    # a zero patient offset is left out, so folders written before the key existed still match
    assert manifest["config"] == SMALL.model_dump(mode="json", exclude={"patient_id_offset"})


def test_generation_is_deterministic(small_set, tmp_path):
    again = generate_phantom(SMALL, tmp_path / "again", progress=False)
    files = sorted(p.relative_to(small_set) for p in small_set.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (small_set / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_second_call_is_idempotent(small_set, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in small_set.rglob("*")}
    monkeypatch.setattr(phantom, "render_phantom", lambda *a, **k: pytest.fail("regenerated"))
    assert generate_phantom(SMALL, small_set, progress=False) == small_set
    assert before == {p: p.stat().st_mtime_ns for p in small_set.rglob("*")}
    with pytest.raises(ValueError, match="another config"):
        generate_phantom(SMALL.model_copy(update={"seed": 4}), small_set, progress=False)


def test_interrupted_run_leaves_no_folder(tmp_path, monkeypatch):
    real = phantom.render_phantom
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom, "render_phantom", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_phantom(SMALL, tmp_path / "set", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a phantom folder"):
        generate_phantom(SMALL, tmp_path / "set", progress=False)


def test_load_phantom_mask_errors(small_set):
    with pytest.raises(ValueError, match="unknown phantom finding"):
        load_phantom_mask(small_set, "00000001_000.png", "Hernia")
    with pytest.raises(FileNotFoundError, match="no such phantom image"):
        load_phantom_mask(small_set, "99999999_000.png", "Nodule")


def test_our_nih_reader_reads_the_folder(small_set):
    from augment.data.nih import load_index

    idx = load_index(small_set)
    assert len(idx) == SMALL.n_images
    n_boxes = len((small_set / "BBox_List_2017.csv").read_text().splitlines()) - 1
    assert sum(len(v) for v in idx.bboxes.values()) == n_boxes
    assert idx.counts()[NO_FINDING] == round(SMALL.healthy_fraction * SMALL.n_images)


def test_torchxrayvision_reads_the_folder(small_set):
    xrv = pytest.importorskip("torchxrayvision")
    ds = xrv.datasets.NIH_Dataset(
        imgpath=str(small_set / "images"),
        csvpath=str(small_set / "Data_Entry_2017.csv"),
        bbox_list_path=str(small_set / "BBox_List_2017.csv"),
        views=["PA", "AP"],
        unique_patients=False,
    )
    assert len(ds) == SMALL.n_images
    rows = (small_set / "Data_Entry_2017.csv").read_text().splitlines()[1:]
    expected = np.array([["Cardiomegaly" in r.split(",")[1]] for r in rows], dtype=np.float32)
    col = ds.pathologies.index("Cardiomegaly")
    np.testing.assert_array_equal(ds.labels[:, [col]], expected)
    sample = ds[0]
    assert sample["img"].shape == (1, 64, 64)


@pytest.fixture(scope="module")
def nih_sample_header():
    """(Data_Entry header, BBox header) of the real sample, or None when it is absent."""
    from shared_paths import NIH_SAMPLE

    de, bb = NIH_SAMPLE / "Data_Entry_2017.csv", NIH_SAMPLE / "BBox_List_2017.csv"
    if not (de.is_file() and bb.is_file()):
        return None
    return de.read_text().splitlines()[0], bb.read_text().splitlines()[0]
