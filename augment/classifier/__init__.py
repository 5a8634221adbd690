"""The EfficientNet multi-label classifier: model, training loop, metrics, checkpoints.

Steps 1 and 5 of the method: it finds where a finding lives (Grad-CAM, in
:mod:`augment.attention`), judges synthetic images (:func:`predict_proba`), and is
retrained on the augmented pool.
"""

from augment.classifier.checkpoint import CheckpointError, load_checkpoint, load_classifier, save_checkpoint
from augment.classifier.metrics import ClassifierMetrics, FindingMetrics, classification_metrics, loss_gap, youden_threshold
from augment.classifier.model import Classifier, PretrainedWeightsError, build_classifier
from augment.classifier.predict import embed_images, predict_proba
from augment.classifier.train import EpochRecord, FitResult, evaluate, fit, make_loader, train_one_epoch

__all__ = [
    "Classifier",
    "ClassifierMetrics",
    "CheckpointError",
    "EpochRecord",
    "FindingMetrics",
    "FitResult",
    "PretrainedWeightsError",
    "build_classifier",
    "classification_metrics",
    "embed_images",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_classifier",
    "loss_gap",
    "make_loader",
    "predict_proba",
    "save_checkpoint",
    "train_one_epoch",
    "youden_threshold",
]
