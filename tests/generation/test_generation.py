"""augment.generation on tiny random-weight models and a phantom reference folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from augment.config import load_config
from augment.data.io import read_image
from augment.data.nih import load_index
from augment.generation import (
    GenerationRequest,
    check_request,
    generate_batch,
    inpaint_image,
    load_bundle,
    register_images,
    resolve_checkpoint,
    upscale_field,
)
from augment.synthesis.chain import Stage, item_generator, paint
from augment.inpainting import findings_tensor, inpaint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))
from tiny_models import build_tiny_setup  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    cfg = load_config(build_tiny_setup(root))
    bundle = load_bundle(cfg)
    index = load_index(root / "references")
    healthy = torch.from_numpy(read_image(index.path(index.healthy()[0])))[None, None]
    diseased = torch.from_numpy(read_image(index.path(index.with_finding("Mass")[0])))[None, None]
    return cfg, bundle, healthy, diseased, root


def test_bundle_holds_references_of_the_findings_in_the_folder(setup):
    cfg, bundle, *_ = setup
    assert bundle.available_findings == ["Cardiomegaly", "Effusion", "Mass", "Nodule"]
    assert bundle.references.images["Mass"].shape[1:] == (1, cfg.data.image_size, cfg.data.image_size)
    assert bundle.info["classifier"]["arch"] == "efficientnet-b0"


def test_resolve_checkpoint_accepts_a_folder_and_names_what_is_missing(setup, tmp_path):
    *_, root = setup
    assert resolve_checkpoint(root / "models", ("generator.pt",)).name == "generator.pt"
    with pytest.raises(ValueError, match="no generator.pt"):
        resolve_checkpoint(tmp_path, ("generator.pt",))
    with pytest.raises(ValueError, match="not found"):
        resolve_checkpoint(tmp_path / "nope.pt", ("generator.pt",))


def test_seeded_batch_of_one_equals_inpaint(setup):
    cfg, bundle, healthy, *_ = setup
    mask = torch.zeros_like(healthy, dtype=torch.bool)
    mask[..., 20:34, 24:40] = True
    icfg = bundle.generator.model.cfg.model_copy(update={"steps": 2, "bf16": False})
    cond = findings_tensor(["Mass"])
    a = inpaint(bundle.generator.model, healthy, mask, cond, icfg, item_generator(7, Stage.PAINT))
    b = paint(bundle.generator, healthy, mask, ["Mass"], icfg, [7])
    assert torch.equal(a.images, b.images)


def test_seeded_batch_gives_each_image_its_own_noise(setup):
    cfg, bundle, healthy, *_ = setup
    mask = torch.zeros_like(healthy, dtype=torch.bool)
    mask[..., 20:34, 24:40] = True
    icfg = bundle.generator.model.cfg.model_copy(update={"steps": 2, "bf16": False})
    batch = paint(bundle.generator, healthy.repeat(3, 1, 1, 1), mask.repeat(3, 1, 1, 1), ["Mass"] * 3, icfg, [1, 2, 1])
    alone = paint(bundle.generator, healthy, mask, ["Mass"], icfg, [2])
    assert torch.allclose(batch.images[1:2], alone.images, atol=1e-5)
    assert torch.allclose(batch.images[0], batch.images[2], atol=1e-6)
    assert not torch.allclose(batch.images[0], batch.images[1])
    with pytest.raises(ValueError, match="one seed per image"):
        paint(bundle.generator, healthy, mask, ["Mass"], icfg, [1, 2])


def test_generate_batch_equals_requests_alone_and_keeps_pixels_outside_the_mask(setup):
    cfg, bundle, healthy, diseased, _ = setup
    reqs = [GenerationRequest(healthy, ("Nodule",), seed=3, n_samples=2), GenerationRequest(diseased, ("Mass", "Effusion"), seed=9)]
    together = generate_batch(bundle, cfg, reqs)
    alone = [generate_batch(bundle, cfg, [r])[0] for r in reqs]
    for t, a, r in zip(together, alone, reqs):
        assert t.findings == a.findings and len(t.samples) == r.n_samples
        for st, sa in zip(t.samples, a.samples):
            assert torch.allclose(st.image, sa.image, atol=1e-5) and torch.equal(st.mask, sa.mask)
            assert st.seed == sa.seed
            outside = (st.image - r.image).abs().masked_fill(st.mask, 0).max()
            assert float(outside) == 0.0
            assert st.decision.outside_max_abs_diff == 0.0
            assert set(st.proba_after) == set(t.proba_before)
    assert [s.seed for s in together[0].samples] == [3, 4]
    assert [ref.finding for ref in together[1].samples[0].references] == ["Mass", "Effusion"]
    # sample j is the chain's item with seed request.seed + j: its seed picks one of the k best references
    assert all(0 <= st.references[0].rank < cfg.registration.k_references for st in together[0].samples)


def test_generate_holds_each_region_to_attention_max_area(setup):
    """The transferred region is bounded (the noise coupling paints it; the lesion coupling paints
    the reference's lesion with its own shape and size instead)."""
    cfg, bundle, healthy, *_ = setup
    req = GenerationRequest(healthy, ("Cardiomegaly",), seed=0)

    def with_max_area(a):
        return cfg.model_copy(update={"attention": cfg.attention.model_copy(update={"min_area": 0.0, "max_area": a}),
                                      "inpainting": cfg.inpainting.model_copy(update={"coupling": "noise"})})

    (free,) = generate_batch(bundle, with_max_area(1.0), [req])
    area = free.samples[0].references[0].region_fraction
    assert area > 0
    (same,) = generate_batch(bundle, with_max_area(min(1.0, 2 * area)), [req])
    assert torch.equal(same.samples[0].mask, free.samples[0].mask)
    # the tiny setup's maps are flat masks: one over the bound cannot be narrowed and is refused
    (tight,) = generate_batch(bundle, with_max_area(0.5 * area), [req])
    s = tight.samples[0]
    assert s.references[0].region_fraction <= 0.5 * area
    assert (s.mask <= free.samples[0].mask).all()


def test_generate_at_the_images_own_size(setup):
    cfg, bundle, healthy, *_ = setup
    big = torch.nn.functional.interpolate(healthy, size=(96, 80), mode="bilinear", align_corners=False).clamp(0, 1)
    (res,) = generate_batch(bundle, cfg, [GenerationRequest(big, ("Cardiomegaly",), seed=0)])
    assert res.samples[0].image.shape == (1, 1, 96, 80) and res.samples[0].mask.shape == (1, 1, 96, 80)


@pytest.mark.parametrize(
    "req, match",
    [
        (dict(findings=("Broken_Arm",)), "unknown finding"),
        (dict(findings=("Hernia",)), "no reference shows"),
        (dict(findings=()), "at least one finding"),
        (dict(findings=("Mass",), n_samples=0), "n_samples"),
        (dict(findings=("Mass",), image=torch.full((1, 1, 64, 64), 0.5)), "constant"),
        (dict(findings=("Mass",), image=torch.full((1, 1, 64, 64), 2.0)), r"\[0, 1\]"),
    ],
)
def test_check_request_names_the_problem(setup, req, match):
    cfg, bundle, healthy, *_ = setup
    with pytest.raises(ValueError, match=match):
        check_request(GenerationRequest(**{"image": healthy, **req}), bundle)


def test_inpaint_image_checks_the_mask(setup):
    cfg, bundle, healthy, *_ = setup
    mask = torch.zeros_like(healthy)
    mask[..., 10:20, 10:20] = 1
    out = inpaint_image(bundle, cfg, healthy, mask, ["Mass"], seed=1, steps=1)
    assert out.image.shape == healthy.shape and out.steps == 1
    assert float((out.image - healthy).abs().masked_fill(out.mask, 0).max()) == 0.0
    with pytest.raises(ValueError, match="empty"):
        inpaint_image(bundle, cfg, healthy, torch.zeros_like(healthy), ["Mass"])
    with pytest.raises(ValueError, match="mask is"):
        inpaint_image(bundle, cfg, healthy, torch.ones(1, 1, 32, 32), ["Mass"])


def test_upscale_field_scales_displacements():
    f = torch.zeros(1, 2, 8, 8)
    f[:, 0] = 1.0  # one pixel to the right at 8x8
    up = upscale_field(f, 15, 29)
    assert up.shape == (1, 2, 15, 29)
    assert torch.allclose(up[:, 0], torch.full((1, 15, 29), 28 / 7))
    assert torch.allclose(up[:, 1], torch.zeros(1, 15, 29))
    assert upscale_field(f, 8, 8) is f


def test_register_images_improves_similarity_and_carries_the_map(setup):
    cfg, bundle, healthy, diseased, _ = setup
    m = torch.zeros_like(diseased)
    m[..., 20:40, 20:40] = 1
    out = register_images(healthy, diseased, cfg.registration, 32, m)
    assert out.warped.shape == healthy.shape and out.warped_map.shape == healthy.shape
    assert out.mse_after < out.mse_before and out.work_size == 32
    with pytest.raises(ValueError, match="one size"):
        register_images(healthy, diseased[..., :48, :48], cfg.registration, 32)
    with pytest.raises(ValueError, match="map is"):
        register_images(healthy, diseased, cfg.registration, 32, m[..., :32, :32])


def test_serve_gate_judges_with_the_verifier_when_one_is_there(setup, tmp_path):
    """The bundle loads serve.verifier; generation's gate then judges with it, as the batch job does."""
    from augment.quality.verifier import CropSet, fit_verifier, save_verifier

    cfg, bundle, healthy, *_ = setup
    assert bundle.verifier is None  # the tiny setup has none: the classifier judged
    vcfg = cfg.verifier.model_copy(update={"epochs": 1, "channels": [4], "crop_size": 16, "input_size": 16})
    g = torch.Generator().manual_seed(0)
    crops = CropSet(crops=torch.randn(8, 1, 16, 16, generator=g).numpy(),
                    targets=torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4).numpy(),
                    kinds=__import__("numpy").array(["positive"] * 8), finding=__import__("numpy").array(["Mass"] * 8),
                    groups=__import__("numpy").arange(8), findings=["Mass", "Cardiomegaly"])
    fit = fit_verifier(crops, crops, vcfg)
    path = save_verifier(tmp_path / "verifier.pt", fit, vcfg, ["Mass", "Cardiomegaly"], cfg.data.image_size)
    spec = bundle.spec.__class__(bundle.spec.classifier, bundle.spec.generator, bundle.spec.references, str(path))
    with_verifier = load_bundle(cfg, spec)
    assert with_verifier.verifier is not None and with_verifier.info["verifier"]["findings"] == ["Mass", "Cardiomegaly"]
    (res,) = generate_batch(with_verifier, cfg, [GenerationRequest(healthy, ("Mass",), seed=0)])
    d = res.samples[0].decision
    assert d.judges == ("verifier",) and len(d.verifier_after) == 1 and len(d.verifier_threshold) == 1
    (res,) = generate_batch(with_verifier, cfg, [GenerationRequest(healthy, ("Effusion",), seed=0)])
    assert "unverifiable" in res.samples[0].decision.reasons  # a finding it never learned is not passed


@pytest.mark.parametrize("coupling", ["lesion", "noise"])
def test_the_service_and_the_batch_job_make_the_same_image(setup, coupling):
    """One chain: a one-finding request at the working size, through the service's
    generate_batch, is the batch job's item (RegisterStep -> InpaintStep) of the same source and seed."""
    import numpy as np

    from augment.synthesis.steps import InpaintStep, RegisterStep

    cfg, bundle, _, _, root = setup
    cfg = cfg.model_copy(update={"inpainting": cfg.inpainting.model_copy(update={"coupling": coupling})})
    index = load_index(root / "references")
    size = cfg.data.image_size
    register = RegisterStep(cfg, index, bundle.references)
    paint_step = InpaintStep(cfg, str(root / "models" / "generator.pt"))
    for source, finding, seed in [(index.healthy()[0].image_index, "Mass", 3), (index.healthy()[1].image_index, "Nodule", 11)]:
        image = torch.from_numpy(read_image(index.path(source), size))[None, None]
        sample = generate_batch(bundle, cfg, [GenerationRequest(image, (finding,), seed=seed)])[0].samples[0]
        batch = {"item_id": np.array(["a"]), "finding": np.array([finding]), "source": np.array([source]),
                 "source_patient": np.array(["p"]), "seed": np.array([seed]), "output_name": np.array(["a.png"])}
        out = paint_step(register(batch))
        assert out["status"][0] == "" and bool(sample.mask.any())
        assert out["reference"][0] == sample.references[0].image_index
        assert np.array_equal(out["mask"][0].astype(bool), sample.mask[0, 0].numpy())
        assert np.array_equal(out["synthetic"][0], sample.image[0, 0].numpy())
        assert not np.array_equal(out["synthetic"][0], out["image"][0])  # something was painted
