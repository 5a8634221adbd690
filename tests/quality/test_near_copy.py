"""Nearest-neighbour search against brute force."""

import pytest
import torch
import torch.nn.functional as F

from augment.quality.near_copy import TrainingBank


def test_masked_rms_matches_brute_force_and_excludes_ids():
    g = torch.Generator().manual_seed(0)
    bank_imgs = torch.rand(5, 1, 8, 8, generator=g)
    q = torch.rand(2, 1, 8, 8, generator=g)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:5, 2:6] = 1
    mask[1, :, :, :4] = 1
    bank = TrainingBank.build(bank_imgs, [f"i{k}" for k in range(5)], size=8)
    nn = bank.nearest(q, mask, exclude=[None, "i3"])
    for b in range(2):
        m = mask[b, 0] > 0
        d = torch.stack([((bank_imgs[k, 0] - q[b, 0])[m] ** 2).mean().sqrt() for k in range(5)])
        if b == 1:
            d[3] = float("inf")
        assert int(nn.pixel_index[b]) == int(d.argmin())
        torch.testing.assert_close(nn.pixel_distance[b], d.min(), rtol=1e-4, atol=1e-5)
    assert nn.embedding_distance is None


def test_embedding_cosine_distance():
    imgs = torch.rand(3, 1, 8, 8)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    bank = TrainingBank.build(imgs, ["a", "b", "c"], embed_fn=lambda x: emb[: x.shape[0]], size=4)
    nn = bank.nearest(imgs[:1], None, torch.tensor([[2.0, 0.1]]), exclude=["a"])
    expected = 1 - F.cosine_similarity(torch.tensor([[2.0, 0.1]]), torch.tensor([[1.0, 1.0]]))
    assert bank.ids[int(nn.embedding_index[0])] == "c"
    torch.testing.assert_close(nn.embedding_distance, expected)


def test_patient_of_nih_ids():
    from augment.quality.near_copy import patient_of

    assert patient_of("00000013_005.png") == "00000013"
    assert patient_of("syn_mass_00001_00000002_001.png") == "syn_mass_00001_00000002_001"
    assert patient_of("real_3.png") == "real_3"
    assert patient_of("plain.png") == "plain"


def test_source_patient_images_are_excluded():
    g = torch.Generator().manual_seed(1)
    bank_imgs = torch.rand(3, 1, 8, 8, generator=g)
    ids = ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    bank = TrainingBank.build(bank_imgs, ids, size=8)
    # the query is a copy of the source's follow-up image: that one must not count as its neighbour
    nn = bank.nearest(bank_imgs[1:2], None, exclude=["00000001_000.png"])
    assert bank.ids[int(nn.pixel_index[0])] == "00000002_000.png"
    assert float(nn.pixel_distance[0]) > 0.1


def test_embedding_floor_is_the_other_patient_quantile():
    imgs = torch.rand(4, 1, 8, 8)
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.6, 0.8]])
    ids = ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"]
    bank = TrainingBank.build(imgs, ids, embed_fn=lambda x: emb[: x.shape[0]], size=4)
    e = F.normalize(emb, dim=1)
    cd = 1 - e @ e.T
    # nearest other-patient neighbour of each image (images 0 and 1 share patient 1)
    expected = torch.stack([cd[0, [2, 3]].min(), cd[1, [2, 3]].min(), cd[2, [0, 1, 3]].min(), cd[3, [0, 1, 2]].min()])
    torch.testing.assert_close(bank.real_embedding_nn, expected)
    assert bank.embedding_floor(0.0) == pytest.approx(float(expected.min()), abs=1e-6)
    one_patient = TrainingBank.build(imgs[:2], ids[:2], embed_fn=lambda x: emb[: x.shape[0]], size=4)
    assert one_patient.embedding_floor(0.01) is None
