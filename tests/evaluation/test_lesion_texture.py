"""bench/lesion_texture.py: its figures tell a lesion moved unchanged from one with texture painted over it."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load():
    spec = importlib.util.spec_from_file_location("lesion_texture", BENCH / "lesion_texture.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["lesion_texture"] = mod
    spec.loader.exec_module(mod)
    return mod


def _blob(n=64, r=10.0, amp=0.3):
    yy, xx = np.mgrid[:n, :n]
    return amp * np.exp(-((yy - n / 2) ** 2 + (xx - n / 2) ** 2) / (2 * r * r))


def test_texture_over_the_same_lesion_raises_gradient_and_detail_not_lift():
    lt = _load()
    rng = np.random.default_rng(0)
    src = 0.4 + 0.02 * rng.standard_normal((64, 64))
    lesion = _blob()
    mask = lesion > 0.03
    pasted = src + lesion
    texture = 0.05 * rng.standard_normal((64, 64))
    textured = pasted + texture - texture[mask].mean() * mask  # same mean lift inside the mask
    a, b = lt.measures(pasted, src, mask), lt.measures(textured, src, mask)
    assert abs(a["lift"] - b["lift"]) < 1e-9
    assert b["gradient"] > 2 * a["gradient"] and b["detail"] > 5 * a["detail"]
    # a moved lesion adds no fine detail: a smooth blob survives its own 2-px blur nearly whole
    assert a["detail"] < 0.1 * a["lift"]
    # nothing painted: every figure is zero
    assert all(v == 0 for v in lt.measures(src, src, mask).values())


def test_summarise_takes_medians():
    lt = _load()
    rows = [{"lift": v, "lift_p95": v, "gradient": v, "detail": v} for v in (0.1, 0.2, 0.9)]
    s = lt.summarise(rows)
    assert s["n"] == 3 and s["lift"] == 0.2 and s["detail"] == 0.2
