"""Native-resolution output (issue 19): the pool image is its source, bit for bit, away from
the painted region, at the source's size and bit depth; the mask is native; Data_Entry rows
carry the original size and pixel spacing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, distance_transform_edt

from augment.synthesis.native import MAX_REACH_PX, paste_native
from augment.synthesis.pool import PoolWriter, ProvenanceRow
from augment.synthesis.steps import WriteStep
from augment.data.io import (
    ImageReadError,
    decode_image,
    decode_raw,
    encode_png,
    encode_png_pixels,
    read_image,
    read_raw,
    resize,
)
from augment.data.nih import DATA_ENTRY_HEADER, load_index
from augment.data.phantom import render_phantom

WORK = 128


def _disc(r: float) -> np.ndarray:
    k = int(np.ceil(r))
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    return yy**2 + xx**2 <= r * r


def _outside(mask: np.ndarray, reach: float = MAX_REACH_PX) -> np.ndarray:
    """Pixels more than ``reach`` native pixels (Euclidean) outside the mask."""
    return ~binary_dilation(mask, _disc(reach))


def _phantom_pair(size: int = 256):
    """A healthy phantom and the same phantom with a Mass (they differ only in the Mass)."""
    healthy = render_phantom(np.random.default_rng(5), size, [])
    sick = render_phantom(np.random.default_rng(5), size, ["Mass"])
    return healthy, sick


def _phantom_working(size: int = 256):
    """(source uint8 as stored, working source, working synthetic, working mask)."""
    healthy, sick = _phantom_pair(size)
    src = decode_raw(encode_png(healthy.image)).pixels  # the 8-bit file's values
    work_src = resize(src.astype(np.float32) / 255.0, WORK)
    m = resize(sick.masks["Mass"].astype(np.float32), WORK) > 0.5
    syn = np.where(m, resize(sick.image, WORK), work_src).astype(np.float32)
    return src, work_src, syn, m


def _nih_like_16bit(size: int = 1024, seed: int = 0) -> np.ndarray:
    """A 1024x1024 16-bit radiograph-like image: smooth body, two lung fields, grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 0.55 + 0.25 * np.exp(-((xx - 0.5) ** 2) / 0.08)
    lungs = 0.25 * (np.exp(-(((xx - 0.3) / 0.12) ** 2 + ((yy - 0.45) / 0.25) ** 2))
                    + np.exp(-(((xx - 0.7) / 0.12) ** 2 + ((yy - 0.45) / 0.25) ** 2)))
    arr = np.clip(body - lungs + 0.02 * rng.standard_normal((size, size)), 0, 1)
    return np.round(arr * 65535).astype(np.uint16)


def _blob_synthetic(work_src: np.ndarray, cy: int, cx: int, r: int, value: float = 0.95):
    yy, xx = np.mgrid[0 : work_src.shape[0], 0 : work_src.shape[1]]
    m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return np.where(m, value, work_src).astype(np.float32), m


# -- the library function ------------------------------------------------------------------------------


@pytest.mark.parametrize("carry_change", [True, False], ids=["change", "pixels"])
def test_phantom_256_equals_source_outside_the_dilated_mask(carry_change):
    src, work_src, syn, m = _phantom_working()
    res = paste_native(src, syn, m, working_source=work_src if carry_change else None)
    assert res.image.shape == (256, 256) and res.image.dtype == np.uint8 and res.bits == 8
    assert res.mask.shape == (256, 256) and res.mask.dtype == bool
    out = _outside(res.mask)
    assert out.sum() > 0.8 * out.size
    assert np.array_equal(res.image[out], src[out])  # byte for byte
    # the Mass is really there: inside the mask the image follows the painted one
    _, sick = _phantom_pair()
    sick8 = decode_raw(encode_png(sick.image)).pixels.astype(float)
    inner = res.mask & ~binary_dilation(~res.mask, _disc(3))
    assert inner.sum() > 50
    before = np.abs(src[inner].astype(float) - sick8[inner]).mean()
    after = np.abs(res.image[inner].astype(float) - sick8[inner]).mean()
    assert before > 8 and after < 0.5 * before
    # the native mask is the working mask upsampled (x2 here): same area, up to its edge
    assert abs(res.mask.sum() - 4 * m.sum()) < 0.15 * 4 * m.sum()


def test_nih_like_1024_16bit_equals_source_outside_the_dilated_mask():
    src = _nih_like_16bit()
    work_src = resize(src.astype(np.float32) / 65535.0, WORK)
    syn, m = _blob_synthetic(work_src, 60, 40, 9)
    res = paste_native(src, syn, m, working_source=work_src)
    assert res.image.shape == (1024, 1024) and res.image.dtype == np.uint16 and res.bits == 16
    assert res.mask.shape == (1024, 1024)
    out = _outside(res.mask)
    assert np.array_equal(res.image[out], src[out])
    # the region moved towards the painted value, the 16-bit values are not 8-bit ones
    inner = res.mask & ~binary_dilation(~res.mask, _disc(8))
    assert res.image[inner].mean() / 65535 > src[inner].mean() / 65535 + 0.2
    assert np.any(res.image[inner] % 257 != 0)
    # only the box around the region was worked on
    top, bottom, left, right = res.box
    assert (bottom - top) * (right - left) < 0.05 * src.size
    changed = res.image != src
    ys, xs = np.nonzero(changed)
    assert ys.min() >= top and ys.max() < bottom and xs.min() >= left and xs.max() < right


@pytest.mark.parametrize("carry_change", [True, False], ids=["change", "pixels"])
@pytest.mark.parametrize("feather", [0.0, 1.5, 3.0, 4.0])
def test_the_feathered_edge_stays_within_its_width(feather, carry_change):
    # carrying the synthetic's pixels, the upsampled image differs from the source everywhere:
    # only the blend's weight keeps the change near the mask
    src = _nih_like_16bit(256, seed=1)
    work_src = resize(src.astype(np.float32) / 65535.0, WORK)
    syn, m = _blob_synthetic(work_src, 64, 64, 12)
    res = paste_native(src, syn, m, working_source=work_src if carry_change else None, feather=feather)
    changed = res.image != src
    dist = distance_transform_edt(~res.mask)  # distance of each pixel to the native mask
    assert dist[changed].max() < max(feather, 0.5)  # feather 0: only mask pixels change
    assert dist[changed].max() <= MAX_REACH_PX
    if feather >= 1.5:  # a real ramp: some pixels just outside change, by less than inside
        ring = changed & (dist > 0)
        assert ring.any()
        step = np.abs(res.image.astype(float) - src.astype(float))
        assert step[ring].mean() < step[res.mask].mean()


def test_non_square_source_and_a_non_integer_scale():
    rng = np.random.default_rng(3)
    src = (rng.uniform(0.2, 0.8, (300, 241)) * 255).astype(np.uint8)
    work_src = resize(src.astype(np.float32) / 255.0, 97)  # squashed to square, as RegisterStep does
    syn, m = _blob_synthetic(work_src, 30, 70, 6)
    res = paste_native(src, syn, m, working_source=work_src)
    assert res.image.shape == (300, 241) and res.mask.shape == (300, 241)
    assert np.array_equal(res.image[_outside(res.mask)], src[_outside(res.mask)])
    # the native mask sits where the working one does (centre at 30/97, 70/97 of the frame)
    cy, cx = np.argwhere(res.mask).mean(axis=0)
    assert abs(cy - (30 + 0.5) * 300 / 97) < 3 and abs(cx - (70 + 0.5) * 241 / 97) < 3


def test_an_empty_mask_gives_the_source_itself():
    src = _nih_like_16bit(64)
    work = resize(src.astype(np.float32) / 65535.0, 32)
    res = paste_native(src, work, np.zeros((32, 32), bool), working_source=work)
    assert np.array_equal(res.image, src) and not res.mask.any() and res.image is not src


def test_paste_native_names_bad_input():
    src = _nih_like_16bit(64)
    syn = np.full((32, 32), 0.5, np.float32)
    m = np.zeros((32, 32), bool)
    with pytest.raises(ValueError, match="source must be uint8.*float32"):
        paste_native(src.astype(np.float32), syn, m)
    with pytest.raises(ValueError, match=r"mask has shape \(16, 16\).*\(32, 32\)"):
        paste_native(src, syn, np.zeros((16, 16), bool))
    with pytest.raises(ValueError, match="synthetic must be finite and lie in \\[0, 1\\]"):
        paste_native(src, syn * 300, m)
    with pytest.raises(ValueError, match="working_source has shape"):
        paste_native(src, syn, m, working_source=np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=r"feather must lie in \[0, 4\].*got 5"):
        paste_native(src, syn, m, feather=5)
    with pytest.raises(ValueError, match=r"source must be a single \(H, W\) image"):
        paste_native(np.zeros((2, 64, 64), np.uint8), syn, m)


# -- raw reading -------------------------------------------------------------------------------------------


def test_read_raw_keeps_values_and_bit_depth(tmp_path):
    a16 = _nih_like_16bit(64)
    (tmp_path / "a.png").write_bytes(encode_png_pixels(a16))
    r = read_raw(tmp_path / "a.png")
    assert r.bits == 16 and r.pixels.dtype == np.uint16 and np.array_equal(r.pixels, a16)
    assert np.allclose(r.to_float(), read_image(tmp_path / "a.png"), atol=0)
    a8 = (a16 >> 8).astype(np.uint8)
    r8 = decode_raw(encode_png_pixels(a8))
    assert r8.bits == 8 and np.array_equal(r8.pixels, a8)
    assert np.array_equal(r8.to_float(), decode_image(encode_png_pixels(a8)))
    with pytest.raises(ImageReadError, match="nope.png: file not found"):
        read_raw(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match="bad.png: not a readable image"):
        read_raw(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="uint8 or uint16 pixels, got float32"):
        encode_png_pixels(a16.astype(np.float32))


# -- the write step and the pool ---------------------------------------------------------------------------


def _nih_folder(root: Path, images: dict[str, np.ndarray], meta: dict[str, tuple]) -> Path:
    (root / "images").mkdir(parents=True)
    lines = [",".join(DATA_ENTRY_HEADER)]
    for i, (name, px) in enumerate(images.items()):
        (root / "images" / name).write_bytes(encode_png_pixels(px))
        w, h, sx, sy = meta[name]
        lines.append(f"{name},No Finding,0,{i + 1},50,F,PA,{w},{h},{sx},{sy}")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return root


def _batch(items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], accepted: list[bool]) -> dict:
    """items: (source name, working source, synthetic, mask)."""
    n = len(items)
    return {
        "item_id": np.array([f"Mass-{i:05d}-fp" for i in range(n)]),
        "finding": np.array(["Mass"] * n),
        "source": np.array([s for s, *_ in items]),
        "source_patient": np.arange(1, n + 1),
        "seed": np.arange(n),
        "output_name": np.array([f"syn_mass_{i:05d}_{s}" for i, (s, *_) in enumerate(items)]),
        "image": np.stack([w for _, w, _, _ in items]),
        "synthetic": np.stack([y for _, _, y, _ in items]),
        "mask": np.stack([m.astype(np.uint8) for *_, m in items]),
        "reference": np.array(["00000099_000.png"] * n, dtype=object),
        "registration_ncc": np.full(n, 0.9, np.float32),
        "status": np.array([""] * n, dtype=object),
        "prob_before": np.full(n, 0.1, np.float32),
        "prob_after": np.full(n, 0.6, np.float32),
        "accepted": np.array(accepted),
        "reason": np.array(["accepted" if a else "no_rise" for a in accepted], dtype=object),
    }


def test_write_step_writes_native_images_masks_and_data_entry(tmp_path):
    src256 = decode_raw(encode_png(_phantom_pair()[0].image)).pixels
    src1024 = _nih_like_16bit()
    src_nosize = _nih_like_16bit(512, seed=2)
    root = _nih_folder(
        tmp_path / "nih",
        {"00000001_000.png": src256, "00000002_000.png": src1024, "00000003_000.png": src_nosize},
        {"00000001_000.png": (256, 256, 0.171875, 0.171875),  # a phantom's row: its own size
         "00000002_000.png": (2500, 2048, 0.143, 0.143),  # NIH's rows: the original film's size
         "00000003_000.png": ("", "", "", "")},
    )
    index = load_index(root)
    items = []
    for name, px in (("00000001_000.png", src256), ("00000002_000.png", src1024), ("00000003_000.png", src_nosize)):
        work = resize(px.astype(np.float32) / np.iinfo(px.dtype).max, WORK)
        syn, m = _blob_synthetic(work, 70, 50, 8)
        items.append((name, work, syn, m))
    pool = tmp_path / "pool"
    out = WriteStep(str(pool), "run-1", index)(_batch(items, [True, True, False]))
    assert list(out["accepted"]) == [True, True, False]

    for k, ((name, *_), folder) in enumerate(zip(items, ("images", "images", "rejected"))):
        stored = read_raw(index.path(name)).pixels
        file = pool / folder / f"syn_mass_{k:05d}_{name}"
        got = read_raw(file)
        assert got.pixels.shape == stored.shape and got.pixels.dtype == stored.dtype
        mask = read_raw(pool / "masks" / file.name)
        assert mask.pixels.shape == stored.shape and set(np.unique(mask.pixels)) <= {0, 255}
        native_mask = mask.pixels > 127
        assert native_mask.any()
        out_px = _outside(native_mask)
        assert np.array_equal(got.pixels[out_px], stored[out_px])  # byte for byte, from the files
        assert not np.array_equal(got.pixels, stored)

    rec = json.loads((pool / "items" / "Mass-00001-fp.json").read_text())
    assert (rec["width"], rec["height"], rec["bits"], rec["resolution"]) == (1024, 1024, 16, "native")
    assert abs(rec["mask_area"] - float(read_raw(pool / "masks" / "syn_mass_00001_00000002_000.png").pixels.mean() / 255)) < 1e-6

    w = PoolWriter(str(pool))
    w.finalize({r.image_index: r for r in index.records})
    rows = {r["Image Index"]: r for r in csv.DictReader(open(pool / "Data_Entry_2017.csv"))}
    assert set(rows) == {"syn_mass_00000_00000001_000.png", "syn_mass_00001_00000002_000.png"}  # accepted only
    size = lambda r: [r[c] for c in DATA_ENTRY_HEADER[7:]]  # noqa: E731
    assert size(rows["syn_mass_00000_00000001_000.png"]) == ["256", "256", "0.171875", "0.171875"]
    assert size(rows["syn_mass_00001_00000002_000.png"]) == ["2500", "2048", "0.143", "0.143"]
    # the pool reads back as an NIH folder, with the size and spacing in its records
    pool_index = load_index(pool)
    r1 = next(r for r in pool_index.records if r.image_index == "syn_mass_00001_00000002_000.png")
    assert (r1.width, r1.height, r1.spacing_x, r1.spacing_y) == (2500, 2048, 0.143, 0.143)


def test_a_source_without_a_recorded_size_gets_the_images_own(tmp_path):
    src = _nih_like_16bit(512, seed=2)
    root = _nih_folder(tmp_path / "nih", {"00000003_000.png": src}, {"00000003_000.png": ("", "", "", "")})
    index = load_index(root)
    work = resize(src.astype(np.float32) / 65535.0, WORK)
    syn, m = _blob_synthetic(work, 50, 50, 7)
    pool = tmp_path / "pool"
    WriteStep(str(pool), "run-1", index)(_batch([("00000003_000.png", work, syn, m)], [True]))
    PoolWriter(str(pool)).finalize({r.image_index: r for r in index.records})
    row = next(csv.DictReader(open(pool / "Data_Entry_2017.csv")))
    assert [row[c] for c in DATA_ENTRY_HEADER[7:]] == ["512", "512", "", ""]


def test_an_unreadable_source_is_written_at_working_resolution_and_rejected(tmp_path):
    src = _nih_like_16bit(256, seed=4)
    root = _nih_folder(tmp_path / "nih", {"00000001_000.png": src}, {"00000001_000.png": (256, 256, 0.2, 0.2)})
    index = load_index(root)
    work = resize(src.astype(np.float32) / 65535.0, WORK)
    syn, m = _blob_synthetic(work, 50, 50, 7)
    (root / "images" / "00000001_000.png").write_bytes(b"truncated")  # gone bad since registration
    pool = tmp_path / "pool"
    out = WriteStep(str(pool), "run-1", index)(_batch([("00000001_000.png", work, syn, m)], [True]))
    assert list(out["accepted"]) == [False] and list(out["reason"]) == ["native_source_unreadable"]
    assert not (pool / "images" / "syn_mass_00000_00000001_000.png").exists()
    got = read_raw(pool / "rejected" / "syn_mass_00000_00000001_000.png")
    assert got.pixels.shape == (WORK, WORK)
    rec = json.loads((pool / "items" / "Mass-00000-fp.json").read_text())
    assert rec["resolution"] == "working" and rec["accepted"] is False and rec["width"] == WORK


def test_write_step_needs_the_sources_index(tmp_path):
    with pytest.raises(TypeError, match="needs the sources' index"):
        WriteStep(str(tmp_path / "pool"), "run-1", str(tmp_path))
    with pytest.raises(ValueError, match=r"feather must lie in \[0, 4\]"):
        WriteStep(str(tmp_path / "pool"), "run-1", load_index(_nih_folder(
            tmp_path / "nih", {"00000001_000.png": _nih_like_16bit(32)}, {"00000001_000.png": (32, 32, 1, 1)})), feather=6)


def test_write_item_checks_sizes_and_encodes_16_bit(tmp_path):
    w = PoolWriter(str(tmp_path / "pool"))
    row = ProvenanceRow(item_id="Mass-1", image="a.png", finding="Mass", source="s.png", source_patient=1, reference="",
                        mask="a.png", mask_area=0.0, prob_before=None, prob_after=None, accepted=True, reason="accepted",
                        registration_ncc=None, generator_run="r", seed=0, width=64, height=64, bits=16)
    px = _nih_like_16bit(64)
    w.write_item(row, px, np.zeros((64, 64), bool))
    assert np.array_equal(read_raw(tmp_path / "pool" / "images" / "a.png").pixels, px)
    with pytest.raises(ValueError, match=r"mask of shape \(32, 32\) does not match its image \(64, 64\)"):
        w.write_item(row, px, np.zeros((32, 32), bool))
    with pytest.raises(ValueError, match="the row says 64x64.*the image is 48x48"):
        w.write_item(row, _nih_like_16bit(48), np.zeros((48, 48), bool))
    with pytest.raises(ValueError, match="the row says 16-bit, the image is uint8"):
        w.write_item(row, (px >> 8).astype(np.uint8), np.zeros((64, 64), bool))


def test_an_old_pool_still_loads_and_leaves_size_and_spacing_empty(tmp_path):
    pool = tmp_path / "pool"
    w = PoolWriter(str(pool))
    old = {  # an items/ record as pools before issue 19 wrote them: no width, height, bits, resolution
        "item_id": "Mass-00000-old", "image": "syn_old.png", "finding": "Mass", "source": "00000001_000.png",
        "source_patient": 1, "reference": "r.png", "mask": "syn_old.png", "mask_area": 0.01, "prob_before": 0.1,
        "prob_after": 0.5, "accepted": True, "reason": "accepted", "registration_ncc": 0.9, "generator_run": "g",
        "seed": 0,
    }
    (pool / "images" / "syn_old.png").write_bytes(encode_png(np.full((128, 128), 0.5, np.float32)))
    (pool / "items" / "Mass-00000-old.json").write_text(json.dumps(old))
    rows = w.rows()
    assert len(rows) == 1 and rows[0].width is None and rows[0].resolution is None
    from augment.data.nih import Record

    src = Record("00000001_000.png", ("No Finding",), 1, width=1024, height=1024, spacing_x=0.143, spacing_y=0.143)
    assert w.finalize({"00000001_000.png": src})["Mass"]["accepted"] == 1
    row = next(csv.DictReader(open(pool / "Data_Entry_2017.csv")))
    # a 128 px image is not on the source's 1024 px grid: its spacing is not the source's
    assert [row[c] for c in DATA_ENTRY_HEADER[7:]] == ["", "", "", ""]
