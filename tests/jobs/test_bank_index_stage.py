"""The near-copy bank's index is built once per training split and settings, then reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from augment.config import load_config
from shared_paths import REPO


def test_bank_index_is_built_once_and_reused(make_nih_folder, tmp_path, monkeypatch):
    import augment.quality.bank_index as bank_index
    from augment.data.nih import load_index
    from jobs.augment import near_copy_bank_index

    rows = [(f"{k // 2:08d}_{k % 2:03d}.png", "No Finding", k // 2 + 1) for k in range(8)]
    root = make_nih_folder(rows, size=32)
    cfg = load_config(REPO / "configs" / "local.yaml", [
        f"output_dir={tmp_path}/runs", f"data.root={root}", "data.source=nih", "data.image_size=32",
        "quality.bank_image_size=16", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    ])
    index = load_index(root)
    first = near_copy_bank_index(cfg, index)
    assert Path(first).is_absolute() and (Path(first) / "index.json").is_file()
    assert Path(first).parent.name.startswith("near-copy-bank-")

    def no_reads(*a, **k):
        raise AssertionError("the cached index was rebuilt")

    monkeypatch.setattr(bank_index, "read_image", no_reads)
    assert near_copy_bank_index(cfg, index) == first
    # another split (one image fewer) is another index
    with pytest.raises(AssertionError, match="rebuilt"):
        near_copy_bank_index(cfg, index.subset(r[0] for r in rows[1:]))
    assert not list((tmp_path / "runs" / "stages").glob("*.partial"))
