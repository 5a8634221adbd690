"""The class-conditional LSGAN: architecture per crop size, seeded sampling, the least-squares losses."""

import pytest
import torch
from torch import nn

from augment.baselines.lsgan import LSGAN
from augment.baselines.train import fit_baseline, sample_crops
from augment.config import BaselineConfig, InpaintingConfig
from augment.inpainting.sampler import findings_tensor


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("crop, levels", [(16, 2), (32, 3), (64, 4), (128, 5)])
def test_one_upsampling_block_per_doubling_and_samples_in_unit_range(tiny_cfg, crop, levels):
    m = LSGAN(tiny_cfg, crop)
    ups = [x for x in m.generator.modules() if isinstance(x, nn.ConvTranspose2d)]
    downs = [x for x in m.discriminator.modules() if isinstance(x, nn.Conv2d)]
    assert len(ups) == levels + 1  # 1x1 -> 4x4, then `levels` 2x blocks (the last one to 1 channel)
    assert len(downs) == levels + 1  # `levels` stride-2 convs to 4x4, then the 4x4 score
    assert isinstance(m.generator.up.net[-1], nn.ConvTranspose2d)
    x = m.sample(findings_tensor(["Nodule", []]), _gens(0, 1))
    assert x.shape == (2, 1, crop, crop) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert m.discriminator(x * 2 - 1, findings_tensor(["Nodule", []])).shape == (2,)


@pytest.mark.parametrize("crop", [8, 48, 512])
def test_crop_sizes_it_cannot_make_are_refused(tiny_cfg, crop):
    with pytest.raises(ValueError, match="power of two"):
        LSGAN(tiny_cfg, crop)


def test_same_seed_same_sample_whatever_the_batch_and_other_seed_other_sample(tiny_cfg):
    torch.manual_seed(0)
    m = LSGAN(tiny_cfg, 16)
    f = findings_tensor(["Nodule", "Mass", []])
    a = m.sample(f, _gens(1, 2, 3))
    assert torch.equal(a, m.sample(f, _gens(1, 2, 3)))
    assert torch.equal(a[1:2], m.sample(f[1:2], _gens(2)))  # alone or in a batch: the same
    assert not torch.equal(a[0], m.sample(f[:1], _gens(9))[0])
    assert not torch.equal(m.sample(findings_tensor(["Nodule"]), _gens(1)), m.sample(findings_tensor([[]]), _gens(1)))


def test_discriminator_loss_goes_down_on_a_fixed_batch(tiny_cfg, tiny_data):
    torch.manual_seed(0)
    m = LSGAN(tiny_cfg, 16).train()
    batch = sample_crops(tiny_data, tiny_cfg, InpaintingConfig(crop_size=16), torch.Generator().manual_seed(0))
    z = torch.randn(batch.images.shape[0], tiny_cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(m.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g_before = {k: v.detach().clone() for k, v in m.generator.named_parameters()}
    losses = []
    for _ in range(15):
        loss = m.d_loss(batch.images * 2 - 1, batch.findings, z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, p) for (k, v), (_, p) in zip(g_before.items(), m.generator.named_parameters()))  # G untouched


def test_least_squares_losses_match_their_definition(tiny_cfg):
    torch.manual_seed(0)
    m = LSGAN(tiny_cfg, 16).eval()
    real = torch.rand(3, 1, 16, 16) * 2 - 1
    f = findings_tensor(["Nodule", [], "Mass"])
    z = torch.randn(3, tiny_cfg.latent_dim)
    d_real, d_fake = m.discriminator(real, f), m.discriminator(m.generate(z, f), f)
    assert torch.allclose(m.d_loss(real, f, z), 0.5 * ((d_real - 1) ** 2).mean() + 0.5 * (d_fake**2).mean())
    assert torch.allclose(m.g_loss(f, z), 0.5 * ((d_fake - 1) ** 2).mean())


def test_training_updates_the_generator_g_steps_per_d_times(tiny_data):
    cfg = BaselineConfig(base_channels=8, latent_dim=8, batch_size=8, g_steps_per_d=3, kind="lsgan")
    calls = []
    torch.manual_seed(0)
    model = LSGAN(cfg, 16)
    model.generator.register_forward_hook(lambda *a: calls.append(1))
    before = model.sample(findings_tensor(["Nodule"]), _gens(5))
    calls.clear()
    fit = fit_baseline("lsgan", tiny_data, cfg, 4, inpainting=InpaintingConfig(crop_size=16), model=model)
    assert len(calls) == 4 * (1 + 3)  # per step: the fakes for D, then 3 generator updates
    assert set(fit.history) == {"loss", "d_loss", "g_loss"} and len(fit.losses) == 4
    assert fit.history["loss"] == fit.history["g_loss"]
    after = fit.model.sample(findings_tensor(["Nodule"]), _gens(5))
    assert not torch.allclose(before, after)
    assert fit.model.training  # sample() puts the mode back


def test_training_is_reproducible_from_the_seed(tiny_data):
    cfg = BaselineConfig(base_channels=8, latent_dim=8, batch_size=4, seed=3)
    icfg = InpaintingConfig(crop_size=16)
    a = fit_baseline("lsgan", tiny_data, cfg, 2, inpainting=icfg)
    b = fit_baseline("lsgan", tiny_data, cfg, 2, inpainting=icfg)
    assert a.history == b.history
    assert torch.equal(a.model.sample(findings_tensor(["Nodule"]), _gens(0)), b.model.sample(findings_tensor(["Nodule"]), _gens(0)))
