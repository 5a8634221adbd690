"""One interface for every generator: the flow model and the LSGAN/VAE baselines paint alike.

A :class:`Painter` is what the augmentation job, the verifier's hard negatives and the
service hold. It is loaded from a checkpoint by the checkpoint's ``kind`` through a registry
(:data:`LOADERS`: ``"flow"`` the flow-matching inpainter of :mod:`augment.inpainting`;
``"lsgan"``, ``"vae"``, ``"gmvae"`` the baselines of :mod:`augment.baselines`) and paints with

    painter.paint(image, mask, findings, cfg, generator=..., base=...) -> InpaintResult

whatever its kind, so no caller asks which kind it holds. This module sits above both model
packages; neither imports the other or this one. A new generator registers a loader with
:func:`register` and paints through the same call.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from augment.baselines.base import BaselineGenerator
from augment.baselines.registry import BASELINE_KINDS, baseline_from_payload
from augment.checkpoint import CheckpointError, read_checkpoint
from augment.config import InpaintingConfig
from augment.inpainting.model import ARCHITECTURE_KEYS, flow_from_payload
from augment.inpainting.sampler import InpaintResult, inpaint

__all__ = ["Painter", "FlowPainter", "BaselinePainter", "LOADERS", "register", "load_painter"]

Generators = torch.Generator | Sequence[torch.Generator] | None


@runtime_checkable
class Painter(Protocol):
    """Paints findings into masked regions (see :func:`augment.inpainting.inpaint` for the arguments).

    Attributes:
        kind: the checkpoint's kind (``"flow"``, ``"lsgan"``, ...).
        model: the network (``parameters()`` counts it; ``.to(device)`` moves it).
    """

    kind: str
    model: nn.Module

    def paint(self, image: torch.Tensor, mask: torch.Tensor, findings: torch.Tensor, cfg: InpaintingConfig,
              generator: Generators = None, base: torch.Tensor | None = None) -> InpaintResult: ...

    def settings(self, profile: InpaintingConfig) -> InpaintingConfig:
        """The inpainting settings to paint with: the profile's, with the checkpoint's own
        architecture settings (crop size, network) where it has them."""
        ...


@dataclass
class FlowPainter:
    """The flow-matching inpainter: integrates the velocity field inside the mask."""

    model: nn.Module
    kind: str = "flow"

    def paint(self, image: torch.Tensor, mask: torch.Tensor, findings: torch.Tensor, cfg: InpaintingConfig,
              generator: Generators = None, base: torch.Tensor | None = None) -> InpaintResult:
        return inpaint(self.model, image, mask, findings, cfg, generator=generator, base=base)

    def settings(self, profile: InpaintingConfig) -> InpaintingConfig:
        own = self.model.cfg
        return profile.model_copy(update={k: getattr(own, k) for k in ARCHITECTURE_KEYS})


@dataclass
class BaselinePainter:
    """An LSGAN or VAE baseline: samples a crop of the findings from noise and pastes it inside
    the mask. It sees no surrounding pixels, so the lesion coupling's ``base`` is not used."""

    model: BaselineGenerator

    @property
    def kind(self) -> str:
        return self.model.kind

    def paint(self, image: torch.Tensor, mask: torch.Tensor, findings: torch.Tensor, cfg: InpaintingConfig,
              generator: Generators = None, base: torch.Tensor | None = None) -> InpaintResult:
        t0 = time.perf_counter()
        out = self.model.paint(image, mask, findings, generator, region=cfg.region, context=cfg.context)
        maskb = mask > 0.5 if mask.dtype != torch.bool else mask
        return InpaintResult(images=out.images, masks=maskb, boxes=out.boxes, nfe=1, seconds=time.perf_counter() - t0)

    def settings(self, profile: InpaintingConfig) -> InpaintingConfig:
        return profile


Loader = Callable[[dict, "str | os.PathLike[str]", "str | torch.device"], Painter]
"""``loader(payload, source, map_location) -> Painter``, the model in eval mode on ``map_location``."""


def _flow(payload: dict, source: str | os.PathLike[str], map_location: str | torch.device) -> Painter:
    return FlowPainter(flow_from_payload(payload, source, map_location))


def _baseline(payload: dict, source: str | os.PathLike[str], map_location: str | torch.device) -> Painter:
    return BaselinePainter(baseline_from_payload(payload, source).to(map_location).eval())


LOADERS: dict[str, Loader] = {"flow": _flow, **{kind: _baseline for kind in BASELINE_KINDS}}


def register(kind: str, loader: Loader) -> None:
    """Make checkpoints of ``kind`` loadable: ``loader(payload, source, map_location) -> Painter``."""
    LOADERS[kind] = loader


def load_painter(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Painter:
    """Load any generator checkpoint (read with ``weights_only=True``), in eval mode on ``map_location``.

    Raises:
        CheckpointError (a ValueError): missing, unreadable or unsafe file; a kind no loader is
            registered for; the kind's own checks (version, findings).
    """
    p = Path(path)
    payload = read_checkpoint(p, "generator checkpoint", map_location=map_location,
                              hint="train one with python -m jobs.train_generator [--generator vae|lsgan]")
    kind = str(payload.get("kind", "flow"))  # flow checkpoints from before the key had none
    if kind not in LOADERS:
        raise CheckpointError(f"{p} is a {kind!r} checkpoint; generator kinds are {sorted(LOADERS)}")
    return LOADERS[kind](payload, p, map_location)
