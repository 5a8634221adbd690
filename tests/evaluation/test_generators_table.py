"""bench/generators_table.py: the new measures reach the table; old-format evaluations are flagged."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _table():
    spec = importlib.util.spec_from_file_location("generators_table", REPO / "bench" / "generators_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _evaluation(folder: Path, new: bool) -> None:
    ts = {"auc": 0.71, "low": 0.6, "high": 0.8, "n_test": 100}
    if new:
        ts.update(auc_repeats=[0.69, 0.73, 0.71], grouped=True, folds=5, repeats=3)
    d = {
        "inputs": {"n_real": 60, "n_synthetic": 40, "include_rejected": True, "real_disjoint_from_sources": new},
        "fid": {"pixels": {"fid": 5.1, "low": 4.0, "high": 6.0, "n_real": 60, "n_synthetic": 40,
                           **({"kid": 0.0123, "kid_std": 0.004} if new else {})},
                "classifier": {"fid": 50.0, "low": 40.0, "high": 60.0, "n_real": 60, "n_synthetic": 40}},
        "two_sample": {"image": ts, "crop": ts},
        "memorisation": {"flagged": [["a", "b"]], "n_train": 300},
        "diversity": {},
    }
    folder.mkdir(parents=True)
    (folder / "evaluation.json").write_text(json.dumps(d))


def test_table_shows_kid_grouped_auc_spread_and_flags_old_measures(tmp_path):
    mod = _table()
    _evaluation(tmp_path / "evaluate-flow", new=True)
    _evaluation(tmp_path / "evaluate-vae", new=False)
    res = {"root": str(tmp_path), "machine": "test", "written": "now", "generators": {
        k: {"acceptance": None, "realism": mod.realism(tmp_path / f"evaluate-{k}"), "utility": None} for k in ("flow", "vae")}}
    md = mod.markdown(res)
    flow = next(line for line in md.splitlines() if line.startswith("| flow |"))
    vae = next(line for line in md.splitlines() if line.startswith("| vae |"))
    assert flow.count("0.0123 ± 0.0040") == 1 and "(repeats 0.69-0.73)" in flow and "1 / 300" in flow
    assert "ungrouped" in vae and "n/a" in vae  # no KID, no grouping: the old measures
    assert "Not yet re-measured this way: vae." in md
