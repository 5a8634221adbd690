"""NIH ChestX-ray14 data: index, image I/O, splits, the phantom generator."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from augment.data.nih import DataError, NIHIndex, load_index
from augment.data.splits import Split, split_index

if TYPE_CHECKING:  # pragma: no cover
    from augment.config import RunConfig

log = logging.getLogger(__name__)

__all__ = ["DataError", "NIHIndex", "Split", "load_index", "split_index", "data_root", "prepare_data"]


def data_root(cfg: "RunConfig") -> Path:
    """The NIH-layout folder the run reads: ``data.root``, or the phantom's folder."""
    if cfg.data.root:
        return Path(str(cfg.data.root).removeprefix("file://"))
    return Path(cfg.output_dir) / "data" / f"phantom-{cfg.fingerprint('data')}"


def prepare_data(cfg: "RunConfig") -> tuple[NIHIndex, Split]:
    """Make the run's data ready: generate the phantom set if needed, read the index, split it."""
    root = data_root(cfg)
    if cfg.data.source == "phantom":
        from augment.data.phantom import generate_phantom

        generate_phantom(cfg.data.phantom, root)
    index = load_index(root, on_bad_row=cfg.data.on_bad_row)
    s = cfg.data.split
    split = split_index(index, s.val_fraction, s.test_fraction, s.seed, s.use_official_lists)
    return index, split
