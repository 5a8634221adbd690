import re

import pytest

from augment.config import ConfigError, RunConfig, apply_overrides, load_config
from shared_paths import REPO

PROFILES = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in PROFILES if p.name != "serve.yaml"], ids=lambda p: p.name)
def test_every_profile_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.name == path.stem


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg.data.source == "phantom"
    assert cfg.classifier.arch == "efficientnet-b4"  # the paper's recipe is the default
    assert cfg.classifier.lr == 1e-4 and cfg.classifier.epochs == 10


def test_unknown_key_named_with_its_path(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("classifier:\n  epoks: 3\n")
    with pytest.raises(ConfigError, match=r"classifier\.epoks: unknown key"):
        load_config(p)


def test_wrong_type_named_with_its_path(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  phantom:\n    n_images: many\n")
    with pytest.raises(ConfigError, match=r"data\.phantom\.n_images"):
        load_config(p)


def test_unknown_finding_rejected():
    with pytest.raises(ConfigError, match="unknown finding"):
        load_config(None, ["augment.findings=[Hernia, Broken_Arm]"])


def test_nih_source_needs_root():
    with pytest.raises(ConfigError, match="data.root is required"):
        load_config(None, ["data.source=nih"])


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("classifier.epochs=2", ("classifier", "epochs"), 2),
        ("resources.use_gpu=true", ("resources", "use_gpu"), True),
        ("data.phantom.prevalence.Pneumothorax=0.02", ("data", "phantom"), None),
        ("tracking.uri=http://mlflow:5000", ("tracking", "uri"), "http://mlflow:5000"),
    ],
)
def test_overrides(override, key, expected):
    cfg = load_config(REPO / "configs" / "local.yaml", [override])
    value = getattr(getattr(cfg, key[0]), key[1])
    if expected is None:
        assert value.prevalence["Pneumothorax"] == 0.02
        assert value.prevalence["Cardiomegaly"] == 0.25  # the rest of the mapping is kept
    else:
        assert value == expected


@pytest.mark.parametrize("bad", ["classifier.epochs", "=3", "classifier.epochs=[1,", "seed.x=1"])
def test_bad_overrides(bad):
    with pytest.raises(ConfigError):
        load_config(None, [bad])


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_config_is_frozen_and_fingerprint_tracks_changes():
    a = load_config(None)
    b = load_config(None, ["classifier.epochs=3"])
    with pytest.raises(Exception):
        a.seed = 3  # type: ignore[misc]
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint("data") == b.fingerprint("data")
    assert a.flat()["classifier.epochs"] == 10


def test_apply_overrides_does_not_mutate():
    raw = {"classifier": {"epochs": 1}}
    out = apply_overrides(raw, ["classifier.epochs=5"])
    assert raw["classifier"]["epochs"] == 1 and out["classifier"]["epochs"] == 5


def test_duplicate_findings_rejected_naming_the_duplicate():
    with pytest.raises(ConfigError, match=r"augment\.findings: .*'Mass' listed more than once.*list it once"):
        load_config(None, ["augment.findings=[Mass, Hernia, Mass]"])


SEED_KEYS = [
    "seed", "data.split.seed", "data.phantom.seed", "inpainting.seed", "baseline.seed", "classifier.seed", "augment.seed",
    "verifier.seed", "longtail.test.seed",
]


@pytest.mark.parametrize("key", SEED_KEYS)
def test_negative_seeds_rejected_naming_the_field(key):
    k = re.escape(key)
    with pytest.raises(ConfigError, match=rf"  {k}: .*greater than or equal to 0 \(got -1\); set {k} to 0 or more"):
        load_config(None, [f"{key}=-1"])
    assert load_config(None, [f"{key}=0"])  # 0 is a seed


def test_every_seed_field_is_checked():
    """A seed field added to a config model later is covered by the test above."""
    from pydantic import BaseModel

    found = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            key = f"{prefix}{name}"
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".")
            elif name == "seed":
                found.append(key)

    walk(RunConfig, "")
    assert sorted(found) == sorted(SEED_KEYS)


def test_check_paths_names_key_and_fix(tmp_path):
    from augment.config import check_paths

    cfg = load_config(None, ["data.source=nih", f"data.root={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match=r"data\.root: folder .*missing' not found; set data\.root to an NIH-layout folder"):
        check_paths(cfg)
    check_paths(cfg, data=False)  # only checkpoints asked for
    (tmp_path / "nih").mkdir()
    cfg = load_config(None, ["data.source=nih", f"data.root={tmp_path / 'nih'}"])
    with pytest.raises(ConfigError, match="has no images/ folder"):
        check_paths(cfg)
    (tmp_path / "nih" / "images").mkdir()
    check_paths(cfg)
    (tmp_path / "g.pt").write_bytes(b"x")
    with pytest.raises(ConfigError) as err:
        check_paths(cfg, {"--generator": str(tmp_path / "g.pt"), "--classifier": str(tmp_path / "c.pt"), "--x": None})
    assert "--classifier: checkpoint" in str(err.value) and "--generator" not in str(err.value)
    check_paths(cfg, {"--classifier": "runs:/0123/model"})  # an MLflow URI is the loader's to check
    cfg = load_config(None, ["classifier.pretrained=imagenet", f"classifier.weights_path={tmp_path / 'w.pth'}",
                             "attention.source=xrv", f"attention.xrv_cache_dir={tmp_path / 'xrv'}"])
    with pytest.raises(ConfigError) as err:
        check_paths(cfg)
    assert "classifier.weights_path: file" in str(err.value) and "attention.xrv_cache_dir: folder" in str(err.value)
