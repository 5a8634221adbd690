"""Sampling: exact velocity fields reach the target, known pixels stay bit-identical, seeds repeat."""

import pytest
import torch
from torch import nn

from augment.config import InpaintingConfig
from augment.inpainting.model import Conditioning, build_model, to_model_space
from augment.inpainting.sampler import findings_tensor, guided_velocity, inpaint, integrate

TINY = dict(crop_size=16, block_out_channels=[8, 16], layers_per_block=1, mid_attention=False, bf16=False, steps=3)


def _problem(b=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(b, 1, s, s, generator=g) * 2 - 1
    mask = torch.zeros(b, 1, s, s)
    mask[:, :, 4:10, 3:12] = 1
    x0 = torch.where(mask > 0.5, torch.randn(b, 1, s, s, generator=g), x1)
    return x0, x1, mask


@pytest.mark.parametrize("solver,steps", [("euler", 1), ("euler", 7), ("heun", 4)])
def test_straight_line_field_reaches_x1(solver, steps):
    x0, x1, mask = _problem()
    out, nfe = integrate(lambda x, t: x1 - x0, x0, mask, steps, solver)
    torch.testing.assert_close(out, x1, rtol=0, atol=1e-5)
    assert nfe == steps * (2 if solver == "heun" else 1)


def test_euler_with_the_exact_conditional_field_reaches_x1():
    x0, x1, mask = _problem()
    # the exact velocity towards a single target: (x1 - x) / (1 - t); Euler lands on x1
    out, _ = integrate(lambda x, t: (x1 - x) / (1 - t.view(-1, 1, 1, 1)), x0, mask, 10, "euler")
    torch.testing.assert_close(out, x1, rtol=0, atol=1e-5)
    assert torch.equal(out[mask == 0], x0[mask == 0])


def test_dopri5_with_explicit_tolerances():
    pytest.importorskip("torchdiffeq")
    x0, x1, mask = _problem()
    out, nfe = integrate(lambda x, t: x1 - x0, x0, mask, 1, "dopri5", atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, x1, rtol=0, atol=1e-4)
    assert torch.equal(out[mask == 0], x0[mask == 0]) and nfe < 40


class _Oracle(nn.Module):
    """v = (target - x) / (1 - t): target 0.6 (image space) when conditioned, 0.2 when null."""

    def forward(self, x, t, cond: Conditioning):
        tc = torch.full_like(x, to_model_space(torch.tensor(0.6)).item())
        tu = torch.full_like(x, to_model_space(torch.tensor(0.2)).item())
        target = torch.where(cond.null.view(-1, 1, 1, 1), tu, tc) if cond.null is not None else tc
        return (target - x) / (1 - t.view(-1, 1, 1, 1))


@pytest.mark.parametrize("region", ["crop", "full"])
@pytest.mark.parametrize("guidance,expected", [(1.0, 0.6), (0.0, 0.2), (1.5, 0.8)])
def test_inpaint_with_oracle_paints_the_target_and_keeps_the_rest(region, guidance, expected):
    image = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.5
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 5:9, 5:9] = 1
    mask[1, :, 20:30, 2:30] = 1
    cfg = InpaintingConfig(**{**TINY, "region": region, "guidance": guidance, "steps": 5})
    r = inpaint(_Oracle(), image, mask, findings_tensor(["Nodule", "Mass"]), cfg, torch.Generator().manual_seed(0))
    assert torch.equal(r.images[mask == 0], image[mask == 0])
    torch.testing.assert_close(r.images[mask == 1], torch.full_like(r.images[mask == 1], expected), rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_model(InpaintingConfig(**TINY))
    for p in model.parameters():  # random non-zero weights everywhere, so outputs depend on inputs
        nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_outside_bit_identical_and_seed_reproducible_with_a_network(solver, tiny_model):
    model = tiny_model
    image = torch.rand(3, 1, 40, 40, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(3, 1, 40, 40, dtype=torch.bool)
    mask[0, :, 3:9, 30:38] = True
    mask[1, :, 10:30, 10:30] = True
    cfg = InpaintingConfig(**{**TINY, "solver": solver, "guidance": 2.0})
    f = findings_tensor(["Nodule", ["Mass", "Effusion"], "Pneumothorax"])
    a = inpaint(model, image, mask, f, cfg, torch.Generator().manual_seed(7))
    b = inpaint(model, image, mask, f, cfg, torch.Generator().manual_seed(7))
    c = inpaint(model, image, mask, f, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a.images[~mask], image[~mask])
    assert torch.equal(a.images[2], image[2])  # empty mask: nothing changes
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images[mask], c.images[mask])
    assert a.images.dtype == torch.float32 and 0 <= float(a.images.min()) and float(a.images.max()) <= 1
    assert a.nfe == cfg.steps * (2 if solver == "heun" else 1)


def test_guidance_is_one_batched_pass():
    calls = []

    class M(nn.Module):
        def forward(self, x, t, cond):
            calls.append(x.shape[0])
            return torch.zeros_like(x)

    x0, _, mask = _problem(b=3)
    cond = Conditioning(mask, x0, torch.zeros(3, 2, 16, 16), torch.zeros(3, 14))
    v = guided_velocity(M(), cond, 2.0)
    v(x0, torch.zeros(3))
    assert calls == [6]


def test_bad_inputs_raise_value_errors(tiny_model):
    model = tiny_model
    cfg = InpaintingConfig(**TINY)
    img = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="mask must be a tensor"):
        inpaint(model, img, torch.zeros(1, 1, 8, 8), findings_tensor(["Nodule"]), cfg)
    with pytest.raises(ValueError, match="findings_tensor"):
        inpaint(model, img, torch.zeros_like(img), torch.zeros(1, 3), cfg)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inpaint(model, img * 255, torch.zeros_like(img), findings_tensor(["Nodule"]), cfg)
    with pytest.raises(ValueError, match="unknown finding"):
        findings_tensor(["Nodules"])


def test_image_smaller_than_the_crop_is_upsampled_and_still_exact_outside():
    image = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 1, 12, 12)
    mask[:, :, 3:6, 4:9] = 1
    cfg = InpaintingConfig(**{**TINY, "guidance": 1.0, "steps": 4})
    r = inpaint(_Oracle(), image, mask, findings_tensor(["Nodule"]), cfg, torch.Generator().manual_seed(0))
    assert r.boxes[0].size == 12
    assert torch.equal(r.images[mask == 0], image[mask == 0])
    torch.testing.assert_close(r.images[mask == 1], torch.full((15,), 0.6), rtol=0, atol=1e-4)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_integration_from_t0_covers_only_the_rest_of_the_path(solver):
    x0, x1, mask = _problem()
    # a constant field c moves x by (1 - t0) c between t0 and 1
    c = torch.ones_like(x0)
    out, nfe = integrate(lambda x, t: c, x0, mask, 4, solver, t0=0.75)
    torch.testing.assert_close(out[mask == 1], x0[mask == 1] + 0.25, rtol=0, atol=1e-5)
    assert torch.equal(out[mask == 0], x0[mask == 0])
    with pytest.raises(ValueError, match="t0"):
        integrate(lambda x, t: c, x0, mask, 4, solver, t0=1.0)


class _Keep(nn.Module):
    """v = 0: the ODE leaves its start point where it is."""

    def forward(self, x, t, cond: Conditioning):
        return torch.zeros_like(x)


def test_lesion_coupling_starts_between_noise_and_the_base():
    image = torch.full((1, 1, 32, 32), 0.3)
    base = image.clone()
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 10:20, 10:20] = 1
    base[mask == 1] = 0.9
    common = {**TINY, "region": "full", "guidance": 1.0, "steps": 2}
    # t0 near 1 with a field that does not move: the result is (almost) the base itself
    near = inpaint(_Keep(), image, mask, findings_tensor(["Mass"]),
                   InpaintingConfig(**common, coupling="lesion", coupling_t0=0.99), torch.Generator().manual_seed(0), base=base)
    assert float((near.images[mask == 1] - 0.9).abs().max()) < 0.05
    assert torch.equal(near.images[mask == 0], image[mask == 0])
    # the noise coupling ignores the base
    noise = inpaint(_Keep(), image, mask, findings_tensor(["Mass"]),
                    InpaintingConfig(**common, coupling="noise"), torch.Generator().manual_seed(0), base=base)
    assert float((noise.images[mask == 1] - 0.9).abs().mean()) > 0.2
    with pytest.raises(ValueError, match="base must have"):
        inpaint(_Keep(), image, mask, findings_tensor(["Mass"]), InpaintingConfig(**common, coupling="lesion"),
                torch.Generator().manual_seed(0), base=base[:, :, :16])


def test_a_region_larger_than_the_crop_keeps_the_carried_lesions_thin_rim():
    """A 96 px region painted in a 32 px crop: without keep_detail the 1 px pleural-like line of the
    base is blurred away by the downsampled crop; with it the line survives the round trip."""
    image = torch.full((1, 1, 128, 128), 0.3)
    mask = torch.zeros(1, 1, 128, 128)
    mask[:, :, 16:112, 16:112] = 1
    base = image.clone()
    base[:, :, 20:108, 60] = 0.9  # a thin bright line inside the region
    common = {**TINY, "crop_size": 32, "guidance": 1.0, "steps": 2, "coupling": "lesion", "coupling_t0": 0.99}
    line = (slice(None), slice(None), slice(20, 108), 60)

    def run(keep: bool) -> torch.Tensor:
        cfg = InpaintingConfig(**common, keep_detail=keep)
        return inpaint(_Keep(), image, mask, findings_tensor(["Pneumothorax"]), cfg, torch.Generator().manual_seed(0),
                       base=base).images

    kept, blurred = run(True), run(False)
    assert float(kept[line].min()) > 0.85  # the line is still there at full contrast
    assert float(blurred[line].max()) < 0.7  # the crop could not hold it
    assert torch.equal(kept[mask == 0], image[mask == 0])
    assert float(kept.max()) <= 1.0 and float(kept.min()) >= 0.0
