"""DCGAN-style conv stacks shared by the baselines: 4x4 <-> S x S in ``levels`` 2x steps.

Widths double per level away from the image, starting at ``base`` next to it and capped at
:data:`MAX_CHANNELS`; for S = 64 and base 32: 32 (32x32), 64 (16x16), 128 (8x8), 256 (4x4).
Weights start as in DCGAN (Radford et al. 2016): conv N(0, 0.02), batch-norm scale N(1, 0.02).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MAX_CHANNELS", "widths", "UpStack", "DownStack", "dcgan_init"]

MAX_CHANNELS = 512


def widths(base: int, levels: int) -> list[int]:
    """Channel widths from the image side inwards: ``levels`` values, ``base * 2**i`` capped."""
    return [min(base * 2**i, MAX_CHANNELS) for i in range(levels)]


class UpStack(nn.Module):
    """(B, in_dim) vector -> (B, 1, S, S) raw output (no final activation), S = 4 * 2**levels.

    ConvTranspose(4, 1, 0) to 4x4, then ``levels - 1`` ConvTranspose(4, 2, 1) + BatchNorm +
    ReLU, then a last ConvTranspose(4, 2, 1) to one channel.
    """

    def __init__(self, in_dim: int, base: int, levels: int) -> None:
        super().__init__()
        ch = widths(base, levels)[::-1]  # 4x4 first
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_dim, ch[0], 4, 1, 0, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU(True)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers.append(nn.ConvTranspose2d(ch[-1], 1, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.net(v[:, :, None, None])


class DownStack(nn.Module):
    """(B, 1, S, S) -> (B, C, 4, 4) features: Conv(4, 2, 1) + LeakyReLU(0.2), then
    ``levels - 1`` Conv(4, 2, 1) + BatchNorm + LeakyReLU(0.2) (no norm on the first, as DCGAN).

    Attributes:
        out_channels: C, the width at 4x4.
    """

    def __init__(self, base: int, levels: int, in_channels: int = 1) -> None:
        super().__init__()
        ch = widths(base, levels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*layers)
        self.out_channels = ch[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation, for ``model.apply(dcgan_init)``."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
