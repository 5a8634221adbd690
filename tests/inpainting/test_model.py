"""The velocity network: shapes, conditioning, checkpoints, EMA, and overfitting one pair."""

import pytest
import torch

from augment.config import InpaintingConfig
from augment.inpainting.model import (
    Conditioning,
    build_model,
    ema_copy,
    load_checkpoint,
    load_generator,
    make_ema,
    save_checkpoint,
    to_model_space,
)
from augment.inpainting.train import TrainBatch, make_optimizer, training_step

TINY = dict(crop_size=16, block_out_channels=[16, 32], layers_per_block=1, mid_attention=False, bf16=False)


def _cond(b=2, s=16, findings=None, null=None):
    mask = torch.zeros(b, 1, s, s)
    mask[:, :, 4:12, 4:12] = 1
    f = torch.zeros(b, 14) if findings is None else findings
    return Conditioning(mask=mask, known=torch.zeros(b, 1, s, s), coords=torch.zeros(b, 2, s, s), findings=f, null=null)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(InpaintingConfig(**TINY))
    torch.nn.init.normal_(m.label_proj.weight, std=0.5)  # zero-initialised in training; make labels matter here
    return m.eval()


def test_forward_shape_and_findings_change_the_output(model):
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([0.1, 0.9])
    f = torch.zeros(2, 14)
    f[:, 5] = 1
    with torch.no_grad():
        v0 = model(x, t, _cond(findings=torch.zeros(2, 14)))
        v1 = model(x, t, _cond(findings=f))
        vn = model(x, t, _cond(findings=f, null=torch.tensor([True, True])))
        vn0 = model(x, t, _cond(findings=torch.zeros(2, 14), null=torch.tensor([True, True])))
    assert v0.shape == (2, 1, 16, 16) and v0.dtype == torch.float32
    assert not torch.allclose(v0, v1)
    torch.testing.assert_close(vn, vn0)  # null drops the findings
    assert not torch.allclose(vn, v0)  # null is not the same as "no finding"


def test_crop_size_must_fit_the_unet():
    with pytest.raises(ValueError, match="divisible"):
        build_model(InpaintingConfig(crop_size=18, block_out_channels=[8, 16, 16]))


def test_checkpoint_round_trip(tmp_path, model):
    cfg = InpaintingConfig(**TINY)
    path = save_checkpoint(tmp_path / "g" / "generator.pt", model, cfg, extra={"step": 3})
    payload = load_checkpoint(path)
    assert payload["version"] == 1 and payload["config"]["crop_size"] == 16 and payload["extra"] == {"step": 3}
    loaded = load_generator(path)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.tensor([0.3, 0.3]), _cond()), model(x, torch.tensor([0.3, 0.3]), _cond()))
    # loaded for sampling on a CPU: channels-last convolution weights (faster with oneDNN)
    conv = next(m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert not list(tmp_path.glob("g/.*tmp"))  # atomic write left no temp file


def test_checkpoint_errors_say_what_to_do(tmp_path, model):
    with pytest.raises(ValueError, match="train one"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"state_dict": {}, "config": {}, "version": 0}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="older than this code's 1; retrain with python -m jobs.train_generator"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save({"state_dict": {}, "config": {}, "version": 99}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="newer than this code's 1; upgrade cxr-augment"):
        load_checkpoint(tmp_path / "new.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")


def test_tiny_model_overfits_one_pair():
    torch.manual_seed(0)
    cfg = InpaintingConfig(**TINY, lr=3e-3, batch_size=4, mask_loss_weight=10.0)
    model = build_model(cfg).train()
    opt = make_optimizer(model, cfg)
    ema = make_ema(model, 0.99)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    img = (0.3 + 0.4 * xx * yy)[None, None].expand(4, 1, 16, 16)
    x1 = to_model_space(img)
    cond = _cond(b=4)
    cond = Conditioning(cond.mask, x1 * (1 - cond.mask), cond.coords, cond.findings, torch.zeros(4, dtype=torch.bool))
    batch = TrainBatch(x1=x1, cond=cond)
    g = torch.Generator().manual_seed(0)
    losses = [training_step(model, opt, batch, cfg, g, ema) for _ in range(150)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.3 * first, (first, last)
    averaged = ema_copy(model, ema)
    assert any(not torch.equal(a, b) for a, b in zip(averaged.parameters(), model.parameters()))
