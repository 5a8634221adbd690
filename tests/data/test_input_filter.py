"""The input quality filter: planted bad images are dropped for the right reason, good ones kept."""

from __future__ import annotations

import numpy as np
import pytest

from augment.config import ConfigError, InputFilterConfig, load_config
from augment.data.input_filter import REASONS, filter_images, image_scores, robust_z

SIZE = 64


def _plant(good: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, str, str]]:
    """Bad images made from good ones: id -> (image, view, expected reason)."""
    a, b, c, d, e, f = good[:6]
    return {
        "bad_rot90": (np.rot90(a).copy(), "PA", "rotated"),
        "bad_rot270": (np.rot90(b, 3).copy(), "PA", "rotated"),
        "bad_inverted": (1.0 - c, "PA", "inverted"),
        "bad_blank": (np.full((SIZE, SIZE), 0.5, np.float32) + 0.002 * rng.standard_normal((SIZE, SIZE)).astype(np.float32), "PA", "blank"),
        "bad_black": (np.zeros((SIZE, SIZE), np.float32), "AP", "blank"),
        "bad_saturated": (np.clip((d - 0.5) * 12 + 0.5, 0, 1), "PA", "saturated"),
        "bad_lateral": (e.copy(), "LL", "view"),
    }


def _run(good: np.ndarray, good_ids: list[str], cfg: InputFilterConfig | None = None):
    rng = np.random.default_rng(0)
    bad = _plant(good, rng)
    ids = good_ids + list(bad)
    imgs = np.concatenate([good, np.stack([v[0] for v in bad.values()]).astype(np.float32)])
    views = ["PA"] * len(good_ids) + [v[1] for v in bad.values()]
    order = rng.permutation(len(ids))  # bad ones scattered among the good
    res = filter_images([ids[i] for i in order], imgs[order], cfg or InputFilterConfig(), views=[views[i] for i in order])
    return res, bad


def _check(res, bad, good_ids):
    for k, (_, _, reason) in bad.items():
        assert res.reason(k) == reason, (k, res.dropped.get(k))
    assert set(good_ids) <= set(res.kept), {k: res.dropped[k] for k in good_ids if k in res.dropped}
    assert res.counts()["rotated"] == 2 and res.counts()["blank"] == 2
    assert res.summary()["dropped"] == len(bad) and res.summary()["kept"] == len(good_ids)
    assert set(res.thumbnails) == set(bad)


@pytest.fixture(scope="module")
def nih_good(request):
    from shared_paths import NIH_SAMPLE

    if not (NIH_SAMPLE / "Data_Entry_2017.csv").is_file():
        pytest.skip(f"real NIH sample not found at {NIH_SAMPLE}")
    from augment.data import load_index
    from augment.data.io import read_image

    index = load_index(NIH_SAMPLE)
    # 40 real images; the 5 of the 559 the default filter drops (bench/results/input-filter-nih-sample.json) left out
    known = {"00017625_000.png", "00017999_000.png", "00019534_000.png", "00029118_000.png", "00029774_002.png"}
    recs = [r for r in index.records if r.image_index not in known and r.view in ("PA", "AP")][:40]
    return np.stack([read_image(index.path(r), SIZE) for r in recs]), [r.image_index for r in recs]


@pytest.mark.integration
def test_planted_bad_images_among_real_nih_images(nih_good):
    good, ids = nih_good
    res, bad = _run(good, ids)
    assert res.population_checked
    _check(res, bad, ids)


def test_planted_bad_images_among_phantoms(tmp_path):
    from augment.config import PhantomConfig
    from augment.data import load_index
    from augment.data.io import read_image
    from augment.data.phantom import generate_phantom

    generate_phantom(PhantomConfig(n_images=40, image_size=SIZE, seed=3), tmp_path / "ph")
    index = load_index(tmp_path / "ph")
    good = np.stack([read_image(index.path(r), SIZE) for r in index.records])
    ids = [r.image_index for r in index.records]
    res, bad = _run(good, ids)
    _check(res, bad, ids)


def test_small_set_uses_the_rules_on_each_image(nih_good):
    """Under min_population images no template: mirror symmetry and band contrast decide."""
    good, ids = nih_good
    s = image_scores(good)
    # images whose own scores are clear: left-right symmetric, bright centre band, dark lungs
    ok = [i for i in range(len(ids)) if s["symmetry_lr"][i] - s["symmetry_ud"][i] > 0.3
          and s["band_contrast"][i] > 0.05 and s["lung_excess"][i] < 0][:6]
    assert len(ok) == 6
    g = good[ok]
    imgs = np.stack([*g[:4], np.rot90(g[4]).copy(), 1.0 - g[5]])
    res = filter_images(["a", "b", "c", "d", "rot", "inv"], imgs, InputFilterConfig())
    assert not res.population_checked
    assert res.kept == ("a", "b", "c", "d")
    assert res.reason("rot") == "rotated" and res.reason("inv") == "inverted"


def test_exposure_and_pca_outliers(tmp_path):
    """A very dark exposure and a non-chest image (noise) among phantoms are dropped as outliers."""
    from augment.config import PhantomConfig
    from augment.data import load_index
    from augment.data.io import read_image
    from augment.data.phantom import generate_phantom

    generate_phantom(PhantomConfig(n_images=40, image_size=SIZE, seed=4), tmp_path / "ph")
    index = load_index(tmp_path / "ph")
    good = np.stack([read_image(index.path(r), SIZE) for r in index.records])
    rng = np.random.default_rng(1)
    dark = good[0] * 0.25  # underexposed: same anatomy, a quarter of the brightness
    # not a chest: coarse random blotches with the phantoms' mean brightness
    blotches = np.kron(rng.uniform(0, 1, (8, 8)), np.ones((SIZE // 8, SIZE // 8)))
    blotches = (blotches - blotches.mean() + good.mean()).clip(0, 1).astype(np.float32)
    ids = [f"g{i}" for i in range(len(good))] + ["dark", "blotches"]
    res = filter_images(ids, np.concatenate([good, dark[None], blotches[None]]).astype(np.float32), InputFilterConfig())
    assert res.reason("dark") == "exposure", res.dropped.get("dark")
    assert res.reason("blotches") in ("outlier", "rotated", "inverted"), res.dropped.get("blotches")
    assert len(res.kept) == len(good)


def test_disabled_checks_and_views():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(0.2, 0.8, (3, 16, 16)).astype(np.float32)
    cfg = InputFilterConfig(views=[])  # any view allowed
    res = filter_images(["a", "b", "c"], imgs, cfg, views=["LL", "PA", ""])
    assert "view" not in {r for v in res.dropped.values() for r in v}
    res = filter_images(["a", "b", "c"], imgs, InputFilterConfig(), views=["LL", "ll", ""])
    assert res.reason("a") == "view" and res.reason("b") == "view" and res.reason("c") != "view"
    assert list(res.counts()) == list(REASONS)


def test_robust_z_known_answer():
    v = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    z = robust_z(v)  # median 3, MAD 1 -> scale 1.4826
    assert z[2] == 0.0 and z[4] == pytest.approx(97 / 1.4826)
    assert (robust_z(np.ones(4)) == 0).all()


@pytest.mark.parametrize(
    "ids, shape, views, match",
    [
        (["a", "b"], (3, 16, 16), None, "N = len"),
        (["a", "a"], (2, 16, 16), None, "unique"),
        (["a", "b"], (2, 16, 16), ["PA"], "one view per image"),
        (["a"], (1, 16), None, r"\(N, H, W\)"),
    ],
)
def test_bad_input_names_the_fix(ids, shape, views, match):
    with pytest.raises(ValueError, match=match):
        filter_images(ids, np.zeros(shape, np.float32), InputFilterConfig(), views=views)


def test_config_section_defaults_and_unknown_keys():
    cfg = load_config(None)
    assert cfg.input_filter.enabled and cfg.input_filter.views == ["PA", "AP"]
    assert not load_config(None, ["input_filter.enabled=false"]).input_filter.enabled
    with pytest.raises(ConfigError, match="input_filter.enabeld: unknown key"):
        load_config(None, ["input_filter.enabeld=false"])


def test_unreadable_file_is_left_to_the_job(tmp_path):
    """A corrupt PNG is not judged by the filter: kept, listed, NaN scores (the job records it per item)."""
    from augment.config import PhantomConfig
    from augment.data import load_index
    from augment.data.input_filter import filter_index
    from augment.data.phantom import generate_phantom

    generate_phantom(PhantomConfig(n_images=24, image_size=SIZE, seed=5), tmp_path / "ph")
    index = load_index(tmp_path / "ph")
    broken = index.records[3].image_index
    (tmp_path / "ph" / "images" / broken).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = filter_index(index, index.records, InputFilterConfig(min_population=10))
    assert res.unreadable == (broken,) and broken in res.kept and broken not in res.dropped
    assert len(res.ids) == len(index.records) and np.isnan(res.scores["mean"][3])
    assert res.summary()["unreadable"] == 1
