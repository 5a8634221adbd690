"""Inference helpers: probabilities and embeddings of image batches."""

from __future__ import annotations

import torch
from torch import nn

from augment.data.io import validate_batch

__all__ = ["predict_proba", "embed_images"]


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 32, amp: bool = True) -> torch.Tensor:
    """Per-finding probabilities of a batch, in eval mode.

    Args:
        model: a classifier mapping (B, 1, H, W) in [0, 1] to (B, 14) logits.
        images: (B, 1, H, W) float in [0, 1]; moved to the model's device.
        batch_size: images per forward pass.
        amp: bf16 autocast when the model is on a GPU.

    Returns:
        (B, 14) float32 probabilities on the CPU. The model's train/eval mode is restored.
    """
    validate_batch(images, "images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _device_of(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device, torch.float32)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                logits = model(x)
            out.append(torch.sigmoid(logits.float()).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def embed_images(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, D) penultimate features (``model.embed``), in eval mode."""
    validate_batch(images, "images")
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        feats = [model.embed(images[s : s + batch_size].to(device)).float().cpu() for s in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(feats)
