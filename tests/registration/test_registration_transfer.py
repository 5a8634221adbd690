"""Body mask, region transfer and reference choice."""

import csv

import pytest
import torch

from augment.config import RegistrationConfig
from augment.data.io import read_image
from augment.registration import body_mask, choose_references, transfer_region
from augment.registration.warp import warp_image


def _phantom(size=96):
    """A radiograph-like phantom: black background, bright body, two textured dark lungs,
    and a dark 'trachea' channel from the top border into the chest."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = torch.zeros(size, size)
    body = (xx / 0.8) ** 2 + (yy / 0.95) ** 2 < 1
    img[body] = 0.75
    texture = 0.06 * torch.sin(40 * yy) * torch.cos(13 * xx)
    for cx in (-0.38, 0.38):
        lung = ((xx - cx) / 0.25) ** 2 + ((yy + 0.05) / 0.6) ** 2 < 1
        img[lung] = 0.3 + texture[lung]
    img[(xx.abs() < 0.04) & (yy < -0.3)] = 0.25
    return img[None, None].clamp(0, 1), body[None, None]


def test_body_mask_on_phantom_keeps_lungs_and_drops_background():
    img, body = _phantom()
    mask = body_mask(img)
    assert mask.dtype == torch.bool and mask.shape == img.shape
    inside = (mask & body).sum() / body.sum()
    outside = (mask & ~body).sum() / (~body).sum()
    assert inside > 0.97 and outside < 0.05
    assert mask[0, 0, 48, 24] and mask[0, 0, 48, 72]  # both lungs


def test_body_mask_contains_the_nih_boxes(nih_sample):
    rows = list(csv.DictReader((nih_sample / "BBox_List_2017.csv").open()))
    assert rows
    imgs = torch.stack([torch.from_numpy(read_image(nih_sample / "images" / r["Image Index"])) for r in rows])[:, None]
    masks = body_mask(imgs)
    for r, m in zip(rows, masks):
        x, y, w, h = (float(r[k]) for k in ("Bbox [x", "y", "w", "h]"))
        box = m[0, int(y) : int(y + h), int(x) : int(x + w)]
        assert box.float().mean() > 0.7, r["Image Index"]
    assert masks.float().mean() > 0.6


def test_transfer_mask_is_inside_the_body(real_images):
    imgs = real_images[128]
    healthy, reference = imgs[0:4:2], imgs[1:4:2]
    amap = torch.zeros(2, 1, 128, 128)
    amap[:, :, 30:90, 10:60] = 1.0  # a left-lung region
    amap[:, :, :, :6] = 1.0  # and a strip at the very edge that must not survive
    out = transfer_region(healthy, reference, amap, RegistrationConfig(iterations=20))
    assert out.mask.dtype == torch.bool and out.mask.shape == (2, 1, 128, 128)
    assert not (out.mask & ~out.body).any()
    assert torch.equal(out.body, body_mask(healthy))
    assert (out.mask.flatten(1).sum(dim=1) > 200).all()
    assert ((out.map > 0) <= out.body).all()
    assert out.outside_fraction.shape == (2,) and (out.outside_fraction >= 0).all()


def test_transfer_carries_a_known_shift():
    img, _ = _phantom(64)
    shift = torch.zeros(1, 2, 64, 64)
    shift[:, 0] = 3.0
    healthy = warp_image(img, shift)  # healthy(x) = reference(x + 3)
    amap = torch.zeros(1, 1, 64, 64)
    amap[:, :, 20:40, 20:30] = 1.0
    # the map here is plain anatomy (no finding to fill in): the field alone is under test
    cfg = RegistrationConfig(iterations=60, prealign="none", sigma_field=2.0, pyramid_levels=1, fill_lesion=False)
    out = transfer_region(healthy, img, amap, cfg)
    expected = warp_image(amap, shift) >= 0.5
    overlap = (out.mask & expected).sum() / (out.mask | expected).sum()
    assert overlap > 0.8


def test_transfer_bounds_a_diffuse_map_to_its_strongest_part():
    """A weak classifier's map covers the chest; the bounded region keeps only its peak."""
    img, body = _phantom(64)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    amap = (1.0 - ((yy - 30) ** 2 + (xx - 22) ** 2) / 3000).clamp(0, 1)[None, None]  # >= 0.5 over ~40% of the image
    cfg = RegistrationConfig(iterations=5, prealign="none", pyramid_levels=1, fill_lesion=False)
    free = transfer_region(img, img, amap, cfg)
    bounded = transfer_region(img, img, amap, cfg, min_area=0.002, max_area=0.1)
    assert free.mask.float().mean() > 0.3
    area = bounded.mask.float().mean()
    assert 0.08 < area <= 0.1
    assert (bounded.mask <= free.mask).all() and bounded.mask[0, 0, 30, 22]  # a subset, around the peak
    tiny = transfer_region(img, img, (amap > 0.999).float(), cfg, min_area=0.01, max_area=0.1)
    assert not tiny.mask.any()  # under min_area: nothing to repaint


def test_transfer_rejects_a_map_of_the_wrong_shape(real_images):
    imgs = real_images[128]
    with pytest.raises(ValueError, match="reference_map"):
        transfer_region(imgs[:1], imgs[1:2], torch.zeros(1, 1, 64, 64))


LABELS = ["Effusion", "No Finding", "Mass|Effusion", "Nodule", "Effusion|Atelectasis", "Effusion", "Mass"]


def test_choose_references_picks_the_most_similar_with_the_finding(real_images):
    imgs = real_images[128][: len(LABELS)]
    healthy = imgs[1:2]
    candidates = imgs.clone()
    candidates[5] = healthy[0]  # an Effusion candidate identical to the query
    choice = choose_references(healthy, candidates, LABELS, "Effusion", RegistrationConfig(k_references=3))
    assert choice.indices[0] == 5
    assert len(choice.indices) == 3 and set(choice.indices) <= {0, 2, 4, 5}
    assert choice.finding == "Effusion" and choice.n_eligible == 4 and choice.metric == "ncc"
    assert choice.scores[0] == pytest.approx(1.0, abs=1e-3) and (choice.scores[:-1] >= choice.scores[1:]).all()


def test_choose_references_is_seeded(real_images):
    imgs = real_images[128][: len(LABELS)]
    cfg = RegistrationConfig(k_references=2, prealign="none")

    def pick(seed):
        g = torch.Generator().manual_seed(seed)
        return choose_references(imgs[1:2], imgs, LABELS, "Effusion", cfg, generator=g, max_candidates=2).indices

    assert pick(0) == pick(0)
    assert len({pick(s) for s in range(6)}) > 1  # different subsets for different seeds


def test_choose_references_by_embedding(real_images):
    imgs = real_images[128][: len(LABELS)]

    def embed(x):  # (N, 1, H, W) -> (N, 2): mean intensity and a constant
        return torch.stack([x.mean(dim=(1, 2, 3)), torch.full((x.shape[0],), 0.3)], dim=1)

    cfg = RegistrationConfig(k_references=2, reference_metric="embedding")
    choice = choose_references(imgs[1:2], imgs, LABELS, "Effusion", cfg, embed=embed)
    eligible = [0, 2, 4, 5]
    cos = torch.nn.functional.cosine_similarity(embed(imgs[1:2]), embed(imgs[eligible]), dim=1)
    expected = [eligible[i] for i in cos.argsort(descending=True)[:2].tolist()]
    assert choice.metric == "embedding" and list(choice.indices) == expected
    with pytest.raises(ValueError, match="embed"):
        choose_references(imgs[1:2], imgs, LABELS, "Effusion", cfg)


@pytest.mark.parametrize(
    "finding, labels, words",
    [
        ("Hernia", LABELS, "no candidate shows Hernia"),
        ("Efusion", LABELS, "unknown finding"),
        ("Effusion", LABELS[:3], "one 'Finding Labels' string per candidate"),
    ],
)
def test_choose_references_bad_input(real_images, finding, labels, words):
    imgs = real_images[128][: len(LABELS)]
    with pytest.raises(ValueError) as info:
        choose_references(imgs[1:2], imgs, labels, finding)
    assert words in str(info.value)


def test_fill_region_replaces_only_the_region_from_its_surroundings():
    from augment.registration.transfer import fill_region

    img = torch.full((1, 1, 32, 32), 0.3)
    img[:, :, 12:20, 12:20] = 0.9  # a bright lesion on a flat background
    region = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    region[:, :, 12:20, 12:20] = True
    out = fill_region(img, region, grow=1)
    assert torch.allclose(out[:, :, 12:20, 12:20], torch.full((1, 1, 8, 8), 0.3), atol=1e-4)
    assert torch.equal(out[:, :, :10], img[:, :, :10])
    assert torch.equal(fill_region(img, torch.zeros_like(region)), img)


def test_filling_the_finding_keeps_it_from_being_registered_away():
    """A bright 'effusion' at the base of the reference's left lung, absent from the healthy
    image: Demons on the raw pair shrinks it into the healthy anatomy; with the region filled
    first, the field aligns the anatomy and the warped reference still shows the finding."""
    healthy, _ = _phantom(64)
    reference = healthy.clone()
    amap = torch.zeros(1, 1, 64, 64)
    amap[:, :, 34:44, 10:22] = 1.0
    reference[amap > 0] = 0.8
    inside = warp_image(amap, torch.zeros(1, 2, 64, 64)) > 0.5
    cfg = RegistrationConfig(iterations=60, prealign="none", pyramid_levels=1)
    kept = transfer_region(healthy, reference, amap, cfg).registration.warped[inside].mean()
    lost = transfer_region(healthy, reference, amap, cfg.model_copy(update={"fill_lesion": False})).registration.warped[inside].mean()
    assert kept > 0.7  # the finding is still there, where the map says
    assert kept > lost + 0.03
