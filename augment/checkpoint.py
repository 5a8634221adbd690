"""One checkpoint format for every model: ``{kind, state_dict, config, version, findings, ...}``.

Every model this package saves (classifier, flow generator, VAE / GMVAE / LSGAN baselines,
verifier) writes its ``kind``, the config that rebuilds it and its format ``version``;
:func:`check_format` is the one check every loader applies. Every model and every training state it resumes from is a ``torch.save`` file of plain data: tensors,
numbers, strings, lists and dicts. :func:`read_checkpoint` loads them with
``torch.load(weights_only=True)``, which refuses any pickled object that is not such data,
so a crafted ``.pt`` (from a shared disk, or an MLflow server someone else can write to)
cannot run code in the process that loads it: it fails with :class:`CheckpointError`
before any of its content is used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["CheckpointError", "read_checkpoint", "check_format", "unwrap", "weights_of"]


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or of another format; the message says which."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped model's ``state_dict`` as contiguous CPU tensors (what a checkpoint stores)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}


def read_checkpoint(
    path: str | os.PathLike,
    what: str,
    required: Iterable[str] = ("state_dict", "config", "version"),
    map_location: str | torch.device = "cpu",
    hint: str = "",
) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check its keys.

    Args:
        path: the ``.pt`` file.
        what: what the file should be, for messages (``"generator checkpoint"``).
        required: keys the dict must hold.
        map_location: where tensors are loaded.
        hint: how to make a good one, appended to the not-found message.

    Raises:
        CheckpointError: missing file; unreadable or corrupt; holds pickled objects other
            than plain data (refused unexecuted); not a dict with ``required``.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: {what} not found" + (f"; {hint}" if hint else ""))
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        text = str(exc)
        forbidden = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if forbidden:
            raise CheckpointError(
                f"{p} holds a pickled {forbidden.group(1)}, not only tensors and plain data; refused without "
                f"running it. Only load {what}s written by cxr-augment, from a source you trust"
            ) from None
        reason = re.search(r"WeightsUnpickler error: *(.+)", text.replace("\n", " "))
        first = reason.group(1).strip() if reason else (text.strip().splitlines() or [""])[0]
        raise CheckpointError(f"{p} is not a readable {what} ({type(exc).__name__}: {first[:200]})") from None
    keys = list(required)
    if not isinstance(payload, dict) or not set(keys) <= payload.keys():
        got = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{p} is not a {what}: expected keys {', '.join(keys)}; got {got}")
    return payload


def check_format(payload: dict[str, Any], source: str | os.PathLike, kind: str, version: int, retrain: str,
                 findings: Iterable[str] | None = None) -> dict[str, Any]:
    """The one check of a loaded checkpoint: its kind, its format version and its finding names.

    Args:
        payload: from :func:`read_checkpoint`.
        source: the file, for messages.
        kind: the kind the loader reads (a file from before the ``kind`` key is taken as it).
        version: the format version this code reads; any other is refused.
        retrain: how to make a current one (``"retrain with python -m jobs.train_classifier"``).
        findings: the finding names the model must predict, in order; None skips the check.

    Raises:
        CheckpointError: another kind, another version, other findings.
    """
    got = payload.get("kind", kind)
    if got != kind:
        raise CheckpointError(f"{source} is a {got!r} checkpoint, not a {kind}")
    v = int(payload["version"])
    if v != version:
        fix = "upgrade cxr-augment" if v > version else retrain
        raise CheckpointError(f"{source} is a {kind} checkpoint of format {v}, {'newer' if v > version else 'older'} "
                              f"than this code's {version}; {fix}")
    if findings is not None and list(payload.get("findings", findings)) != list(findings):
        raise CheckpointError(f"{source} was trained on other finding names {payload.get('findings')}; {retrain}")
    return payload
