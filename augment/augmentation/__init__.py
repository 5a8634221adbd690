"""Augmentation planning and the augmented pool (the library side of ``jobs/augment.py``)."""

from augment.augmentation.fingerprint import generator_fingerprint
from augment.augmentation.plan import PlanItem, item_key, plan_augmentation
from augment.augmentation.pool import PoolError, PoolWriter, ProvenanceRow, summarize

__all__ = [
    "PlanItem", "item_key", "plan_augmentation", "generator_fingerprint",
    "PoolError", "PoolWriter", "ProvenanceRow", "summarize",
]
