"""Box, phantom-mask and torchxrayvision sources, and the factory."""

import numpy as np
import pytest
import torch

from augment.attention import BBoxSource, PhantomMaskSource, build_attention_source, phantom_mask_path
from augment.config import AttentionConfig
from augment.data.io import write_png
from augment.data.nih import BBox, load_index


def test_bbox_source_on_the_nih_sample(nih_sample):
    index = load_index(nih_sample)
    src = build_attention_source(AttentionConfig(source="bbox"), index=index)
    assert isinstance(src, BBoxSource)
    # 00009745_000.png: Cardiomegaly box x 82.35, y 99.96, w 114.05, h 95.63 on the 256x256 image.
    name = "00009745_000.png"
    assert src.has_box(name, "Cardiomegaly") and not src.has_box(name, "Nodule")
    other = next(r.image_index for r in index.records if r.image_index not in index.bboxes)
    x = torch.rand(2, 1, 128, 128)
    maps = src.finding_map(x, "Cardiomegaly", [name, other])
    assert maps.shape == (2, 1, 128, 128)
    assert maps[1].sum() == 0  # no box: nothing
    ys, xs = torch.nonzero(maps[0, 0], as_tuple=True)
    assert (int(xs.min()), int(ys.min())) == (41, 49)  # 82.35 / 2, 99.96 / 2
    assert (int(xs.max()) + 1, int(ys.max()) + 1) == (98, 98)  # (82.35 + 114.05) / 2, (99.96 + 95.63) / 2
    # "Infiltrate" in NIH's box file is read as Infiltration
    assert src.has_box("00026911_000.png", "Infiltration")


def test_bbox_source_from_a_mapping_and_errors():
    src = BBoxSource(boxes={"a.png": (BBox("Nodule", 10, 20, 4, 4),)}, stored_size=(40, 40))
    m = src.finding_map(torch.zeros(1, 1, 20, 20), "Nodule", ["a.png"])
    assert m.sum() == 4 and m[0, 0, 10, 5] == 1  # box (5, 10)-(7, 12) at half size
    with pytest.raises(ValueError, match="image_ids"):
        src.finding_map(torch.zeros(1, 1, 20, 20), "Nodule")
    with pytest.raises(ValueError, match="stored_size"):
        BBoxSource(boxes={})


def test_bbox_factory_refuses_a_folder_without_boxes(make_nih_folder):
    index = load_index(make_nih_folder([("00000001_000.png", "Mass", 1)]))
    with pytest.raises(ValueError, match="no bounding boxes"):
        build_attention_source(AttentionConfig(source="bbox"), index=index)


def test_phantom_source_reads_the_masks_folder(tmp_path):
    root = tmp_path / "phantom"
    (root / "masks").mkdir(parents=True)
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[16:32, 8:24] = 1.0
    write_png(phantom_mask_path(root, "00000001_000.png", "Nodule"), mask)
    assert phantom_mask_path(root, "00000001_000.png", "Nodule").name == "00000001_000__Nodule.png"
    src = build_attention_source(AttentionConfig(source="phantom"), root=root)
    assert isinstance(src, PhantomMaskSource)
    maps = src.finding_map(torch.zeros(2, 1, 32, 32), "Nodule", ["00000001_000.png", "00000002_000.png"])
    assert maps[0, 0, 8:16, 4:12].min() > 0.9 and maps[0, 0, :6].max() == 0
    assert maps[0].sum() == pytest.approx(64, abs=1)  # 16x16 at 64 px -> 8x8 at 32 px
    assert maps[1].sum() == 0  # no mask for that image
    with pytest.raises(ValueError, match="masks/"):
        PhantomMaskSource(tmp_path / "nih")


def test_xrv_source_without_weights_says_where_to_put_them(tmp_path):
    from augment.attention.xrv import XRVWeightsMissing

    cfg = AttentionConfig(source="xrv", xrv_cache_dir=str(tmp_path))
    with pytest.raises(XRVWeightsMissing, match=str(tmp_path)):
        build_attention_source(cfg)
    with pytest.raises(ValueError, match="unknown torchxrayvision weights"):
        build_attention_source(cfg.model_copy(update={"xrv_weights": "densenet121-res224-foo"}))


def test_xrv_source_maps_with_a_small_densenet():
    import warnings

    from augment.attention.xrv import XRVSource

    with warnings.catch_warnings():
        import torchxrayvision as xrv

        torch.manual_seed(0)
        model = xrv.models.DenseNet(block_config=(1, 1, 1, 1), num_init_features=8, growth_rate=4, weights=None)
    model.input_resolution = 64
    src = XRVSource(model=model)
    maps = src.finding_map(torch.rand(2, 1, 48, 48), "Effusion")
    assert maps.shape == (2, 1, 48, 48) and 0 <= maps.min() and maps.max() <= 1
    model.targets = ["Atelectasis"] + [""] * 17  # as NIH-only weights list their outputs
    with pytest.raises(ValueError, match="does not predict"):
        XRVSource(model=model).finding_map(torch.rand(1, 1, 48, 48), "Effusion")
