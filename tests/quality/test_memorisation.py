"""Nearest-neighbour search against brute force."""

import torch
import torch.nn.functional as F

from augment.quality.memorisation import TrainingBank


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
