"""The quality gate: which synthetic images are kept, and the numbers behind each decision.

``evaluate_gate(sources, synthetic, masks, targets, cfg, prob_fn, embed_fn, bank)`` gives a
:class:`GateDecision` per image; :class:`TrainingBank` holds the training images and
embeddings for the near-copy (memorisation) check.
"""

from augment.quality.gate import REASONS, GateDecision, ProbFn, acceptance_summary, evaluate_gate
from augment.quality.near_copy import EmbedFn, NearestNeighbours, TrainingBank

__all__ = [
    "REASONS",
    "GateDecision",
    "ProbFn",
    "EmbedFn",
    "acceptance_summary",
    "evaluate_gate",
    "NearestNeighbours",
    "TrainingBank",
]
