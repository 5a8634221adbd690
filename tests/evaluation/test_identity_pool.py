"""bench/identity_pool.py: the unpainted control pool mirrors a pool's items exactly."""

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from augment.synthesis.pool import PoolWriter, ProvenanceRow
from augment.data.io import read_image
from augment.data.nih import DataError, load_index

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def pool(tmp_path, make_nih_folder):
    data = make_nih_folder([(f"{i:08d}_000.png", "No Finding", i) for i in range(4)], size=48, name="data")
    idx = load_index(data)
    writer = PoolWriter(str(tmp_path / "pool"))
    yy, xx = np.mgrid[0:32, 0:32]
    for i in range(6):
        src = idx.records[i % 4]
        mask = ((yy - 12 - i) ** 2 + (xx - 16) ** 2 < 20).astype(np.float32)
        img = np.where(mask > 0, 1.0, read_image(idx.path(src), 32))  # "painted": a white blob
        name = f"syn_mass_{i:05d}_{src.image_index}"
        writer.write_item(
            ProvenanceRow(item_id=f"Mass-{i:05d}", image=name, finding="Mass", source=src.image_index, source_patient=src.patient_id,
                          reference="", mask=name, mask_area=float(mask.mean()), prob_before=0.2, prob_after=0.3,
                          accepted=i % 2 == 0, reason="accepted" if i % 2 == 0 else "no_rise", registration_ncc=0.9,
                          generator_run="g", seed=i),
            img, mask,
        )
    writer.finalize()
    return tmp_path / "pool", data, idx


def test_identity_pool_holds_every_item_unpainted_with_its_mask(pool, tmp_path):
    src_pool, data, idx = pool
    mod = _load("identity_pool")
    out = tmp_path / "identity"
    assert mod.build(src_pool, data, out) == 6
    rows = list(csv.DictReader((out / "provenance.csv").open()))
    assert len(rows) == 6 and {r["reason"] for r in rows} == {"identity"} and {r["accepted"] for r in rows} == {"True"}
    entry = load_index(out)
    assert len(entry) == 6 and all(r.labels == ("Mass",) for r in entry.records)
    for r in rows:
        got = read_image(out / "images" / r["image"])
        assert got.shape == (32, 32)  # the pool's size, not the data's 48
        assert np.abs(got - read_image(idx.path(r["source"]), 32)).max() <= 1 / 255 + 1e-6  # the source, nothing painted
        assert np.array_equal(read_image(out / "masks" / r["mask"]) > 0.5, read_image(src_pool / "masks" / r["mask"]) > 0.5)
    table = _load("generators_table")
    assert table.acceptance(out) == {"items": 6, "gated": False}
    assert table.acceptance(src_pool)["accepted"] == 3
    assert mod.build(src_pool, data, out) == 6  # a re-run keeps the finished items


def test_identity_pool_names_a_source_missing_from_the_data(pool, tmp_path, make_nih_folder):
    src_pool, _, _ = pool
    other = make_nih_folder([("99999999_000.png", "No Finding", 9)], size=32, name="other")
    with pytest.raises(DataError, match="not in"):
        _load("identity_pool").build(src_pool, other, tmp_path / "identity")
    with pytest.raises(DataError, match="provenance.csv"):
        _load("identity_pool").build(tmp_path / "nowhere", other, tmp_path / "x")
