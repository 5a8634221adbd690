"""The shared interface: inpaint as the flow inpainter crops, checkpoints, dispatch by checkpoint kind."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from augment.baselines import BaselineGenerator, build_baseline, load_baseline, save_baseline
from augment.baselines.base import BASELINE_KINDS, per_image_generators
from augment.baselines.registry import baseline_from_payload
from augment.config import BaselineConfig, InpaintingConfig, RunConfig
from augment.inpainting import findings_tensor, inpaint, load_generator
from augment.painter import Painter, load_painter
from augment.inpainting.crop import mask_boxes

KINDS = list(BASELINE_KINDS)


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _model(kind, crop=16, context=0.5):
    torch.manual_seed(0)
    return build_baseline(kind, BaselineConfig(base_channels=8, latent_dim=8, mixture_components=3), crop, context)


def _inputs(b=3, size=48):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, size, size, generator=g)
    masks = torch.zeros(3, 1, size, size, dtype=torch.bool)
    masks[0, 0, 5:12, 20:30] = True
    masks[1, 0, 10:size - 4, 2:30] = True  # larger than the crop: resampled
    masks[2, 0, size - 8 :, size - 8 :] = True  # at the corner
    return images[:b], masks[:b], findings_tensor(["Nodule", "Mass", []][:b])


@pytest.mark.parametrize("kind", KINDS)
def test_outside_the_mask_is_bit_identical_and_inside_is_the_sample(kind):
    m = _model(kind)
    images, masks, f = _inputs()
    res = m.paint(images, masks, f, _gens(1, 2, 3))
    out = res.images
    assert out.shape == images.shape and out.dtype == torch.float32
    assert torch.equal(out[~masks], images[~masks])
    assert not torch.equal(out[masks], images[masks])
    assert res.boxes == tuple(mask_boxes(masks, 16, 0.5))  # the flow inpainter's crops
    assert torch.equal(res.patches, m.sample(f, _gens(1, 2, 3)))
    assert torch.equal(out, m.inpaint(images, masks, f, _gens(1, 2, 3)))
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_a_crop_at_the_model_size_is_pasted_unresampled():
    m = _model("vae")
    images = torch.rand(1, 1, 32, 32)
    masks = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    masks[0, 0, 10:14, 10:14] = True  # 4 px side -> box of 16 = crop_size
    res = m.paint(images, masks, findings_tensor(["Nodule"]), _gens(0))
    (box,) = res.boxes
    assert box.size == 16
    inside = res.images[0, 0, box.top : box.top + 16, box.left : box.left + 16]
    patch = res.patches[0, 0]
    sel = masks[0, 0, box.top : box.top + 16, box.left : box.left + 16]
    assert torch.equal(inside[sel], patch[sel])


@pytest.mark.parametrize("region", ["crop", "full"])
def test_a_mask_over_everything_gives_a_whole_image_sample(region):
    m = _model("lsgan")
    images = torch.rand(2, 1, 32, 32)
    masks = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    f = findings_tensor(["Effusion", []])
    out = m.inpaint(images, masks, f, _gens(7, 8), region=region)
    want = F.interpolate(m.sample(f, _gens(7, 8)), size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(out, want, atol=1e-6)


def test_seeding_per_image_does_not_depend_on_the_batch():
    m = _model("gmvae")
    images, masks, f = _inputs()
    batch = m.inpaint(images, masks, f, _gens(10, 11, 12))
    alone = m.inpaint(images[1:2], masks[1:2], f[1:2], _gens(11))
    assert torch.equal(batch[1:2], alone)
    one = torch.Generator().manual_seed(0)
    assert torch.equal(
        m.inpaint(images, masks, f, one), m.inpaint(images, masks, f, torch.Generator().manual_seed(0))
    )  # a single generator is split into per-image ones, reproducibly


def test_bad_inputs_say_what_was_expected():
    m = _model("vae")
    images, masks, f = _inputs()
    with pytest.raises(ValueError, match="findings"):
        m.inpaint(images, masks, f[:, :5], _gens(1, 2, 3))
    with pytest.raises(ValueError, match="one row per image"):
        m.inpaint(images, masks, f[:2], _gens(1, 2))
    with pytest.raises(ValueError, match="one per image"):
        m.inpaint(images, masks, f, _gens(1, 2))
    with pytest.raises(ValueError, match="mask"):
        m.inpaint(images, masks[:, :, :10], f, _gens(1, 2, 3))
    with pytest.raises(ValueError, match="region"):
        m.inpaint(images, masks, f, _gens(1, 2, 3), region="half")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.inpaint(images * 5, masks, f, _gens(1, 2, 3))
    with pytest.raises(ValueError, match="unknown baseline kind"):
        build_baseline("wgan", BaselineConfig(), 16)
    with pytest.raises(TypeError, match="Generator"):
        per_image_generators(123, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip_gives_identical_samples(tmp_path, kind):
    m = _model(kind, context=0.8)
    path = save_baseline(tmp_path / "sub" / "generator.pt", m, extra={"step": 3})
    assert sorted(p.name for p in path.parent.iterdir()) == ["generator.pt"]  # no temp file left
    payload = torch.load(path, weights_only=True)
    assert payload["kind"] == kind and {"state_dict", "config", "version"} <= payload.keys()
    assert payload["config"]["crop_size"] == 16 and payload["extra"] == {"step": 3}
    back = load_baseline(path)
    assert type(back) is type(m) and back.context == 0.8 and back.config == m.config and not back.training
    f = findings_tensor(["Nodule", []])
    assert torch.equal(back.sample(f, _gens(3, 4)), m.sample(f, _gens(3, 4)))


def test_bad_checkpoints_are_refused(tmp_path):
    m = _model("vae")
    payload = torch.load(save_baseline(tmp_path / "g.pt", m), weights_only=True)
    with pytest.raises(ValueError, match="format 9, newer than this code.s 1; upgrade"):
        baseline_from_payload({**payload, "version": 9})
    with pytest.raises(ValueError, match="baseline kinds"):
        baseline_from_payload({**payload, "kind": "diffusion"})
    with pytest.raises(ValueError, match="not found"):
        load_baseline(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="BaselineGenerator"):
        save_baseline(tmp_path / "x.pt", torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind", KINDS)
def test_load_painter_dispatches_on_the_checkpoint_kind(tmp_path, kind):
    m = _model(kind)
    path = save_baseline(tmp_path / "generator.pt", m)
    painter = load_painter(path)
    assert isinstance(painter, Painter) and isinstance(painter.model, BaselineGenerator) and painter.kind == kind
    images, masks, f = _inputs()
    res = painter.paint(images, masks.float(), f, InpaintingConfig(crop_size=16), generator=_gens(1, 2, 3))
    assert torch.equal(res.images, m.inpaint(images, masks, f, _gens(1, 2, 3)))
    assert torch.equal(res.images[~masks], images[~masks]) and torch.equal(res.masks, masks)
    assert res.nfe == 1 and len(res.boxes) == 3


def test_the_flow_checkpoint_loads_as_the_velocity_net_and_paints_through_the_same_call(tmp_path):
    from augment.inpainting.model import VelocityNet, build_model, save_checkpoint

    icfg = InpaintingConfig(crop_size=16, block_out_channels=[8, 16], mid_attention=False, bf16=False, steps=1)
    path = save_checkpoint(tmp_path / "generator.pt", build_model(icfg), icfg)
    painter = load_painter(path)
    assert painter.kind == "flow" and type(painter.model) is VelocityNet
    assert type(load_generator(path)) is VelocityNet  # the flow package's own loader
    images, masks, f = _inputs(1, 32)
    res = painter.paint(images, masks, f, icfg, generator=_gens(0))
    assert res.nfe == 1 and torch.equal(res.images[~masks], images[~masks])
    assert torch.equal(res.images, inpaint(painter.model, images, masks, f, icfg, generator=_gens(0)).images)
    # the flow package loads the flow model only, and says where the others load
    with pytest.raises(ValueError, match="load_painter"):
        load_generator(save_baseline(tmp_path / "vae.pt", _model("vae")))
    torch.save({**torch.load(tmp_path / "vae.pt", weights_only=True), "kind": "diffusion"}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="generator kinds are"):
        load_painter(tmp_path / "odd.pt")


def test_the_augment_jobs_inpaint_step_runs_a_baseline_checkpoint(tmp_path):
    from augment.synthesis.steps import InpaintStep

    m = _model("vae")
    path = save_baseline(tmp_path / "generator.pt", m)
    cfg = RunConfig.model_validate({"inpainting": {"crop_size": 16}})
    step = InpaintStep(cfg, str(path))
    images, masks, _ = _inputs(2, 32)
    batch = {
        "item_id": np.array(["a", "b"]),
        "finding": np.array(["Nodule", "Mass"]),
        "seed": np.array([1, 2]),
        "status": np.array(["", ""]),
        "image": images[:, 0].numpy(),
        "mask": masks[:, 0].numpy().astype(np.uint8),
    }
    out = step(batch)
    syn = torch.from_numpy(out["synthetic"])
    keep = ~masks[:, 0]
    assert torch.equal(syn[keep], images[:, 0][keep]) and not torch.equal(syn, images[:, 0])
    assert np.array_equal(step(batch)["synthetic"], out["synthetic"])  # seeded per item


def test_the_services_sampling_path_takes_a_baseline(tmp_path):
    from types import SimpleNamespace

    from augment.synthesis.chain import Stage, item_generator, paint
    from augment.generation.generate import sampling_config

    painter = load_painter(save_baseline(tmp_path / "generator.pt", _model("gmvae")))
    cfg = RunConfig()
    icfg = sampling_config(SimpleNamespace(generator=painter), cfg, steps=3)
    images, masks, f = _inputs()
    res = paint(painter, images, masks, ["Nodule", "Mass", []], icfg, [5, 6, 7])
    model = painter.model
    gens = [item_generator(s, Stage.PAINT) for s in (5, 6, 7)]
    assert torch.equal(res.images, model.inpaint(images, masks, f, gens, context=cfg.inpainting.context))
    assert torch.equal(res.images[~masks], images[~masks])
