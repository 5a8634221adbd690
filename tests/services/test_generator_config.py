"""The Generator deployment's user_config handling, in process (no Ray cluster needed)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import pytest

from augment.config import ConfigError, load_config

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build_tiny_setup  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    from services.deployments import USER_CONFIG_KEYS, Generator

    root = tmp_path_factory.mktemp("gencfg")
    cfg = load_config(build_tiny_setup(root))
    shutil.copy(root / "models" / "generator.pt", root / "models" / "generator-v2.pt")
    g = Generator.func_or_class(cfg.model_dump(mode="json"))
    g.reconfigure({k: getattr(cfg.serve, k) for k in USER_CONFIG_KEYS})
    return g, root


def test_user_config_reloads_models_only_when_a_location_changes(replica):
    g, root = replica
    first = g._bundle
    g.reconfigure({"max_batch_size": 3, "batch_wait_timeout_s": 0.05, "batching": False})
    assert g._bundle is first, "batching changes do not reload models"
    info = g.info()
    assert info["batching"] == {"enabled": False, "max_batch_size": 3, "batch_wait_timeout_s": 0.05}
    g.reconfigure({"generator": str(root / "models" / "generator-v2.pt")})
    assert g._bundle is not first
    assert g.info()["generator"]["uri"] == "generator-v2.pt", "a file name, not the server path"


def test_user_config_rejects_unknown_keys_and_bad_values(replica):
    g, _ = replica
    with pytest.raises(ValueError, match="unknown user_config"):
        g.reconfigure({"max_batch": 3})
    with pytest.raises(ValueError):
        g.reconfigure({"max_batch_size": 0})
    with pytest.raises(ValueError, match="not found"):
        g.reconfigure({"generator": "/nonexistent/generator.pt"})
    assert g.info()["available_findings"], "a failed reload keeps the models that were loaded"


def test_errors_come_back_as_dicts_not_exceptions(replica):
    g, _ = replica
    g.reconfigure({"batching": False})  # @serve.batch needs a running replica; the plain path does not
    img = np.full((64, 64), 0.5, np.float32)
    out = asyncio.run(g.generate({"image": img, "findings": ["Mass"], "seed": 0}))
    assert out["error"]["status"] == 422 and out["error"]["code"] == "no_contrast"
    out = asyncio.run(g.generate({"image": img + np.linspace(0, 0.3, 64, dtype=np.float32), "findings": ["Hernia"], "seed": 0}))
    assert out["error"]["code"] == "unknown_finding" and "Mass" in out["error"]["known"]


def test_unexpected_failures_tell_the_client_nothing_internal(replica, monkeypatch, caplog):
    g, root = replica
    g.reconfigure({"batching": False})

    def boom(*a, **k):
        raise RuntimeError(f"CUDA exploded reading {root}/models/generator.pt <object at 0xdeadbeef>")

    monkeypatch.setattr("augment.generation.generate_batch", boom)
    img = np.full((64, 64), 0.5, np.float32) + np.linspace(0, 0.3, 64, dtype=np.float32)
    with caplog.at_level("ERROR", logger="cxr.serve"):
        out = asyncio.run(g.generate({"image": img, "findings": ["Mass"], "seed": 0}))
    err = out["error"]
    assert err["status"] == 500 and err["code"] == "internal_error" and err["reference"] in err["message"]
    assert str(root) not in err["message"] and "0x" not in err["message"] and "RuntimeError" not in err["message"]
    assert err["reference"] in caplog.text and "CUDA exploded" in caplog.text, "the operator's log has the details"


def test_models_info_shows_no_server_paths_pid_or_uptime(replica):
    g, root = replica
    text = json.dumps(g.info())
    assert str(root) not in text and "pid" not in text and "uptime" not in text and "loaded_at" not in text
    assert g.info()["replica"]["instance"] == g.info()["replica"]["instance"]


def test_builder_takes_resources_from_the_profile_and_needs_a_token(tmp_path, monkeypatch):
    from services.app import app

    profile = build_tiny_setup(tmp_path)
    monkeypatch.delenv("CXR_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="CXR_API_TOKEN"):
        app({"config": str(profile)})
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with pytest.raises(ValueError, match="refused: it has 6 characters; at least 32"):
        app({"config": str(profile), "overrides": [f"serve.token_file={token_file}"]})
    monkeypatch.setenv("CXR_API_TOKEN", "replace-me")
    with pytest.raises(ValueError, match="placeholder 'replace-me'"):
        app({"config": str(profile)})
    monkeypatch.delenv("CXR_API_TOKEN")
    token_file.write_text("0123456789abcdef" * 4 + "\n")
    built = app({"config": str(profile), "overrides": [f"serve.token_file={token_file}", "resources.use_gpu=true"]})
    gen = built._bound_deployment.init_args[0]
    assert gen._bound_deployment.ray_actor_options["num_gpus"] == 1.0
    assert gen._bound_deployment.ray_actor_options["num_cpus"] == 0.5
    assert gen._bound_deployment._deployment_config.user_config["generator"].endswith("generator.pt")
    with pytest.raises(ValueError, match="unknown application args"):
        app({"config": str(profile), "replicas": 3})
    with pytest.raises(ConfigError):
        app({"config": str(profile), "overrides": ["serve.max_batch_size=0"]})


def test_error_codes_follow_the_error_class_not_its_words():
    from augment.errors import NoContrastError, UnknownFindingError
    from services.deployments import _as_error

    assert _as_error(UnknownFindingError("Hernia has no references here"), ["Mass"])["error"] == {
        "status": 422, "code": "unknown_finding", "message": "Hernia has no references here", "known": ["Mass"]}
    assert _as_error(NoContrastError("all pixels are 0.5"), [])["error"]["code"] == "no_contrast"
    # words alone do not pick the code: a plain ValueError is invalid input whatever it says
    plain = _as_error(ValueError("unknown finding in a constant image"), ["Mass"])["error"]
    assert plain["code"] == "invalid_input" and "known" not in plain
    # and the library raises the typed errors where a service meets them
    from augment.findings import finding_index
    from augment.registration.checks import check_images

    with pytest.raises(UnknownFindingError):
        finding_index("Broken_Arm")
    with pytest.raises(NoContrastError):
        check_images(torch.full((1, 1, 64, 64), 0.5), "fixed")
