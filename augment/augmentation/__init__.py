"""Augmentation planning and the augmented pool (the library side of ``jobs/augment.py``)."""

from augment.augmentation.plan import PlanItem, plan_augmentation
from augment.augmentation.pool import PoolWriter, ProvenanceRow, summarize

__all__ = ["PlanItem", "plan_augmentation", "PoolWriter", "ProvenanceRow", "summarize"]
