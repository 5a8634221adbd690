"""Shared fixtures: paths to the read-only shared data, tiny NIH folders made in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared_paths import NIH_SAMPLE


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def nih_sample() -> Path:
    """The 559 real NIH images (read-only); skips when ../shared is not beside the repo."""
    if not (NIH_SAMPLE / "Data_Entry_2017.csv").is_file():
        pytest.skip(f"real NIH sample not found at {NIH_SAMPLE}")
    return NIH_SAMPLE


@pytest.fixture
def make_nih_folder(tmp_path):
    """Build a tiny NIH-layout folder: ``make_nih_folder(rows, size=32)``.

    ``rows`` is a list of (image index, labels string, patient id). Images are smooth
    random gradients, seeded by row number.
    """
    from augment.data.io import write_png
    from augment.data.nih import DATA_ENTRY_HEADER

    def make(rows, size: int = 32, name: str = "nih") -> Path:
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        lines = [",".join(DATA_ENTRY_HEADER)]
        for i, (img, labels, pid) in enumerate(rows):
            rng = np.random.default_rng(i)
            yy, xx = np.mgrid[0:size, 0:size] / size
            arr = 0.3 + 0.4 * (rng.uniform() * xx + rng.uniform() * yy) / 2 + 0.05 * rng.standard_normal((size, size))
            write_png(root / "images" / img, np.clip(arr, 0, 1))
            lines.append(f"{img},{labels},0,{pid},50,M,PA,{size},{size},0.143,0.143")
        (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
        return root

    return make
