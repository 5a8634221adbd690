"""Fixtures for the registration tests: real NIH pairs and a synthetic known deformation."""

from __future__ import annotations

import math

import pytest
import torch

from augment.data.io import read_image
from augment.registration.smoothing import gaussian_blur

N_REAL = 12  # images read from the shared sample (6 pairs)


@pytest.fixture(scope="session")
def real_images(nih_sample) -> dict[int, torch.Tensor]:
    """The first ``N_REAL`` NIH sample images, sorted by name, at 128 and 256 pixels: {size: (N, 1, s, s)}."""
    paths = sorted((nih_sample / "images").glob("*.png"))[:N_REAL]
    return {
        size: torch.stack([torch.from_numpy(read_image(p, size)) for p in paths])[:, None] for size in (128, 256)
    }


@pytest.fixture(scope="session")
def real_pairs(real_images) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{size: (fixed, moving)}: six pairs of different patients' radiographs."""
    return {s: (x[0::2].contiguous(), x[1::2].contiguous()) for s, x in real_images.items()}


def smooth_texture(b: int, size: int, seed: int = 0) -> torch.Tensor:
    """(b, 1, size, size) smooth random texture in [0, 1] with gradients everywhere."""
    g = torch.Generator().manual_seed(seed)
    x = gaussian_blur(torch.rand(b, 1, size, size, generator=g), 3.0)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    return (x - lo) / (hi - lo)


def smooth_field(b: int, size: int, amplitude: float = 2.5) -> torch.Tensor:
    """(b, 2, size, size) smooth sinusoidal displacement in pixels (max ``amplitude``)."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    ux = amplitude * torch.sin(2 * math.pi * yy / 64) * torch.cos(2 * math.pi * xx / 80)
    uy = amplitude * torch.cos(2 * math.pi * xx / 64) * torch.sin(2 * math.pi * yy / 90)
    return torch.stack([ux, uy])[None].repeat(b, 1, 1, 1)


@pytest.fixture(scope="session")
def known_deformation() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fixed, moving, true_field) at 128x128, 2 pairs: fixed = moving pulled through true_field."""
    from augment.registration.warp import warp_image

    moving = smooth_texture(2, 128)
    field = smooth_field(2, 128)
    return warp_image(moving, field), moving, field


@pytest.fixture
def texture() -> torch.Tensor:
    """(2, 1, 64, 64) smooth random texture in [0, 1]."""
    return smooth_texture(2, 64, seed=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Run each registration test single-threaded (torch and SimpleITK), then restore.

    The CI and development machines have 2 cores shared with other jobs; tiny
    multi-threaded ops stall there on every thread barrier. Results do not depend on it.
    """
    import SimpleITK as sitk

    torch_threads = torch.get_num_threads()
    sitk_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    yield
    torch.set_num_threads(torch_threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(sitk_threads)
