"""A feature space the quality gate never used: a small autoencoder trained on real images.

The gate keeps the synthetic images its classifier scores as showing the finding, so FID or
near-copy distances measured in that classifier's embedding flatter the accepted images: they
were selected in that very space. :func:`fit_encoder` trains a convolutional autoencoder on
real training images only (no synthetic image, no label, no gate) and returns its bottleneck
as a feature extractor, :class:`EncoderFeatures`, for FID/KID and near-copy search.

It is a weak, generic feature space (it learns what it needs to reconstruct chest images at
low resolution, not findings), and it is independent of the gate and of the generators: what
the realism measures need. A torchxrayvision DenseNet with local weights
(:class:`augment.evaluation.distance.XRVFeatures`) is the stronger choice where a user has them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from augment.data.io import validate_batch

__all__ = ["Autoencoder", "EncoderFeatures", "fit_encoder"]


class Autoencoder(nn.Module):
    """(B, 1, S, S) in [0, 1] -> (B, 1, S, S); four stride-2 convolutions to a ``dim``-D code.

    Args:
        size: image side S, a multiple of 16.
        dim: bottleneck size (the feature dimension).
        width: channels of the first convolution.
    """

    def __init__(self, size: int = 64, dim: int = 64, width: int = 16) -> None:
        super().__init__()
        if size % 16 or size < 16:
            raise ValueError(f"encoder size must be a multiple of 16 (>= 16), got {size}")
        w, s4 = width, size // 16
        self.size, self.dim = size, dim
        self.enc = nn.Sequential(
            nn.Conv2d(1, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(4 * w * s4 * s4, dim),
        )
        self.dec = nn.Sequential(
            nn.Linear(dim, 4 * w * s4 * s4), nn.Unflatten(1, (4 * w, s4, s4)), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(4 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(w, 1, 4, 2, 1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc((x - 0.5) / 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dec(self.encode(x)))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x.float()
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@dataclass
class EncoderFeatures:
    """The trained encoder as a feature extractor: (N, 1, H, W) in [0, 1] -> (N, dim) NumPy.

    Attributes:
        model: the autoencoder (eval mode).
        losses: mean reconstruction MSE of each training epoch.
        n_train: images it was trained on.
    """

    model: Autoencoder
    losses: list[float]
    n_train: int
    name: str = "encoder"

    def __call__(self, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
        validate_batch(images, "images")
        x = _resize(images.cpu(), self.model.size)
        with torch.no_grad():
            return torch.cat([self.model.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def fit_encoder(images: torch.Tensor, size: int = 64, dim: int = 64, epochs: int = 30, batch_size: int = 32,
                lr: float = 2e-3, seed: int = 0) -> EncoderFeatures:
    """Train an :class:`Autoencoder` on real images (MSE, Adam, horizontal flips).

    Args:
        images: (N, 1, H, W) in [0, 1], real training images only (N >= 4).
        size: side the images are resized to.
        dim: feature dimension.
        epochs, batch_size, lr: training.
        seed: seeds the weights and batches; the global torch RNG is left as it was.
    """
    validate_batch(images, "images")
    if len(images) < 4:
        raise ValueError(f"the encoder needs at least 4 real training images, got {len(images)}")
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    x = _resize(images.cpu(), size)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Autoencoder(size, dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(epochs):
        perm, total = torch.randperm(len(x), generator=gen), 0.0
        for start in range(0, len(x), batch_size):
            xb = x[perm[start : start + batch_size]]
            flip = torch.rand(len(xb), generator=gen) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.mse_loss(model(xb), xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        losses.append(total / len(x))
    return EncoderFeatures(model.eval(), losses, len(x))
