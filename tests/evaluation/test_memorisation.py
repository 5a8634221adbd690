"""Memorisation: an exact copy of a training image is flagged; its source can be excluded."""

import numpy as np
import pytest
import torch

from augment.evaluation.memorisation import memorisation_check, memorisation_figure
from augment.evaluation.plots import save_figure

torch.set_num_threads(1)


def _train(n=30, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_exact_copy_is_flagged(tmp_path):
    train = _train()
    fresh = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    syn = torch.cat([fresh, train[7:8]])
    ids = [f"t{i}" for i in range(30)]
    r = memorisation_check(syn, train, synthetic_ids=[f"s{i}" for i in range(6)], train_ids=ids,
                           synthetic_embeddings=syn.flatten(1), train_embeddings=train.flatten(1))
    assert r.flagged_ids == (("s5", "t7"),)
    assert r.pixel.synthetic[5] == pytest.approx(0.0, abs=1e-6) and r.pixel.synthetic_index[5] == 7
    assert r.pixel.threshold_source == "real_p1" and len(r.pixel.real) == 30  # leave-one-out over the training set
    assert (r.pixel.real > 0.2).all()  # no real image found itself
    assert r.embedding is not None and 5 in r.embedding.flagged
    m = r.metrics()
    assert m["memorisation_pixel_n_flagged"] == 1 and "memorisation_embedding_fraction_flagged" in m
    assert save_figure(memorisation_figure(r), tmp_path / "mem.png").stat().st_size > 1000


def test_source_exclusion_and_masks():
    train = _train()
    # synthetic = its source everywhere, with a new square painted in
    syn = train[:4].clone()
    syn[:, :, 8:16, 8:16] = 0.9
    masks = torch.zeros_like(syn)
    masks[:, :, 8:16, 8:16] = 1.0
    ids = [f"t{i}" for i in range(30)]
    plain = memorisation_check(syn, train, train_ids=ids, threshold=0.2)
    assert len(plain.pixel.flagged) == 4  # the whole-image distance only finds the source again
    excl = memorisation_check(syn, train, train_ids=ids, exclude=ids[:4], masks=masks, threshold=0.2)
    assert len(excl.pixel.flagged) == 0 and excl.masked
    assert not np.isin(excl.pixel.synthetic_index, [0, 1, 2, 3]).any()


def test_patients_are_skipped_whole():
    train = _train()
    train[1] = train[0]  # a follow-up of patient 0 identical to its first image
    patients = [0, 0] + list(range(1, 29))
    loo = memorisation_check(train[:2], train, threshold=0.0)
    assert loo.pixel.real[0] == pytest.approx(0.0, abs=1e-6)  # without patients: its twin
    by_patient = memorisation_check(train[:2], train, train_patients=patients, exclude_patients=[0, 0], threshold=0.0)
    assert (by_patient.pixel.real > 0.2).all()  # the twin is the same patient: skipped
    assert len(by_patient.pixel.flagged) == 0 and not np.isin(by_patient.pixel.synthetic_index, [0, 1]).any()
    with pytest.raises(ValueError, match="needs train_patients"):
        memorisation_check(train[:2], train, exclude_patients=[0, 0])


def test_given_real_set_and_errors():
    train, real = _train(), _train(10, seed=5)
    r = memorisation_check(train[:3], train, real=real)
    assert len(r.pixel.real) == 10 and len(r.pixel.flagged) == 3
    with pytest.raises(ValueError, match="both synthetic_embeddings and train_embeddings"):
        memorisation_check(train[:3], train, synthetic_embeddings=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="masks"):
        memorisation_check(train[:3], train, masks=torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="threshold"):
        memorisation_check(train[:3], train[:1])  # one training image: no real-real distance
