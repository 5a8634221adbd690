"""register() and warp_map(): results, backends, variants, devices and bad input."""

import math

import pytest
import torch

from augment.config import RegistrationConfig
from augment.registration import Registration, register, warp_map
from augment.registration.prealign import affine_field, estimate_prealignment
from augment.registration.warp import warp_image


def test_result_type_and_shapes(real_pairs):
    fixed, moving = real_pairs[128]
    reg = register(fixed[:2], moving[:2], RegistrationConfig(iterations=10))
    assert isinstance(reg, Registration) and len(reg) == 2
    assert reg.warped.shape == (2, 1, 128, 128) and reg.field.shape == (2, 2, 128, 128)
    assert reg.warped.dtype == torch.float32 and 0 <= reg.warped.min() and reg.warped.max() <= 1
    for t in (reg.mse_before, reg.mse_after, reg.ncc_before, reg.ncc_after, reg.folded_fraction, reg.iterations):
        assert t.shape == (2,)
    assert reg.iterations.tolist() == [20, 20]  # 10 per level, 2 levels
    assert reg.backend == "torch" and reg.variant == "diffeomorphic"  # the default
    assert reg.prealign_matrix.shape == (2, 2, 3)
    assert torch.allclose(reg.warped, warp_image(moving[:2], reg.field), atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "simpleitk"])
@pytest.mark.parametrize("variant", ["symmetric", "diffeomorphic"])
def test_mse_drops_on_real_pairs(real_pairs, backend, variant):
    fixed, moving = real_pairs[128]
    reg = register(fixed, moving, RegistrationConfig(backend=backend, variant=variant, iterations=30))
    assert (reg.mse_after < reg.mse_before).all()
    assert (reg.ncc_after > reg.ncc_before).all()


def test_diffeomorphic_variant_does_not_fold(real_pairs):
    fixed, moving = real_pairs[128]
    cfg = RegistrationConfig(variant="diffeomorphic", sigma_field=2.5, iterations=50)
    reg = register(fixed, moving, cfg)
    assert reg.folded_fraction.max().item() == 0.0
    assert (reg.mse_after < reg.mse_before).all()


@pytest.mark.slow
def test_diffeomorphic_variant_does_not_fold_at_256(real_pairs):
    fixed, moving = real_pairs[256]
    reg = register(fixed, moving, RegistrationConfig(variant="diffeomorphic", sigma_field=2.5, iterations=50))
    assert reg.folded_fraction.max().item() == 0.0


def test_prealignment_recovers_a_similarity(real_images):
    moving = real_images[128][:3]
    th, s = math.radians(4.0), 1.06
    lin = torch.tensor([[s * math.cos(th), -s * math.sin(th)], [s * math.sin(th), s * math.cos(th)]])
    c = torch.tensor([63.5, 63.5])
    true = torch.cat([lin, (c - lin @ c + torch.tensor([4.0, -3.0]))[:, None]], dim=1).expand(3, 2, 3)
    fixed = warp_image(moving, affine_field(true, 128, 128))
    for kind in ("similarity", "affine"):
        pa = estimate_prealignment(fixed, moving, kind)
        err = (affine_field(pa.matrix, 128, 128) - affine_field(true, 128, 128)).pow(2).sum(dim=1).sqrt()
        assert err[:, 8:-8, 8:-8].mean().item() < 0.5, kind
        assert (pa.ncc_after >= pa.ncc_before).all()


def test_warp_map_follows_the_field(real_pairs):
    fixed, moving = real_pairs[128]
    reg = register(fixed[:2], moving[:2], RegistrationConfig(iterations=5, prealign="none"))
    amap = torch.zeros(2, 1, 128, 128)
    amap[:, :, 40:80, 30:60] = 1.0
    soft = warp_map(amap, reg)
    assert torch.allclose(soft, warp_image(amap, reg.field), atol=1e-6)
    hard = warp_map(amap, reg, threshold=0.5)
    assert hard.dtype == torch.bool and torch.equal(hard, soft >= 0.5)


def test_generator_is_accepted_and_results_are_deterministic(real_pairs):
    fixed, moving = real_pairs[128]
    cfg = RegistrationConfig(iterations=5)
    a = register(fixed[:1], moving[:1], cfg, generator=torch.Generator().manual_seed(1))
    b = register(fixed[:1], moving[:1], cfg)
    assert torch.equal(a.field, b.field)


def _img(*shape, value=None):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g)
    return x if value is None else torch.full(shape, value)


def _nan():
    x = _img(1, 1, 32, 32)
    x[0, 0, 3, 3] = float("nan")
    return x


@pytest.mark.parametrize(
    "fixed, moving, error, words",
    [
        (_img(1, 1, 32, 32), _img(1, 1, 48, 48), ValueError, "same shape"),
        (_img(2, 1, 32, 32), _img(1, 1, 32, 32), ValueError, "same shape"),
        (_img(0, 1, 32, 32), _img(0, 1, 32, 32), ValueError, "empty"),
        (_img(1, 1, 32, 32, value=0.5), _img(1, 1, 32, 32), ValueError, "constant"),
        (_img(1, 1, 32, 32), _img(1, 1, 32, 32, value=0.0), ValueError, "constant"),
        (_nan(), _img(1, 1, 32, 32), ValueError, "NaN"),
        (_img(1, 1, 32, 32) * 255, _img(1, 1, 32, 32), ValueError, "[0, 1]"),
        (_img(1, 1, 32, 32) - 0.5, _img(1, 1, 32, 32), ValueError, "[0, 1]"),
        (_img(1, 32, 32), _img(1, 32, 32), ValueError, "(B, 1, H, W)"),
        (_img(1, 3, 32, 32), _img(1, 3, 32, 32), ValueError, "(B, 1, H, W)"),
        (_img(1, 1, 4, 4), _img(1, 1, 4, 4), ValueError, "at least"),
        ((_img(1, 1, 32, 32) * 255).to(torch.uint8), _img(1, 1, 32, 32), TypeError, "floating"),
        (_img(1, 1, 32, 32).numpy(), _img(1, 1, 32, 32), TypeError, "torch.Tensor"),
    ],
)
@pytest.mark.parametrize("backend", ["torch", "simpleitk"])
def test_bad_images_are_rejected(fixed, moving, error, words, backend):
    with pytest.raises(error) as info:
        register(fixed, moving, RegistrationConfig(backend=backend, iterations=2))
    assert words in str(info.value)


@pytest.mark.parametrize(
    "amap, words",
    [
        (torch.zeros(1, 1, 16, 16), "shape"),
        (torch.zeros(2, 1, 32, 32), "shape"),
        (torch.zeros(1, 32, 32), "shape"),
        (torch.full((1, 1, 32, 32), 2.0), "[0, 1]"),
        (torch.full((1, 1, 32, 32), float("nan")), "NaN"),
    ],
)
def test_bad_maps_are_rejected(amap, words):
    reg = register(_img(1, 1, 32, 32), _img(1, 1, 32, 32), RegistrationConfig(iterations=2, prealign="none"))
    with pytest.raises(ValueError, match="map") as info:
        warp_map(amap, reg)
    assert words in str(info.value)
    with pytest.raises(ValueError, match="threshold"):
        warp_map(torch.zeros(1, 1, 32, 32), reg, threshold=1.5)


def test_one_device_rule_a_gpu_asked_for_without_cuda_is_an_error_and_the_old_keys_are_refused():
    from augment.config import ConfigError, load_config
    from augment.device import run_device

    assert run_device(False) == torch.device("cpu")
    reg = register(_img(1, 1, 32, 32), _img(1, 1, 32, 32), RegistrationConfig(iterations=2, prealign="none"))
    assert reg.field.device.type == "cpu"  # registration computes where its inputs are
    for key in ("registration.device=cpu", "inpainting.device=cuda"):
        with pytest.raises(ConfigError, match=r"device is gone: a run has one device rule, resources.use_gpu"):
            load_config(None, [key])
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="resources.use_gpu is true but no CUDA GPU"):
        run_device(True)


@pytest.mark.gpu
def test_torch_backend_on_cuda_matches_cpu(real_pairs):
    fixed, moving = real_pairs[256]
    cfg = RegistrationConfig(iterations=50, prealign="none")
    gpu = register(fixed.cuda(), moving.cuda(), cfg)  # on the inputs' device
    cpu = register(fixed, moving, cfg)
    assert gpu.field.is_cuda and gpu.warped.is_cuda
    assert (gpu.ncc_after.cpu() - cpu.ncc_after).abs().max().item() < 0.01
    assert (gpu.mse_after < gpu.mse_before).all()
