"""Class-conditional least-squares GAN (Mao et al. 2017), the paper's GAN baseline.

* Generator (DCGAN): [z, embed(findings)] -> ConvTranspose + BatchNorm + ReLU up to
  ``crop_size`` -> tanh. ``embed`` is a linear map of the 14-dim multi-hot findings to
  :data:`EMBED_DIM` values, concatenated to z.
* Discriminator (DCGAN): Conv stride 2 + LeakyReLU(0.2) (BatchNorm from the second layer)
  down to 4x4, then an unconditional score plus a projection term <embed_D(findings),
  pooled features> (Miyato & Koyama 2018): all-zero findings (healthy) leave only the
  unconditional score.
* Losses (a = 0, b = c = 1): D minimises 1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2], G minimises
  1/2 E[(D(G(z)) - 1)^2]. Adam lr 2e-4, betas (0.5, 0.999); G is updated
  ``g_steps_per_d`` times per D update (see :mod:`augment.baselines.train`).

Images in the networks are in [-1, 1]; :meth:`LSGAN.decode` maps to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from augment.baselines.base import N_FINDINGS, BaselineGenerator
from augment.baselines.layers import DownStack, UpStack, dcgan_init
from augment.config import BaselineConfig

__all__ = ["EMBED_DIM", "LSGANGenerator", "LSGANDiscriminator", "LSGAN"]

EMBED_DIM = 32
"""Size of the generator's findings embedding, concatenated to z."""


class LSGANGenerator(nn.Module):
    """G(z (B, latent_dim), findings (B, 14)) -> (B, 1, S, S) in [-1, 1]."""

    def __init__(self, latent_dim: int, base: int, levels: int) -> None:
        super().__init__()
        self.embed = nn.Linear(N_FINDINGS, EMBED_DIM)
        self.up = UpStack(latent_dim + EMBED_DIM, base, levels)

    def forward(self, z: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(torch.cat([z, self.embed(findings)], dim=1)))


class LSGANDiscriminator(nn.Module):
    """D(x (B, 1, S, S) in [-1, 1], findings (B, 14)) -> (B,) unbounded scores."""

    def __init__(self, base: int, levels: int) -> None:
        super().__init__()
        self.down = DownStack(base, levels)
        c = self.down.out_channels
        self.score = nn.Conv2d(c, 1, 4, 1, 0)
        self.project = nn.Linear(N_FINDINGS, c, bias=False)

    def forward(self, x: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        uncond = self.score(h).flatten()
        proj = (self.project(findings) * h.mean(dim=(2, 3))).sum(dim=1)
        return uncond + proj


class LSGAN(BaselineGenerator):
    """Class-conditional LSGAN at ``crop_size`` (both networks; samples come from the generator).

    Args:
        cfg: ``latent_dim``, ``base_channels``.
        crop_size: 16, 32, 64, 128 or 256 (one upsampling block per doubling above 4x4).
        context: crop margin for :meth:`inpaint`.
    """

    kind = "lsgan"

    def __init__(self, cfg: BaselineConfig, crop_size: int, context: float = 0.5) -> None:
        super().__init__(cfg, crop_size, context)
        self.generator = LSGANGenerator(cfg.latent_dim, cfg.base_channels, self.levels)
        self.discriminator = LSGANDiscriminator(cfg.base_channels, self.levels)
        self.apply(dcgan_init)

    def generate(self, z: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) fakes in [-1, 1]."""
        return self.generator(z, findings)

    def decode(self, z: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
        return (self.generate(z, findings) + 1.0) * 0.5

    def d_loss(self, real: torch.Tensor, findings: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Least-squares discriminator loss on real crops (B, 1, S, S) in [-1, 1] and fakes from ``z``.

        Fakes are conditioned on the real crops' ``findings`` and detached (G is not updated).
        """
        if real.shape[-2:] != (self.crop_size, self.crop_size):
            raise ValueError(f"real crops must be {self.crop_size}x{self.crop_size}, got {tuple(real.shape)}")
        with torch.no_grad():
            fake = self.generate(z, findings)
        d_real = self.discriminator(real, findings)
        d_fake = self.discriminator(fake, findings)
        return 0.5 * F.mse_loss(d_real, torch.ones_like(d_real)) + 0.5 * F.mse_loss(d_fake, torch.zeros_like(d_fake))

    def g_loss(self, findings: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Least-squares generator loss: 1/2 E[(D(G(z)) - 1)^2]."""
        d_fake = self.discriminator(self.generate(z, findings), findings)
        return 0.5 * F.mse_loss(d_fake, torch.ones_like(d_fake))
