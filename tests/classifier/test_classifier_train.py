"""The training loop on tiny data."""

import numpy as np
import pytest
import torch

from augment.classifier.model import build_classifier
from augment.classifier.train import augment_batch, fit, make_loader, pos_weight_from_labels, train_one_epoch
from augment.config import ClassifierConfig
from augment.data.nih import load_index

torch.set_num_threads(1)
CPU = torch.device("cpu")


def test_loss_decreases_on_a_few_batches():
    torch.manual_seed(0)
    cfg = ClassifierConfig(arch="efficientnet-b0", image_size=32, lr=1e-3)
    model = build_classifier(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 32, 32, generator=g)
    y = (torch.rand(16, 14, generator=g) < 0.2).float()
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = [train_one_epoch(model, batches, opt, loss_fn, CPU, amp=False)[0] for _ in range(4)]
    assert losses[-1] < losses[0] * 0.8, losses


def test_fit_on_a_tiny_folder(make_nih_folder):
    rows = [(f"{i:08d}_000.png", "Effusion" if i % 2 else "No Finding", i) for i in range(8)]
    index = load_index(make_nih_folder(rows, size=32))
    cfg = ClassifierConfig(arch="efficientnet-b0", image_size=32, epochs=2, batch_size=4, pos_weight="balanced")
    torch.manual_seed(0)
    model = build_classifier(cfg)
    seen = []
    res = fit(
        model,
        make_loader(index, cfg, shuffle=True),
        make_loader(index, cfg, shuffle=False),
        cfg,
        device=CPU,
        on_epoch=lambda rec, snap: seen.append((rec, snap()["epoch"])),
    )
    assert [r.epoch for r in res.history] == [1, 2]
    assert [s for _, s in seen] == [1, 2]
    for r in res.history:
        assert r.loss_gap == pytest.approx(r.val_loss - r.train_loss)
        assert np.isfinite(r.train_loss) and np.isfinite(r.val_loss)
    assert res.metrics.finding("Effusion").auc is not None
    assert res.metrics.finding("Hernia").auc is None
    assert not res.stopped_early


def test_fit_resumes_from_a_snapshot(make_nih_folder):
    rows = [(f"{i:08d}_000.png", "Mass" if i % 2 else "No Finding", i) for i in range(4)]
    index = load_index(make_nih_folder(rows, size=32))
    cfg = ClassifierConfig(arch="efficientnet-b0", image_size=32, epochs=2, batch_size=4, augment=False)
    torch.manual_seed(0)
    model = build_classifier(cfg)
    snaps = []
    fit(model, make_loader(index, cfg, shuffle=True), make_loader(index, cfg, shuffle=False), cfg,
        device=CPU, on_epoch=lambda rec, snap: snaps.append(snap()))
    fresh = build_classifier(cfg)
    res = fit(fresh, make_loader(index, cfg, shuffle=True), make_loader(index, cfg, shuffle=False), cfg,
              device=CPU, resume=snaps[-1])
    assert [r.epoch for r in res.history] == [1, 2]  # nothing left to train: history comes from the snapshot
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_augmentation_is_light_seeded_and_in_range():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    x = (0.2 + 0.3 * xx + 0.3 * yy).expand(4, 1, 32, 32).contiguous()
    a = augment_batch(x, torch.Generator().manual_seed(3))
    b = augment_batch(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert 0 < (a - x).abs().mean() < 0.1


def test_pos_weight_counts_negatives_per_positive():
    y = np.zeros((10, 14), dtype=np.float32)
    y[:2, 0] = 1  # 2 positives, 8 negatives
    w = pos_weight_from_labels(y)
    assert w[0] == pytest.approx(4.0)
    assert w[5] == pytest.approx(1.0)  # no positives: neutral, not infinite


@pytest.mark.gpu
def test_bf16_training_on_gpu():
    cfg = ClassifierConfig(arch="efficientnet-b0", image_size=64, lr=1e-3)
    torch.manual_seed(0)
    model = build_classifier(cfg).cuda().to(memory_format=torch.channels_last)
    x, y = torch.rand(8, 1, 64, 64), (torch.rand(8, 14) < 0.2).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    dev = torch.device("cuda")
    losses = [train_one_epoch(model, [(x, y)], opt, loss_fn, dev, amp=True)[0] for _ in range(5)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
