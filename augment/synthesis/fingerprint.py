"""A generator's fingerprint: which weights painted a pool's images.

The fingerprint is part of every plan item's id and is recorded in the pool
(``pool.json``), so a re-run with other weights never mistakes another generator's
items for its own. It is the SHA-256 of the checkpoint file's bytes (a checkpoint holds
``{state_dict, config, version}``, so it covers config and weights): cheap (a few hundred
MB/s) and deterministic. A folder is fingerprinted through the checkpoint it holds; an
MLflow or object-store URI (``runs:/...``, ``models:/...``, ``s3://...``) by its text,
since reading it would mean a download (a ``models:/<name>/<version>`` or ``runs:/`` URI
names fixed weights).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["GENERATOR_NAMES", "generator_fingerprint"]

GENERATOR_NAMES = ("generator.pt",)
_CHUNK = 1 << 20


def generator_fingerprint(checkpoint: str | os.PathLike) -> str:
    """Stable short hash (16 hex digits) of a generator checkpoint.

    Args:
        checkpoint: a checkpoint file, a folder holding one (``generator.pt`` or any ``*.pt``),
            ``file://...``, an MLflow / object-store URI, or ``"paste"`` (the copy-paste
            control, which has no checkpoint).

    Raises:
        ValueError: a local path that does not exist, or a folder without a checkpoint.
    """
    from augment.tracking import ARTIFACT_URI_SCHEMES, local_checkpoint

    text = str(checkpoint)
    if text == "paste":  # augment.synthesis.steps.PASTE: no generator, the carried lesion itself
        return "paste"
    if text.startswith(ARTIFACT_URI_SCHEMES):
        return "uri-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(text.removeprefix("file://"))
    if not path.exists():
        raise ValueError(
            f"generator checkpoint {text!r} not found; expected a checkpoint file, a folder holding one or an "
            "MLflow URI; train one with python -m jobs.train_generator"
        )
    if path.is_dir():
        path = local_checkpoint(path, GENERATOR_NAMES)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:16]
