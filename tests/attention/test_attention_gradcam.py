"""Grad-CAM: the maths on hand-made tensors, CAM equivalence on the real classifier, and
localisation by models trained to see a bright square."""

import pytest
import torch
from torch import nn

from augment.attention import GradCAMSource, build_attention_source, cam_from_gradients
from augment.classifier.model import build_classifier
from augment.config import AttentionConfig, ClassifierConfig
from augment.findings import finding_index

torch.set_num_threads(1)
MASS = finding_index("Mass")


def test_cam_from_gradients_by_hand():
    a = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]]])  # (1, 2, 2, 2)
    g = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[-1.0, -1.0], [-1.0, -1.0]]]])
    # weights = (1, -1); map = relu(A0 - A1) = [[1, 0], [0, 0]]
    assert torch.equal(cam_from_gradients(a, g, "gradcam"), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))
    pp = cam_from_gradients(a, g, "gradcam++")  # only positive gradients count
    assert pp.shape == (1, 1, 2, 2) and pp[0, 0, 0, 0] > 0 and pp[0, 0, 1, 1] == 0
    with pytest.raises(ValueError):
        cam_from_gradients(a, g[:, :1], "gradcam")


def test_head_gradcam_equals_cam_of_the_classifier():
    """At the last conv block the gradient is fc weight / (h*w): Grad-CAM = CAM (Zhou 2016)."""
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch="efficientnet-b0", image_size=128))
    x = torch.rand(2, 1, 128, 128)
    for m in model.modules():  # batch-norm statistics of this batch, so that eval features are not ~0
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    model.eval()
    src = GradCAMSource(model, "gradcam", "head")
    maps = src.finding_map(x, "Mass")
    with torch.no_grad():
        _, feats = model.forward_features(x, "head")
        cam = torch.relu(torch.einsum("c,bchw->bhw", model.net._fc.weight[MASS], feats))[:, None]
        cam = nn.functional.interpolate(cam, size=(128, 128), mode="bilinear", align_corners=False)
        cam = cam / cam.flatten(1).amax(1).view(-1, 1, 1, 1)
    assert maps.shape == (2, 1, 128, 128)
    assert torch.allclose(maps, cam, atol=1e-4)
    assert all(p.grad is None for p in model.parameters())  # parameter gradients untouched
    assert not model.training


def test_factory_builds_gradcam_and_needs_a_classifier():
    with pytest.raises(ValueError, match="classifier"):
        build_attention_source(AttentionConfig(source="gradcam"))
    model = build_classifier(ClassifierConfig(arch="efficientnet-b0", image_size=32))
    src = build_attention_source(AttentionConfig(gradcam_variant="gradcam++", gradcam_layer="stride16"), classifier=model)
    assert isinstance(src, GradCAMSource) and src.variant == "gradcam++" and src.layer == "stride16"
    out = src.finding_map(torch.rand(1, 1, 48, 48), "Nodule")  # resized to 32 for the model, map back at 48
    assert out.shape == (1, 1, 48, 48) and 0 <= out.min() and out.max() <= 1


def _squares(n, size, side, generator):
    """Half the images carry a bright square (label Mass) at a random place."""
    x = 0.4 + 0.1 * torch.rand(n, 1, size, size, generator=generator)
    y = torch.zeros(n, 14)
    where = []
    for i in range(n):
        if i % 2 == 0:
            r, c = torch.randint(0, size - side, (2,), generator=generator).tolist()
            x[i, 0, r : r + side, c : c + side] = 0.95
            y[i, MASS] = 1.0
            where.append((r, c))
        else:
            where.append(None)
    return x, y, where


class TinyCNN(nn.Module):
    """A small fully convolutional classifier with the same interface as ours (local receptive fields)."""

    image_size = 32

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(16, 14)

    def forward_features(self, x, layer="head"):
        f = self.body(x)
        return self.fc(f.mean(dim=(2, 3))), f

    def forward(self, x):
        return self.forward_features(x)[0]


@pytest.mark.parametrize("variant", ["gradcam", "gradcam++"])
def test_gradcam_of_a_trained_model_peaks_on_the_square(variant):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        x, y, _ = _squares(16, 32, 6, g)
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, _, where = _squares(8, 32, 6, g)
    maps = GradCAMSource(model, variant).finding_map(x, "Mass")
    for i, w in enumerate(where):
        if w is None:
            continue
        r, c = w
        peak = int(maps[i, 0].argmax())
        pr, pc = divmod(peak, 32)
        assert r - 1 <= pr <= r + 6 and c - 1 <= pc <= c + 6, (i, w, (pr, pc))
