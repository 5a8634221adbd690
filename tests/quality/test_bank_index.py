"""The near-copy bank as an index folder: round trip, atomic build, the gate with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from augment.config import QualityConfig
from augment.findings import FINDINGS
from augment.quality import evaluate_gate
from augment.quality.bank_index import BankIndexSpec, build_bank_index, load_bank_index, write_bank_index
from augment.quality.near_copy import TrainingBank, patient_codes, real_nearest_neighbours

SPEC = BankIndexSpec(size=16, read_size=32, encoder_size=16, dim=8, epochs=3, fit_images=64, batch_size=5)


def _images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    a, b = torch.rand(n, 1, 1, 1, generator=g), torch.rand(n, 1, 1, 1, generator=g)
    x = 0.3 + 0.4 * (a * xx + b * yy) / 2 + 0.05 * torch.randn(n, 1, size, size, generator=g)
    return x.clamp(0, 1)


def _ids(n: int) -> list[str]:
    return [f"{k // 2:08d}_{k % 2:03d}.png" for k in range(n)]  # two images per patient


def _batches(ids, imgs, b=5):
    for a in range(0, len(ids), b):
        yield ids[a : a + b], imgs[a : a + b]


def test_round_trip_ids_thumbnails_embeddings(tmp_path):
    imgs, ids = _images(12), _ids(12)
    info = write_bank_index(_batches(ids, imgs), 12, tmp_path / "idx", SPEC)
    assert info.count == 12 and info.feature_space == "autoencoder" and info.dim == 8
    bank = load_bank_index(tmp_path / "idx")
    assert bank.ids == tuple(ids)
    assert isinstance(bank.pixels, np.memmap) and bank.pixels.dtype == np.float16
    want = F.interpolate(imgs, size=(16, 16), mode="area").flatten(1).numpy()
    np.testing.assert_allclose(np.asarray(bank.pixels, np.float32), want, atol=1e-3)
    emb = np.asarray(bank.embeddings)
    assert isinstance(bank.embeddings, np.memmap) and emb.shape == (12, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # the carried encoder embeds the same images to the stored embeddings: one space
    again = F.normalize(bank.embed_fn(imgs), dim=1).numpy()
    np.testing.assert_allclose(again, emb, atol=1e-5)
    # the real-to-real floor is the other-patient nearest neighbour, by brute force
    cd = 1.0 - emb @ emb.T
    codes = patient_codes(ids)[0]
    cd[codes[:, None] == codes[None, :]] = np.inf
    np.testing.assert_allclose(bank.real_embedding_nn, cd.min(1), atol=1e-5)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["version"] == 1 and meta["count"] == 12 and meta["thumbnail_dtype"] == "float16"


def test_built_from_an_nih_folder_skips_unreadable_images(make_nih_folder, tmp_path):
    from augment.data.nih import load_index

    rows = [(i, "No Finding", int(i[:8])) for i in _ids(10)]
    root = make_nih_folder(rows, size=32)
    (root / "images" / rows[3][0]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    info = build_bank_index(load_index(root), tmp_path / "idx", SPEC, progress=False)
    assert info.count == 9 and info.skipped == 1
    bank = load_bank_index(tmp_path / "idx")
    assert rows[3][0] not in bank.ids and len(bank.pixels) == 9


def test_failed_build_leaves_no_index_and_keeps_the_old_one(tmp_path):
    imgs, ids = _images(10), _ids(10)

    def broken():
        yield ids[:5], imgs[:5]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        write_bank_index(broken(), 10, tmp_path / "idx", SPEC)
    assert list(tmp_path.iterdir()) == []  # no index, no partial folder
    write_bank_index(_batches(ids, imgs), 10, tmp_path / "idx", SPEC)
    with pytest.raises(OSError):
        write_bank_index(broken(), 10, tmp_path / "idx", SPEC)
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    assert load_bank_index(tmp_path / "idx").ids == tuple(ids)


def test_bad_input_and_bad_folders_raise_value_error(tmp_path):
    imgs, ids = _images(6), _ids(6)
    with pytest.raises(ValueError, match="capacity"):
        write_bank_index(_batches(ids, imgs), 4, tmp_path / "a", SPEC)
    with pytest.raises(ValueError, match="repeat"):
        write_bank_index([(["x.png"] * 6, imgs)], 6, tmp_path / "b", SPEC)
    with pytest.raises(ValueError, match="not a near-copy bank index"):
        load_bank_index(tmp_path)
    write_bank_index(_batches(ids, imgs), 6, tmp_path / "c", SPEC)
    meta = json.loads((tmp_path / "c" / "index.json").read_text())
    (tmp_path / "c" / "index.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="build it again"):
        load_bank_index(tmp_path / "c")
    with pytest.raises(ValueError, match="multiple of 16"):
        BankIndexSpec(encoder_size=20)
    assert not list(tmp_path.glob(".*partial"))


def test_chunked_search_matches_one_pass(monkeypatch):
    import augment.quality.near_copy as mem

    g = torch.Generator().manual_seed(3)
    bank_imgs, q = torch.rand(37, 1, 8, 8, generator=g), torch.rand(3, 1, 8, 8, generator=g)
    emb = torch.randn(37, 5, generator=g)
    ids = _ids(37)
    bank = TrainingBank.build(bank_imgs, ids, embed_fn=lambda x: emb[: len(x)] if len(x) == 37 else emb[:0], size=8, batch_size=64)
    mask = (torch.rand(3, 1, 8, 8, generator=g) > 0.5).float()
    qe = torch.randn(3, 5, generator=g)
    whole = bank.nearest(q, mask, qe, exclude=[ids[0], None, ids[7]])
    monkeypatch.setattr(mem, "CHUNK_ELEMENTS", 64 * 5)  # 5 rows per pixel chunk
    chunked = bank.nearest(q, mask, qe, exclude=[ids[0], None, ids[7]])
    torch.testing.assert_close(whole.pixel_distance, chunked.pixel_distance)
    assert whole.pixel_index.tolist() == chunked.pixel_index.tolist()
    assert whole.embedding_index.tolist() == chunked.embedding_index.tolist()
    e = F.normalize(emb, dim=1)
    np.testing.assert_allclose(real_nearest_neighbours(e, patient_codes(ids)[0], chunk_elements=40),
                               real_nearest_neighbours(e, patient_codes(ids)[0]), atol=1e-6)


def test_gate_with_an_index_flags_a_planted_copy_and_passes_a_new_image(tmp_path):
    imgs, ids = _images(40, seed=1), _ids(40)
    write_bank_index(_batches(ids, imgs), 40, tmp_path / "idx", BankIndexSpec(size=16, read_size=32, encoder_size=16, dim=8, epochs=20))
    bank = load_bank_index(tmp_path / "idx")
    source = imgs[0:1]  # patient 0; the planted copy is of another patient's image
    mask = torch.ones(1, 1, 32, 32)
    copy = imgs[10:11].clone()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    new = (0.5 + 0.3 * torch.sin(12 * xx) * torch.cos(9 * yy))[None, None]  # nothing like the bank
    targets = torch.zeros(2, len(FINDINGS))
    targets[:, FINDINGS.index("Nodule")] = 1

    def prob_fn(x):
        return torch.full((len(x), len(FINDINGS)), 0.5) if torch.equal(x, torch.cat([source, source])) else torch.full((len(x), len(FINDINGS)), 0.9)

    def classifier_embed(x):
        raise AssertionError("the index's own encoder, not the classifier's, embeds the queries")

    ds = evaluate_gate(torch.cat([source, source]), torch.cat([copy, new]), torch.cat([mask, mask]), targets,
                       QualityConfig(margin=0.1), prob_fn, embed_fn=classifier_embed, bank=bank,
                       source_ids=[ids[0], ids[0]])
    assert ds[0].reasons == ("pixel_near_copy", "embedding_near_copy")
    assert ds[0].pixel_nn_id == ids[10] and ds[0].embedding_nn_id == ids[10]
    assert ds[0].pixel_nn_distance < 1e-3
    assert ds[1].accepted, ds[1]
    assert ds[1].pixel_nn_distance > 0.05 and ds[1].embedding_nn_distance > bank.embedding_floor(0.01)
