"""The EfficientNet wrapper: shapes, features, ImageNet weights from a local file only."""

import pytest
import torch
from efficientnet_pytorch import EfficientNet

from augment.classifier.model import PretrainedWeightsError, build_classifier
from augment.config import ClassifierConfig

torch.set_num_threads(1)


def _cfg(**kw):
    return ClassifierConfig(arch="efficientnet-b0", image_size=64, **kw)


def test_shapes_and_features():
    torch.manual_seed(0)
    m = build_classifier(_cfg()).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        logits = m(x)
        head_logits, head = m.forward_features(x, "head")
        _, s16 = m.forward_features(x, "stride16")
        emb = m.embed(x)
    assert logits.shape == (2, 14)
    assert torch.allclose(logits, head_logits)
    assert head.shape == (2, m.num_features, 2, 2)
    assert s16.shape[-2:] == (4, 4)
    assert emb.shape == (2, 1280)
    with pytest.raises(ValueError, match="layer"):
        m.forward_features(x, "stem")


def test_batch_norm_momentum_reaches_the_layers():
    m = build_classifier(_cfg(batch_norm_momentum=0.9))
    assert m.net._bn0.momentum == pytest.approx(0.1)  # torch convention = 1 - TF convention


def test_imagenet_without_a_file_says_where_to_put_it(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="weights_path"):
        build_classifier(_cfg(pretrained="imagenet"))
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        build_classifier(_cfg(pretrained="imagenet", weights_path=str(tmp_path / "nope.pth")))


def test_imagenet_file_loads_with_a_gray_stem(tmp_path):
    torch.manual_seed(1)
    rgb = EfficientNet.from_name("efficientnet-b0")  # 3 channels, 1000 classes: an ImageNet-shaped file
    path = tmp_path / "efficientnet-b0.pth"
    torch.save(rgb.state_dict(), path)
    m = build_classifier(_cfg(pretrained="imagenet", weights_path=str(path)))
    stem = rgb.state_dict()["_conv_stem.weight"]
    assert torch.allclose(m.net._conv_stem.weight, stem.sum(1, keepdim=True))
    assert torch.equal(m.net._blocks[3]._depthwise_conv.weight, rgb._blocks[3]._depthwise_conv.weight)
    assert m.net._fc.weight.shape == (14, 1280)  # the 1000-class head is not loaded


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(PretrainedWeightsError, match="not an efficientnet_pytorch"):
        build_classifier(_cfg(pretrained="imagenet", weights_path=str(path)))
