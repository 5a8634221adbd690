"""The NIH ChestX-ray14 label vocabulary, in NIH's spelling.

Classifier outputs are the 14 findings below; "No Finding" is the all-zero label vector
rather than a 15th output (it is the absence of every finding, not a finding of its own,
and a separate output could contradict the others). Label tables still carry a
"No Finding" column so that counts match NIH's.
"""

from __future__ import annotations

from augment.errors import UnknownFindingError

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
LABELS: tuple[str, ...] = FINDINGS + (NO_FINDING,)

# Spellings seen in other releases of the same labels, mapped to NIH's.
ALIASES: dict[str, str] = {
    "Pleural Thickening": "Pleural_Thickening",
    "Pleural thickening": "Pleural_Thickening",
    "No finding": NO_FINDING,
    "NoFinding": NO_FINDING,
}


def finding_index(name: str) -> int:
    """Index of a finding in :data:`FINDINGS`.

    Raises:
        UnknownFindingError (a ValueError): the name is not one of the 14 findings (the message lists them).
    """
    canon = ALIASES.get(name, name)
    try:
        return FINDINGS.index(canon)
    except ValueError:
        raise UnknownFindingError(f"unknown finding {name!r}; expected one of {list(FINDINGS)}") from None
