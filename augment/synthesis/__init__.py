"""Making the synthetic pool (the library side of ``jobs/augment.py``).

* :mod:`~augment.synthesis.chain`: the method's one chain (reference -> carry -> paint), which
  the service calls too;
* :mod:`~augment.synthesis.steps`: the chain and the gate as steps on Ray Data column batches;
* :mod:`~augment.synthesis.plan`, :mod:`~augment.synthesis.pool`: what to make, and the pool it
  is written to (resumable, with ``provenance.csv``);
* :mod:`~augment.synthesis.reference_bank`, :mod:`~augment.synthesis.native`,
  :mod:`~augment.synthesis.dry_run`, :mod:`~augment.synthesis.fingerprint`.
"""

from augment.synthesis.fingerprint import generator_fingerprint
from augment.synthesis.plan import PlanItem, item_key, plan_augmentation
from augment.synthesis.pool import PoolError, PoolWriter, ProvenanceRow, summarize

__all__ = [
    "PlanItem", "item_key", "plan_augmentation", "generator_fingerprint",
    "PoolError", "PoolWriter", "ProvenanceRow", "summarize",
]
