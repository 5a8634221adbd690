"""Tiny data for the baseline tests, and one torch thread per test (2 shared CPU cores)."""

import pytest
import torch

from augment.config import BaselineConfig
from augment.findings import FINDINGS, finding_index
from augment.inpainting.train import GeneratorTrainingSet

TINY = dict(base_channels=8, latent_dim=8, batch_size=8, mixture_components=3)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_cfg() -> BaselineConfig:
    return BaselineConfig(**TINY)


@pytest.fixture(scope="session")
def tiny_data() -> GeneratorTrainingSet:
    """12 smooth 32x32 images; the odd ones show a bright 'Nodule' disc with its mask."""
    n, s = 12, 32
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    images = torch.empty(n, 1, s, s)
    labels = torch.zeros(n, len(FINDINGS))
    rows, masks = [], []
    for i in range(n):
        a, b = torch.rand(2, generator=g)
        img = 0.3 + 0.3 * (a * xx + b * yy) + 0.02 * torch.randn(s, s, generator=g)
        if i % 2:
            cy, cx = 8 + int(torch.randint(16, (1,), generator=g)), 8 + int(torch.randint(16, (1,), generator=g))
            disc = (yy * s - cy) ** 2 + (xx * s - cx) ** 2 < 16
            img = torch.where(disc, torch.full_like(img, 0.9), img)
            labels[i, finding_index("Nodule")] = 1
            rows.append(i)
            masks.append(disc[None])
        images[i, 0] = img.clamp(0, 1)
    nod = torch.zeros(len(rows), len(FINDINGS))
    nod[:, finding_index("Nodule")] = 1
    return GeneratorTrainingSet(
        images=images,
        labels=labels,
        mask_rows=torch.tensor(rows),
        masks=torch.stack(masks),
        mask_findings=nod,
        healthy_rows=torch.arange(0, n, 2),
    )
