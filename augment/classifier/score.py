"""Score a classifier checkpoint on a split: the labels, its probabilities and its loss, in the
index's order (the comparisons pair them image by image and resample them by patient)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from augment.classifier.checkpoint import load_classifier
from augment.classifier.train import evaluate
from augment.data.dataset import NIHImageDataset
from augment.data.nih import NIHIndex

__all__ = ["Scores", "score_checkpoint"]


@dataclass(frozen=True)
class Scores:
    """``y_true`` (N, 14) labels and ``y_prob`` (N, 14) probabilities in the index's order; ``loss`` the mean BCE."""

    y_true: np.ndarray
    y_prob: np.ndarray
    loss: float


def score_checkpoint(checkpoint: str | os.PathLike, index: NIHIndex, image_size: int, batch_size: int = 32,
                     device: torch.device | str = "cpu") -> Scores:
    """Run a checkpoint over every image of ``index`` at ``image_size``.

    Raises:
        CheckpointError (a ValueError): the checkpoint is missing or not a classifier's.
    """
    model = load_classifier(checkpoint, map_location=device)
    loader = torch.utils.data.DataLoader(NIHImageDataset(index, image_size), batch_size=batch_size)
    res = evaluate(model, loader, torch.nn.BCEWithLogitsLoss(), torch.device(device))
    return Scores(res.y_true, res.y_prob, float(res.loss))
