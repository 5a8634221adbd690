"""Where a finding lives: attention-map sources behind one interface.

``source.finding_map(images (B, 1, H, W), finding, image_ids=None) -> (B, 1, H, W) in [0, 1]``
and :func:`to_mask` for the binary region. Sources: Grad-CAM of our classifier (the
default), NIH bounding boxes, the phantom's ground-truth masks, and a torchxrayvision
DenseNet when its weights are on local disk. :func:`build_attention_source` picks one from
the ``attention`` section of the run profile.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from augment.attention.base import AttentionSource, normalize_maps, to_mask
from augment.attention.bbox import BBoxSource
from augment.attention.gradcam import GradCAMSource, cam_from_gradients
from augment.attention.localization import mask_iou, pointing_hits
from augment.attention.phantom import PhantomMaskSource, phantom_mask_path

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from augment.config import AttentionConfig
    from augment.data.nih import NIHIndex

__all__ = [
    "AttentionSource",
    "BBoxSource",
    "GradCAMSource",
    "PhantomMaskSource",
    "build_attention_source",
    "cam_from_gradients",
    "mask_from_config",
    "mask_iou",
    "normalize_maps",
    "phantom_mask_path",
    "pointing_hits",
    "to_mask",
]


def build_attention_source(
    cfg: "AttentionConfig",
    *,
    classifier: "nn.Module | None" = None,
    index: "NIHIndex | None" = None,
    root: str | os.PathLike | None = None,
) -> AttentionSource:
    """The attention source ``cfg.source`` names.

    Args:
        cfg: the ``attention`` section.
        classifier: for ``gradcam`` (e.g. from :func:`augment.classifier.load_classifier`).
        index: for ``bbox`` (its ``BBox_List_2017.csv`` boxes).
        root: for ``phantom``, the phantom folder (default: ``index.root``).

    Raises:
        ValueError: what the chosen source needs is missing.
    """
    if cfg.source == "gradcam":
        if classifier is None:
            raise ValueError("attention.source 'gradcam' needs a trained classifier: train one first (jobs.train_classifier)")
        return GradCAMSource(classifier, cfg.gradcam_variant, cfg.gradcam_layer, cfg.batch_size)
    if cfg.source == "bbox":
        if index is None:
            raise ValueError("attention.source 'bbox' needs the NIH index whose BBox_List_2017.csv holds the boxes")
        if not index.bboxes:
            raise ValueError(f"{index.root} has no bounding boxes (BBox_List_2017.csv); use attention.source: gradcam")
        return BBoxSource(index)
    if cfg.source == "phantom":
        folder = root if root is not None else (index.root if index is not None else None)
        if folder is None:
            raise ValueError("attention.source 'phantom' needs the phantom folder (root=) or its index")
        return PhantomMaskSource(folder)
    if cfg.source == "xrv":
        from augment.attention.xrv import XRVSource

        return XRVSource(cfg.xrv_weights, cfg.xrv_cache_dir, cfg.gradcam_variant, batch_size=cfg.batch_size)
    raise ValueError(f"unknown attention.source {cfg.source!r}")


def mask_from_config(maps, cfg: "AttentionConfig"):
    """:func:`to_mask` with the threshold and area bounds of the ``attention`` section."""
    return to_mask(maps, cfg.threshold, cfg.min_area, cfg.max_area)
