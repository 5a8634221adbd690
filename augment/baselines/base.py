"""The interface every baseline generator shares, and its checkpoints.

A baseline draws a whole crop of a finding from noise (it sees no surrounding pixels), so
"inpainting" with it means: crop a square around each mask exactly as the flow inpainter
does (:func:`augment.inpainting.crop.mask_boxes`), sample a crop of the requested
findings, and paste it back inside the mask only (:func:`augment.inpainting.crop.paste`).
Pixels outside the mask are bit-identical to the input. A mask covering the whole
(square) image gives a whole-image sample resized to the image.

Randomness: image ``i`` draws its latent from ``generators[i]`` alone (on CPU), and
sampling runs in eval mode (batch norm uses running statistics), so an image does not
depend on what it is batched with: same seed, same output.

Checkpoints (:mod:`augment.baselines.registry`) are ``{state_dict, config, version, kind,
findings, extra}`` with ``kind`` one of :data:`BASELINE_KINDS`; :func:`augment.painter.load_painter`
dispatches on ``kind``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from augment.config import BaselineConfig
from augment.data.io import validate_batch
from augment.findings import FINDINGS
from augment.inpainting.crop import CropBox, full_boxes, mask_boxes, paste

__all__ = [
    "BASELINE_KINDS",
    "BASELINE_CHECKPOINT_VERSION",
    "BaselineInpaint",
    "BaselineGenerator",
    "per_image_generators",
    "check_crop_size",
]

BASELINE_KINDS: tuple[str, ...] = ("lsgan", "vae", "gmvae")
BASELINE_CHECKPOINT_VERSION = 1
N_FINDINGS = len(FINDINGS)


def check_crop_size(crop_size: int) -> int:
    """The number of 2x up/downsampling levels between 4x4 and ``crop_size`` (a power of two, 16..256).

    Raises:
        ValueError: ``crop_size`` is not a power of two in [16, 256].
    """
    levels = math.log2(crop_size) - 2 if crop_size > 0 else -1
    if crop_size < 16 or crop_size > 256 or levels != int(levels):
        raise ValueError(
            f"baseline generators need inpainting.crop_size to be a power of two in [16, 256] "
            f"(e.g. 32, 64, 128), got {crop_size}"
        )
    return int(levels)


def per_image_generators(
    generators: torch.Generator | Sequence[torch.Generator] | None, batch: int
) -> list[torch.Generator]:
    """One CPU generator per image.

    Args:
        generators: a list of ``batch`` generators (used as they are), one generator (each
            image gets a generator seeded from it, in order), or None (seeds from torch's
            global generator).
        batch: the batch size B.

    Raises:
        ValueError: a list whose length is not B.
    """
    if isinstance(generators, (list, tuple)):
        if len(generators) != batch:
            raise ValueError(f"got {len(generators)} generators for a batch of {batch} images; give one per image")
        return list(generators)
    if generators is not None and not isinstance(generators, torch.Generator):
        raise TypeError(f"generators must be a torch.Generator, a list of them or None, got {type(generators).__name__}")
    seeds = torch.randint(0, 2**62, (batch,), generator=generators)
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@dataclass(frozen=True)
class BaselineInpaint:
    """What :meth:`BaselineGenerator.paint` made.

    Attributes:
        images: (B, 1, H, W) float32 in [0, 1]; equal to the input outside the mask.
        patches: (B, 1, S, S) the sampled crops, S = ``crop_size``.
        boxes: the crop box of each image, in full-image pixels.
    """

    images: torch.Tensor
    patches: torch.Tensor
    boxes: tuple[CropBox, ...]


class BaselineGenerator(nn.Module):
    """Base of the baseline generators: class-conditional sampling of ``crop_size`` crops.

    Subclasses set :attr:`kind`, build their networks in ``__init__`` and implement
    :meth:`decode` (latent and findings to images in [0, 1]); they may override
    :meth:`prior_sample` (default: standard normal).

    Args:
        cfg: the baseline config (``latent_dim``, ``base_channels``, ...).
        crop_size: output resolution S, a power of two in [16, 256].
        context: crop margin around a mask (as ``inpainting.context``) used by :meth:`inpaint`.

    Attributes:
        kind: ``"lsgan"``, ``"vae"`` or ``"gmvae"``.
        config: the :class:`BaselineConfig` given as ``cfg``. (Not ``.cfg``: callers such
            as :func:`augment.generation.generate.sampling_config` read ``generator.cfg`` as
            the flow model's :class:`InpaintingConfig` and otherwise fall back to the
            profile's, which is what a baseline needs.)
        crop_size, context: as given.
    """

    kind: ClassVar[str] = ""

    def __init__(self, cfg: BaselineConfig, crop_size: int, context: float = 0.5) -> None:
        super().__init__()
        self.levels = check_crop_size(crop_size)
        if context < 0:
            raise ValueError(f"context must be >= 0 (a fraction of the mask's side), got {context}")
        self.config = cfg
        self.crop_size = int(crop_size)
        self.context = float(context)

    # -- what subclasses provide ---------------------------------------------------------

    def decode(self, z: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) latents and (B, 14) findings -> (B, 1, S, S) images in [0, 1]."""
        raise NotImplementedError

    def prior_sample(self, generators: list[torch.Generator]) -> torch.Tensor:
        """(B, latent_dim) latents, image ``i`` drawn from ``generators[i]`` only (CPU)."""
        return torch.cat([torch.randn(1, self.config.latent_dim, generator=g) for g in generators])

    # -- shared -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        try:
            return next(self.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def _check_findings(self, findings: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        if not isinstance(findings, torch.Tensor) or findings.ndim != 2 or findings.shape[1] != N_FINDINGS:
            raise ValueError(
                f"findings must be a (B, {N_FINDINGS}) multi-hot tensor, got {getattr(findings, 'shape', type(findings))}; "
                "build it with augment.inpainting.findings_tensor(['Nodule', ...])"
            )
        if batch is not None and findings.shape[0] != batch:
            raise ValueError(f"findings must have one row per image: expected ({batch}, {N_FINDINGS}), got {tuple(findings.shape)}")
        return findings.float()

    def sample(
        self,
        findings: torch.Tensor,
        generators: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Draw one crop per row of ``findings``.

        Args:
            findings: (B, 14) multi-hot; all zeros asks for healthy tissue.
            generators: one CPU generator per image (see :func:`per_image_generators`);
                the same seed gives the same crop whatever the batch.

        Returns:
            (B, 1, S, S) float32 in [0, 1] on the model's device.
        """
        findings = self._check_findings(findings)
        gens = per_image_generators(generators, findings.shape[0])
        z = self.prior_sample(gens).to(self.device)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                out = self.decode(z, findings.to(self.device))
        finally:
            self.train(was_training)
        return out.float().clamp(0.0, 1.0)

    def paint(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        findings: torch.Tensor,
        generators: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        region: str = "crop",
        context: float | None = None,
    ) -> BaselineInpaint:
        """Sample a crop of ``findings`` for each image and paste it into the mask.

        Args:
            images: (B, 1, H, W) float in [0, 1].
            masks: (B, 1, H, W) bool or float; ``> 0.5`` is replaced.
            findings: (B, 14) multi-hot.
            generators: as in :meth:`sample`.
            region: ``"crop"`` (a square around the mask, as the flow inpainter) or
                ``"full"`` (the whole square image).
            context: crop margin; default the model's own (``inpainting.context`` at training).

        Returns:
            A :class:`BaselineInpaint`.

        Raises:
            ValueError: shapes do not match, values out of range, unknown region.
        """
        validate_batch(images, "image")
        if not isinstance(masks, torch.Tensor) or masks.shape != images.shape:
            raise ValueError(f"mask must be a tensor of the image's shape {tuple(images.shape)}, got {getattr(masks, 'shape', type(masks))}")
        findings = self._check_findings(findings, images.shape[0])
        maskb = masks > 0.5 if masks.dtype != torch.bool else masks
        maskb = maskb.cpu()
        if region == "crop":
            boxes = mask_boxes(maskb, self.crop_size, self.context if context is None else context)
        elif region == "full":
            boxes = full_boxes(images.shape)
        else:
            raise ValueError(f"unknown region {region!r}; use 'crop' or 'full'")
        patches = self.sample(findings, generators).cpu()
        out = paste(images.float().cpu(), patches, boxes, maskb.float())
        return BaselineInpaint(images=out.to(images.device), patches=patches, boxes=tuple(boxes))

    def inpaint(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        findings: torch.Tensor,
        generators: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        region: str = "crop",
        context: float | None = None,
    ) -> torch.Tensor:
        """:meth:`paint`, returning only the images (B, 1, H, W) in [0, 1]."""
        return self.paint(images, masks, findings, generators, region=region, context=context).images

    def checkpoint_config(self) -> dict[str, Any]:
        """What rebuilds this model: ``{"baseline": ..., "crop_size": ..., "context": ...}``."""
        return {"baseline": self.config.model_dump(mode="json"), "crop_size": self.crop_size, "context": self.context}
