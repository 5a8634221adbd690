"""EfficientNet multi-label classifier over grayscale radiographs.

The network is ``efficientnet_pytorch``'s EfficientNet (B4 by default, B0 for quick runs)
with a one-channel stem and 14 outputs, one logit per NIH finding (:data:`FINDINGS`);
"No Finding" is the all-zero label vector, not an output (see :mod:`augment.findings`).
Inputs follow the library convention, float32 in [0, 1] of shape (B, 1, H, W); the model
standardises them itself, so callers never normalise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from efficientnet_pytorch import EfficientNet
from torch import nn

from augment.config import ClassifierConfig
from augment.findings import FINDINGS

__all__ = ["Classifier", "FeatureLayer", "build_classifier", "PretrainedWeightsError", "IMAGE_MEAN", "IMAGE_STD"]

# ImageNet's statistics averaged over RGB: right for pretrained stems, harmless from scratch.
IMAGE_MEAN = 0.449
IMAGE_STD = 0.226

FeatureLayer = Literal["head", "stride16"]


class PretrainedWeightsError(FileNotFoundError):
    """``pretrained: imagenet`` without a usable local weights file; the message says where to put it."""


def _stride(block: nn.Module) -> int:
    s = block._block_args.stride
    return int(s[0] if isinstance(s, (list, tuple)) else s)


class Classifier(nn.Module):
    """EfficientNet with a grayscale stem and one logit per finding.

    Args:
        arch: ``"efficientnet-b0"`` ... ``"efficientnet-b7"``.
        image_size: the training side length (sets the static "same" padding).
        num_classes: outputs; 14 for the NIH findings.
        batch_norm_momentum: in efficientnet_pytorch's (TensorFlow) convention; 0.9 updates
            the running statistics fast enough for a few hundred images (0.99, the
            library's default, leaves eval-mode outputs almost constant on small sets).
    """

    def __init__(
        self,
        arch: str = "efficientnet-b4",
        image_size: int = 128,
        num_classes: int = len(FINDINGS),
        batch_norm_momentum: float = 0.9,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.image_size = image_size
        self.net = EfficientNet.from_name(
            arch,
            in_channels=in_channels,
            num_classes=num_classes,
            batch_norm_momentum=batch_norm_momentum,
            image_size=image_size,
        )
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD), persistent=False)
        # Index of the last block that runs at stride 16 (before the final downsampling).
        stride, last16 = 2, 0
        for i, block in enumerate(self.net._blocks):
            stride *= _stride(block)
            if stride <= 16:
                last16 = i
        self._last_stride16 = last16

    @property
    def num_features(self) -> int:
        """Width of :meth:`embed`'s output (1280 for B0, 1792 for B4)."""
        return self.net._conv_head.out_channels

    def forward_features(self, x: torch.Tensor, layer: FeatureLayer = "head") -> tuple[torch.Tensor, torch.Tensor]:
        """Logits together with one convolutional feature map (for Grad-CAM).

        Args:
            x: (B, 1, H, W) in [0, 1].
            layer: ``"head"``, the output of the last convolutional block (head conv, batch
                norm, Swish; stride 32), or ``"stride16"``, the last block at stride 16
                (twice the resolution).

        Returns:
            ``(logits (B, num_classes), features (B, C, h, w))``.
        """
        net = self.net
        x = (x - self.mean) / self.std
        x = net._swish(net._bn0(net._conv_stem(x)))
        picked = None
        n = len(net._blocks)
        for idx, block in enumerate(net._blocks):
            rate = net._global_params.drop_connect_rate
            if rate:
                rate *= float(idx) / n
            x = block(x, drop_connect_rate=rate)
            if idx == self._last_stride16:
                picked = x
        x = net._swish(net._bn1(net._conv_head(x)))
        if layer == "head":
            picked = x
        elif layer != "stride16":
            raise ValueError(f"layer must be 'head' or 'stride16', got {layer!r}")
        logits = self._classify(x)
        return logits, picked

    def _classify(self, fmap: torch.Tensor) -> torch.Tensor:
        pooled = self.net._avg_pooling(fmap).flatten(1)
        return self.net._fc(self.net._dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.forward_features(x, "head")[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, (B, 1, H, W) -> (B, num_features): the pooled last conv block.

        Used for reference choice and FID-style comparisons; call under ``torch.no_grad()``
        and in ``eval()`` mode for deterministic values.
        """
        x = (x - self.mean) / self.std
        return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)


def _load_imagenet(model: Classifier, weights_path: str) -> None:
    """Load a 3-channel ImageNet state dict; the RGB stem is summed into the gray one."""
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "_conv_stem.weight" not in state:
        raise PretrainedWeightsError(
            f"{weights_path} is not an efficientnet_pytorch state dict (no '_conv_stem.weight'); "
            f"use the file efficientnet_pytorch publishes for {model.arch} (e.g. efficientnet-b4-6ed6700e.pth)"
        )
    stem = state["_conv_stem.weight"]
    if stem.ndim == 4 and stem.shape[1] == 3:
        state = dict(state)
        # Sum keeps the response to a gray image equal to that of the RGB image (R = G = B).
        state["_conv_stem.weight"] = stem.sum(dim=1, keepdim=True)
    own = model.net.state_dict()
    for key in ("_fc.weight", "_fc.bias"):
        if key in state and state[key].shape != own[key].shape:
            del state[key]  # ImageNet's 1000-class head: our 14-finding head stays freshly initialised
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise PretrainedWeightsError(
            f"{weights_path} does not fit {model.arch}: shape mismatch in {bad[:3]}; "
            "check classifier.arch against the weights file"
        )
    result = model.net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("_fc.")]
    if missing:
        raise PretrainedWeightsError(f"{weights_path} lacks weights for {missing[:3]} of {model.arch}")


def build_classifier(cfg: ClassifierConfig, load_pretrained: bool = True) -> Classifier:
    """Build the classifier a :class:`ClassifierConfig` describes.

    Args:
        cfg: the classifier section of the run profile.
        load_pretrained: read ImageNet weights when ``cfg.pretrained == "imagenet"``
            (``False`` when the weights come from a checkpoint anyway).

    Raises:
        PretrainedWeightsError: ``pretrained: imagenet`` with no ``weights_path``, or a file
            that is missing or does not fit; nothing is downloaded.
    """
    model = Classifier(cfg.arch, cfg.image_size, len(FINDINGS), cfg.batch_norm_momentum)
    if cfg.pretrained == "imagenet" and load_pretrained:
        if not cfg.weights_path:
            raise PretrainedWeightsError(
                "classifier.pretrained is 'imagenet' but classifier.weights_path is not set; nothing is "
                f"downloaded: put efficientnet_pytorch's ImageNet file for {cfg.arch} (e.g. "
                "efficientnet-b4-6ed6700e.pth from its GitHub releases) on local disk and set "
                "classifier.weights_path to it, or set classifier.pretrained: none"
            )
        path = Path(cfg.weights_path).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(
                f"classifier.weights_path {path} does not exist; download efficientnet_pytorch's ImageNet "
                f"weights for {cfg.arch} on a machine with internet, copy the .pth there, "
                "or set classifier.pretrained: none"
            )
        _load_imagenet(model, str(path))
    return model
