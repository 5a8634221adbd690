"""The verifier's crops on a real phantom split: positives, place and filled negatives, and the
generator's own "No Finding" paintings as hard negatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augment.attention import build_attention_source
from augment.config import AttentionConfig, InpaintingConfig, PhantomConfig, RunConfig, VerifierConfig
from augment.data.io import read_image
from augment.data.nih import load_index
from augment.data.phantom import generate_phantom
from augment.inpainting.model import build_model, save_checkpoint
from augment.quality.verifier import build_crops
from jobs.train_verifier import make_painter

TINY = dict(crop_size=16, block_out_channels=[8, 16], layers_per_block=1, mid_attention=False, bf16=False, steps=2)
CFG = VerifierConfig(crop_size=16, input_size=16, negatives_per_positive=1, hard_negatives=["noise", "generator"])


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    pc = PhantomConfig(n_images=24, image_size=64, n_patients=8, seed=3, healthy_fraction=0.25,
                       prevalence={"Mass": 0.5, "Effusion": 0.3})
    index = load_index(generate_phantom(pc, tmp_path_factory.mktemp("phantom") / "set", progress=False))
    return index, build_attention_source(AttentionConfig(source="phantom"), index=index)


@pytest.fixture(scope="module")
def painter(tmp_path_factory):
    icfg = InpaintingConfig(**TINY)
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path_factory.mktemp("gen") / "generator.pt", build_model(icfg), icfg)
    return make_painter(RunConfig(inpainting=icfg), path)


def test_generator_negatives_need_a_generator(phantom, tmp_path):
    index, attention = phantom
    with pytest.raises(ValueError, match="no generator was given"):
        build_crops(index, ["Mass"], attention, CFG, 64, training=False)
    with pytest.raises(ValueError, match="no generator checkpoint at .*drop 'generator'"):
        make_painter(RunConfig(), tmp_path / "missing.pt")


def test_the_painter_repaints_only_the_region_as_healthy(painter, phantom):
    index, _ = phantom
    img = torch.from_numpy(read_image(index.path(index.records[0]), 64))[None, None].repeat(2, 1, 1, 1)
    region = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    region[:, :, 20:30, 24:34] = True
    out = painter(img, region, [1, 2])
    assert torch.equal(out[~region], img[~region])
    assert not torch.equal(out[region], img[region])
    assert not torch.equal(out[0], out[1])  # its own seed each
    assert torch.equal(painter(img, region, [1, 2]), out)  # and the same seed the same painting


def test_crops_hold_every_kind_with_the_right_targets(painter, phantom):
    index, attention = phantom
    calls: list[tuple[int, int]] = []

    def recording(images, regions, seeds):
        calls.append((images.shape[0], int(regions.sum())))
        return painter(images, regions, seeds)

    n_mass = len(index.with_finding("Mass"))
    plain = build_crops(index, ["Mass"], attention, CFG.model_copy(update={"hard_negatives": ["noise"]}), 64,
                        training=False, seed=0)
    cs = build_crops(index, ["Mass"], attention, CFG, 64, training=False, seed=0, painter=recording, paint_grow=2)
    counts = cs.counts()["Mass"]
    assert counts["positive"] == counts["place"] == counts["noise"] == counts["generator"] > 0
    assert counts["positive"] <= n_mass
    assert sum(c[0] for c in calls) == counts["generator"]
    gen = cs.kinds == "generator"
    assert (cs.targets[gen, 0] == 0).all() and (cs.targets[cs.kinds == "positive", 0] == 1).all()
    assert cs.crops.shape[1:] == (1, 16, 16) and np.isfinite(cs.crops).all()
    # the painted crops are not the plain ones: the same places and images, repainted
    assert not np.allclose(cs.crops[gen], cs.crops[cs.kinds == "place"])
    # the painter is given the lesion grown by paint_grow, as the augment job repaints it
    recs = index.with_finding("Mass")
    imgs = torch.cat([torch.from_numpy(read_image(index.path(r), 64))[None, None] for r in recs])
    masks = attention.finding_map(imgs, "Mass", image_ids=[r.image_index for r in recs]) >= 0.5
    assert sum(c[1] for c in calls) > int(masks.sum())
    # everything but the generator's crops is the same with or without them
    keep = cs.kinds != "generator"
    assert np.array_equal(cs.kinds[keep], plain.kinds) and np.allclose(cs.crops[keep], plain.crops)


def test_training_crops_paste_each_lesion_onto_other_films(phantom):
    index, attention = phantom
    cfg = CFG.model_copy(update={"hard_negatives": ["noise"], "pasted_positives": 2, "positive_repeats": 1})
    train = build_crops(index, ["Mass"], attention, cfg, 64, training=True, seed=0)
    val = build_crops(index, ["Mass"], attention, cfg, 64, training=False, seed=0)
    c = train.counts()["Mass"]
    assert c["pasted"] == 2 * c["positive"] > 0
    assert (train.targets[train.kinds == "pasted", 0] == 1).all()
    # pasted onto films without Mass: other patients' anatomy under the same lesion
    assert val.counts()["Mass"]["pasted"] == 0  # validation is real lesions only
    off = build_crops(index, ["Mass"], attention, cfg.model_copy(update={"pasted_positives": 0}), 64, training=True, seed=0)
    keep = train.kinds != "pasted"
    assert np.allclose(train.crops[keep], off.crops)  # the other crops do not move
