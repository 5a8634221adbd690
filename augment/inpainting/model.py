"""The velocity network: a diffusers ``UNet2DModel`` conditioned on the mask, the known pixels,
the crop's position, the time and the findings.

Input channels (all at the model's resolution S = ``crop_size``):

    0  x_t                      the point on the path, model space [-1, 1] (+ noise)
    1  mask                     1 = repaint
    2  known pixels             x_1 * (1 - mask), model space
    3  y coordinate             row of each crop pixel in the full image, in [-1, 1]
    4  x coordinate             column, in [-1, 1]

The coordinate maps tell the network where the crop lies in the radiograph and at what
scale (their slope), so one network serves crops anywhere. Time enters through the UNet's
sinusoidal embedding (t in [0, 1] scaled by 1000); the findings, a multi-hot vector over
the 14 NIH findings plus a "null" flag for classifier-free guidance, go through a linear
projection into the UNet's class embedding (``class_embed_type="identity"``), which is
added to the time embedding. Label dropout replaces the findings by the null flag.

Checkpoints are ``{state_dict, config, version}`` (EMA weights), written atomically.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ContextManager

import torch

from torch import nn

from augment.checkpoint import CheckpointError, check_format, read_checkpoint, weights_of
from augment.config import InpaintingConfig
from augment.data.io import atomic_torch_save
from augment.findings import FINDINGS

__all__ = [
    "CHECKPOINT_VERSION",
    "IN_CHANNELS",
    "Conditioning",
    "VelocityNet",
    "build_model",
    "to_model_space",
    "to_image_space",
    "autocast",
    "cpu_has_fast_bf16",
    "make_ema",
    "ema_copy",
    "save_checkpoint",
    "ARCHITECTURE_KEYS",
    "check_flow_payload",
    "flow_from_payload",
    "load_checkpoint",
    "load_generator",
    "inference_layout",
]

CHECKPOINT_VERSION = 1
IN_CHANNELS = 5
N_FINDINGS = len(FINDINGS)
TIME_SCALE = 1000.0


def to_model_space(image: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> [-1, 1] (where the base noise is standard normal)."""
    return image * 2.0 - 1.0


def to_image_space(x: torch.Tensor) -> torch.Tensor:
    """Model space -> images in [0, 1] (clamped)."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Conditioning:
    """What the velocity network is told besides x_t and t.

    Attributes:
        mask: (B, 1, S, S) float in {0, 1}; 1 = repaint.
        known: (B, 1, S, S) known pixels in model space, zero inside the mask.
        coords: (B, 2, S, S) the crop pixels' (y, x) position in the full image, in [-1, 1].
        findings: (B, 14) float multi-hot over :data:`augment.findings.FINDINGS`.
        null: (B,) bool; True drops the findings (the unconditional branch of guidance).
    """

    mask: torch.Tensor
    known: torch.Tensor
    coords: torch.Tensor
    findings: torch.Tensor
    null: torch.Tensor | None = None

    def with_null(self, null: torch.Tensor | bool) -> "Conditioning":
        b = self.findings.shape[0]
        if isinstance(null, bool):
            null = torch.full((b,), null, dtype=torch.bool, device=self.findings.device)
        return replace(self, null=null)

    def repeat(self, n: int) -> "Conditioning":
        """Stack ``n`` copies along the batch (for guidance: one forward pass over 2B)."""
        cat = lambda x: None if x is None else torch.cat([x] * n)  # noqa: E731
        return Conditioning(cat(self.mask), cat(self.known), cat(self.coords), cat(self.findings), cat(self.null))


def _norm_groups(channels: list[int]) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if all(c % g == 0 for c in channels):
            return g
    return 1


class VelocityNet(nn.Module):
    """v(x_t, t | mask, known, coords, findings), built from :class:`InpaintingConfig`.

    Args:
        cfg: the inpainting config (``crop_size``, ``block_out_channels``,
            ``layers_per_block``, ``mid_attention`` shape the UNet).

    Raises:
        ValueError: ``crop_size`` not divisible by the UNet's total downsampling.
    """

    def __init__(self, cfg: InpaintingConfig) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        boc = [int(c) for c in cfg.block_out_channels]
        if not boc:
            raise ValueError("inpainting.block_out_channels must name at least one level, e.g. [32, 64, 64]")
        down = 2 ** (len(boc) - 1)
        if cfg.crop_size % down:
            raise ValueError(
                f"inpainting.crop_size={cfg.crop_size} must be divisible by {down} "
                f"(the UNet halves it {len(boc) - 1} times); use e.g. {max(down, cfg.crop_size // down * down)}"
            )
        self.cfg = cfg
        n = len(boc)
        self.unet = UNet2DModel(
            sample_size=cfg.crop_size,
            in_channels=IN_CHANNELS + (N_FINDINGS if cfg.label_planes else 0),
            out_channels=1,
            block_out_channels=tuple(boc),
            layers_per_block=cfg.layers_per_block,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            add_attention=cfg.mid_attention,
            attention_head_dim=8,
            norm_num_groups=_norm_groups(boc),
            class_embed_type="identity",
        )
        temb = boc[0] * 4
        self.label_proj = nn.Linear(N_FINDINGS + 1, temb)
        nn.init.zeros_(self.label_proj.weight)
        nn.init.zeros_(self.label_proj.bias)

    def label_embedding(self, findings: torch.Tensor, null: torch.Tensor | None) -> torch.Tensor:
        """(B, 14) multi-hot and (B,) null flags -> (B, temb) class embedding."""
        if null is None:
            null = torch.zeros(findings.shape[0], dtype=torch.bool, device=findings.device)
        keep = (~null).to(findings.dtype).unsqueeze(1)
        lab = torch.cat([findings * keep, null.to(findings.dtype).unsqueeze(1)], dim=1)
        return self.label_proj(lab)

    @staticmethod
    def label_planes(findings: torch.Tensor, null: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """(B, 14) multi-hot -> (B, 14, S, S): each finding's flag inside the mask, zero outside
        and for the unconditional (null) branch. Tells every pixel of the hole what to paint."""
        f = findings
        if null is not None:
            f = f * (~null).to(f.dtype).unsqueeze(1)
        return f[:, :, None, None] * mask

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Velocity at (x_t, t).

        Args:
            x_t: (B, 1, S, S) model space.
            t: (B,) times in [0, 1] (a scalar tensor is broadcast).
            cond: the :class:`Conditioning` for the batch.

        Returns:
            (B, 1, S, S) float32 velocity.
        """
        b = x_t.shape[0]
        if x_t.ndim != 4 or x_t.shape[1] != 1:
            raise ValueError(f"x_t must have shape (B, 1, S, S), got {tuple(x_t.shape)}")
        if cond.findings.shape != (b, N_FINDINGS):
            raise ValueError(f"findings must have shape ({b}, {N_FINDINGS}), got {tuple(cond.findings.shape)}")
        t = t.reshape(-1).to(x_t.device, torch.float32)
        if t.numel() == 1:
            t = t.expand(b)
        parts = [x_t, cond.mask.to(x_t.dtype), cond.known.to(x_t.dtype), cond.coords.to(x_t.dtype)]
        if self.cfg.label_planes:
            parts.append(self.label_planes(cond.findings.to(x_t.dtype), cond.null, cond.mask.to(x_t.dtype)))
        sample = torch.cat(parts, dim=1)
        emb = self.label_embedding(cond.findings.to(x_t.dtype), cond.null)
        out = self.unet(sample, t * TIME_SCALE, class_labels=emb).sample
        return out.float()


def build_model(cfg: InpaintingConfig) -> VelocityNet:
    """A freshly initialised :class:`VelocityNet` for ``cfg``."""
    return VelocityNet(cfg)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX).

    Without it, bf16 autocast on CPU is emulated and was measured ~100x *slower* than fp32
    for the UNet on an AVX2-only EPYC; with it, ~1.4x faster.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, bf16: bool) -> ContextManager:
    """bf16 autocast on CUDA, and on CPUs with native bf16; a no-op otherwise."""
    enabled = bool(bf16) and (device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()))
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def make_ema(model: nn.Module, decay: float) -> Any:
    """An exponential moving average of ``model``'s parameters (diffusers' ``EMAModel``).

    Its decay warms up as (1 + step) / (10 + step), capped at ``decay``, so short runs are
    not dominated by the initial weights.
    """
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=decay)


def ema_copy(model: nn.Module, ema: Any | None) -> nn.Module:
    """A copy of ``model`` holding the EMA weights (the model itself when ``ema`` is None)."""
    out = copy.deepcopy(model)
    if ema is not None:
        ema.copy_to(out.parameters())
    return out.eval()


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    cfg: InpaintingConfig,
    train_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write ``{state_dict, config, version, ...}`` (temp file, fsync, rename).

    Args:
        path: target file; folders are created.
        model: the network whose weights are saved (pass the EMA copy for sampling).
        cfg: the config that rebuilds it.
        train_state: optional state to resume training (raw weights, optimiser, EMA, step,
            losses, generator state).
        extra: small JSON-like metadata.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "kind": "flow",
        "state_dict": weights_of(model),
        "config": cfg.model_dump(mode="json"),
        "version": CHECKPOINT_VERSION,
        "findings": list(FINDINGS),
        "extra": extra or {},
    }
    if train_state is not None:
        payload["train_state"] = train_state
    return atomic_torch_save(payload, p)


ARCHITECTURE_KEYS: tuple[str, ...] = ("crop_size", "block_out_channels", "layers_per_block", "mid_attention", "label_planes")
"""The inpainting settings that shape the network: a checkpoint's own always apply to it."""


def check_flow_payload(payload: dict[str, Any], source: str | os.PathLike = "<checkpoint>") -> dict[str, Any]:
    """Check a loaded flow checkpoint dict: its kind, version and finding names.

    Raises:
        CheckpointError (a ValueError): another kind (load it with
            :func:`augment.painter.load_painter`), another version, other findings.
    """
    kind = payload.get("kind", "flow")  # flow checkpoints from before the key had none
    if kind != "flow":
        raise CheckpointError(f"{source} is a {kind!r} checkpoint, not the flow model's; load any generator with "
                              "augment.painter.load_painter")
    return check_format(payload, source, "flow", CHECKPOINT_VERSION, "retrain with python -m jobs.train_generator", FINDINGS)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a flow generator checkpoint.

    Loaded with ``weights_only=True`` (:func:`augment.checkpoint.read_checkpoint`): a file
    holding other pickled objects is refused without running them.

    Raises:
        CheckpointError (a ValueError): missing, unreadable or unsafe file, not a flow
            generator checkpoint, other version, other findings.
    """
    p = Path(path)
    payload = read_checkpoint(p, "generator checkpoint", map_location=map_location,
                              hint="train one with python -m jobs.train_generator")
    return check_flow_payload(payload, p)


def flow_from_payload(payload: dict[str, Any], source: str | os.PathLike = "<checkpoint>",
                      map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the velocity network from a loaded checkpoint dict (config included), in eval mode
    on ``map_location`` and in the CPU's inference layout.

    Raises:
        CheckpointError: see :func:`check_flow_payload`.
    """
    check_flow_payload(payload, source)
    config = dict(payload["config"])
    config.setdefault("label_planes", False)  # checkpoints from before the option had none
    config.pop("device", None)  # checkpoints from before the one device rule (resources.use_gpu) carried their own
    cfg = InpaintingConfig.model_validate(config)
    model = VelocityNet(cfg)
    model.load_state_dict(payload["state_dict"])
    return inference_layout(model.to(map_location).eval())


def load_generator(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The flow model of a checkpoint, in eval mode. A generator of any kind (flow, LSGAN, VAE)
    loads with :func:`augment.painter.load_painter`."""
    return flow_from_payload(load_checkpoint(path, map_location), path, map_location)


def inference_layout(model: nn.Module) -> nn.Module:
    """Channels-last weights for sampling on a CPU (in place; returns ``model``).

    oneDNN runs the UNet's convolutions ~30% faster per pass in this layout (a batch of 32
    64x64 crops: 0.63 s against 0.90 s on 2 AVX2 cores), with the same outputs to 1e-5. A
    training step is slower in it (0.54 s against 0.46 s), so only loaded models get it. It
    applies to weights on the CPU; a model loaded there and moved to a GPU keeps the layout
    (cuDNN supports it; its speed there was not measured here).
    """
    try:
        on_cpu = next(model.parameters()).device.type == "cpu"
    except StopIteration:
        return model
    return model.to(memory_format=torch.channels_last) if on_cpu else model
