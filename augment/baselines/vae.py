"""Class-conditional VAE and a Gaussian-mixture-prior VAE (GMVAE), the paper's VAE baselines.

:class:`ConditionalVAE` (Kingma & Welling 2014; conditional as in Sohn et al. 2015): a conv
encoder (Conv stride 2 + BatchNorm + LeakyReLU down to 4x4) whose features, with the
14-dim multi-hot findings appended, give q(z | x, y) = N(mu, diag sigma^2); a DCGAN-style
decoder p(x | z, y) from [z, y]. Likelihood: Bernoulli (``reconstruction="bce"``, the
decoder's sigmoid is the mean image) or unit Gaussian (``"mse"``, 1/2 squared error). Loss
= reconstruction + ``beta`` KL (the negative ELBO when beta = 1), summed over pixels and
latents and divided by the pixel count (nats per pixel), averaged over the batch.

:class:`GMVAE` is the *simpler learned-mixture-prior VAE*, not Dilokthanakul et al.'s
(2016) two-level model: the same encoder and decoder, but the prior is a learned mixture
p(z) = sum_k pi_k N(m_k, diag s_k^2) of ``mixture_components`` Gaussians (means, log
variances and mixture logits are parameters). The KL term has no closed form and is the
one-sample estimate log q(z | x, y) - log p(z) at the reparameterised z. Sampling picks a
component k ~ pi, then z ~ N(m_k, s_k^2); the findings condition the decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from augment.baselines.base import N_FINDINGS, BaselineGenerator
from augment.baselines.layers import DownStack, UpStack, dcgan_init
from augment.config import BaselineConfig

__all__ = ["VAELoss", "ConditionalVAE", "GMVAE"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class VAELoss:
    """One batch's loss terms, per pixel, batch means (scalar tensors; ``loss`` carries gradients).

    Attributes:
        loss: reconstruction + beta * kl.
        recon: negative log-likelihood of the crop (BCE, or 1/2 squared error).
        kl: KL(q(z | x, y) || p(z)) (GMVAE: its one-sample estimate).
    """

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def _diag_normal_logpdf(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(logvar)) summed over the last dimension (broadcasting)."""
    return -0.5 * (((z - mean) ** 2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)


class ConditionalVAE(BaselineGenerator):
    """Class-conditional convolutional VAE at ``crop_size``.

    Args:
        cfg: ``latent_dim``, ``base_channels``, ``beta``, ``reconstruction``.
        crop_size: 16, 32, 64, 128 or 256.
        context: crop margin for :meth:`inpaint`.
    """

    kind = "vae"

    def __init__(self, cfg: BaselineConfig, crop_size: int, context: float = 0.5) -> None:
        super().__init__(cfg, crop_size, context)
        self.encoder = DownStack(cfg.base_channels, self.levels)
        feat = self.encoder.out_channels * 16
        self.to_latent = nn.Linear(feat + N_FINDINGS, 2 * cfg.latent_dim)
        self.decoder = UpStack(cfg.latent_dim + N_FINDINGS, cfg.base_channels, self.levels)
        self.apply(dcgan_init)

    def encode(self, x: torch.Tensor, findings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops (B, 1, S, S) in [0, 1] and findings (B, 14) -> (mean, log variance), each (B, latent_dim)."""
        h = self.encoder(x * 2.0 - 1.0).flatten(1)
        mu, logvar = self.to_latent(torch.cat([h, findings], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def logits(self, z: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) decoder output before the sigmoid."""
        return self.decoder(torch.cat([z, findings], dim=1))

    def decode(self, z: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z, findings))

    def kl(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """(B,) KL(N(mu, exp(logvar)) || N(0, I)), closed form (``z`` unused)."""
        return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(dim=1)

    def loss(self, x: torch.Tensor, findings: torch.Tensor, generator: torch.Generator | None = None) -> VAELoss:
        """Negative ELBO (with ``beta``) of crops ``x`` (B, 1, S, S) in [0, 1].

        Args:
            x: target crops in [0, 1].
            findings: (B, 14) multi-hot conditioning.
            generator: CPU generator for the reparameterisation noise.

        Raises:
            ValueError: crops of another size or outside [0, 1].
        """
        s = self.crop_size
        if x.ndim != 4 or x.shape[1:] != (1, s, s):
            raise ValueError(f"crops must have shape (B, 1, {s}, {s}), got {tuple(x.shape)}")
        if float(x.min()) < 0.0 or float(x.max()) > 1.0:
            raise ValueError(f"crops must be in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
        findings = self._check_findings(findings, x.shape[0])
        mu, logvar = self.encode(x, findings)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = self.logits(z, findings)
        if self.config.reconstruction == "bce":
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=(1, 2, 3))
        else:
            rec = 0.5 * ((torch.sigmoid(logits) - x) ** 2).sum(dim=(1, 2, 3))
        kl = self.kl(z, mu, logvar)
        pixels = float(s * s)
        rec_m, kl_m = rec.mean() / pixels, kl.mean() / pixels
        return VAELoss(loss=rec_m + self.config.beta * kl_m, recon=rec_m, kl=kl_m)


class GMVAE(ConditionalVAE):
    """:class:`ConditionalVAE` with a learned K-component Gaussian-mixture prior (K = ``mixture_components``)."""

    kind = "gmvae"

    def __init__(self, cfg: BaselineConfig, crop_size: int, context: float = 0.5) -> None:
        super().__init__(cfg, crop_size, context)
        k, d = cfg.mixture_components, cfg.latent_dim
        g = torch.Generator().manual_seed(k * 7919 + d)  # spread the means; independent of the global RNG
        self.prior_means = nn.Parameter(torch.randn(k, d, generator=g))
        self.prior_logvars = nn.Parameter(torch.zeros(k, d))
        self.prior_logits = nn.Parameter(torch.zeros(k))

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(B,) log p(z) under the mixture."""
        logw = F.log_softmax(self.prior_logits, dim=0)
        comp = _diag_normal_logpdf(z[:, None, :], self.prior_means[None], self.prior_logvars.clamp(-8.0, 8.0)[None])
        return torch.logsumexp(logw[None] + comp, dim=1)

    def kl(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """(B,) one-sample estimate log q(z | x, y) - log p(z)."""
        return _diag_normal_logpdf(z, mu, logvar) - self.prior_log_prob(z)

    def prior_sample(self, generators: list[torch.Generator]) -> torch.Tensor:
        probs = F.softmax(self.prior_logits.detach().float().cpu(), dim=0)
        means = self.prior_means.detach().float().cpu()
        std = torch.exp(0.5 * self.prior_logvars.detach().float().cpu().clamp(-8.0, 8.0))
        out = []
        for g in generators:
            k = int(torch.multinomial(probs, 1, generator=g))
            out.append(means[k] + std[k] * torch.randn(means.shape[1], generator=g))
        return torch.stack(out)
