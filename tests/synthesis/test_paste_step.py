"""The copy-paste control: ``--generator paste`` keeps the carried real lesion, paints nothing."""

import numpy as np
import pytest

from augment.synthesis.fingerprint import generator_fingerprint
from augment.synthesis.steps import PASTE, InpaintStep
from augment.config import RunConfig


def test_paste_keeps_the_carried_lesion_and_leaves_failed_items_alone():
    cfg = RunConfig.model_validate({"inpainting": {"coupling": "lesion"}})
    step = InpaintStep(cfg, PASTE)
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(2, 16, 16)).astype(np.float32)
    base = image.copy()
    base[0, 4:8, 4:8] = 0.9  # the carried lesion of item 0
    batch = {"item_id": np.array(["a", "b"]), "finding": np.array(["Mass", "Mass"]), "seed": np.array([1, 2]),
             "status": np.array(["", "empty_mask"], dtype=object), "image": image, "base": base,
             "mask": np.zeros((2, 16, 16), np.uint8)}
    out = step(batch)
    assert np.array_equal(out["synthetic"][0], base[0])
    assert np.array_equal(out["synthetic"][1], image[1])  # a failed item is not painted
    assert generator_fingerprint(PASTE) == "paste"


def test_paste_needs_the_lesion_coupling():
    with pytest.raises(ValueError, match="coupling 'lesion'"):
        InpaintStep(RunConfig.model_validate({"inpainting": {"coupling": "noise"}}), PASTE)
