"""The healthy example sources (``GET /v1/examples``, ``GET /v1/examples/{id}``), the gate's
verdict in ``/v1/generate`` answers, and the page's promises, in process, no Ray.

The real FastAPI app (``services.app.api``, its token, admission and body-limit middlewares
included) is driven with Starlette's TestClient; the Ingress is a real instance whose
Generator is a real ``Generator`` replica object (tiny random-weight models and a phantom
reference folder) called in this process instead of through a DeploymentHandle.
"""

from __future__ import annotations

import inspect
import io
import math
import secrets
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from augment.config import ServeConfig, load_config
from augment.data.io import decode_image
from augment.data.nih import load_index
from augment.generation.bundle import healthy_examples
from services import app as service_app
from services.auth import TOKEN_ENV
from services.deployments import USER_CONFIG_KEYS, Generator, json_safe
from services.page import PAGE
from tiny_models import build_tiny_setup

pytestmark = pytest.mark.slow


class _InProcessHandle:
    """Stands where the Ingress holds a DeploymentHandle: ``handle.method.remote(arg)`` runs the
    real Generator's method in this process and is awaited like a DeploymentResponse."""

    def __init__(self, replica) -> None:
        self._replica = replica

    def __getattr__(self, name: str):
        fn = getattr(self._replica, name)

        async def call(*args):
            out = fn(*args)
            return await out if inspect.isawaitable(out) else out

        return SimpleNamespace(remote=lambda *args: call(*args))


def _user_class(deployment):
    """The class as written in services/app.py (Serve's ingress wrapper subclasses it with an async __init__)."""
    wrapper = deployment.func_or_class
    return next(c for c in wrapper.__mro__[1:] if c.__qualname__ == wrapper.__qualname__ and c.__module__ == wrapper.__module__)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    # batching off: @serve.batch needs a live replica context; the real-service tests cover it
    profile = build_tiny_setup(root, extra={"example_sources": 4, "batching": False})
    cfg = load_config(profile)
    token = secrets.token_urlsafe(24)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_ENV, token)
        for attr in ("cfg", "tokens", "admission"):  # restored when the module's tests are done
            mp.setattr(service_app._State, attr, getattr(service_app._State, attr))
        replica = Generator.func_or_class(cfg.model_dump(mode="json"))
        replica.reconfigure({k: getattr(cfg.serve, k) for k in USER_CONFIG_KEYS})
        ingress = _user_class(service_app.Ingress)(_InProcessHandle(replica), cfg.model_dump(mode="json"))
        # the routes find their Ingress as Serve's class-based view does: through the replica context
        mp.setattr("ray.serve.get_replica_context", lambda: SimpleNamespace(servable_object=ingress))
        with TestClient(service_app.api) as client:
            yield SimpleNamespace(client=client, token=token, cfg=cfg, refs=cfg.serve.references, root=root,
                                  auth={"Authorization": f"Bearer {token}"})


# --------------------------------------------------------------------------- config and loader


@pytest.mark.parametrize("bad", [-1, 65, "many"])
def test_example_sources_is_validated(bad):
    with pytest.raises(ValidationError, match="example_sources"):
        ServeConfig(example_sources=bad)
    assert ServeConfig().example_sources == 8 and ServeConfig(example_sources=0).example_sources == 0


def test_loader_takes_the_first_healthy_images_in_csv_order(setup):
    healthy = [r.image_index for r in load_index(setup.refs).healthy()]
    assert len(healthy) >= 3
    got = healthy_examples(setup.refs, 3)
    assert [e.id for e in got] == healthy[:3]
    assert healthy_examples(setup.refs, 0) == []
    # a check that refuses one image skips it and takes the next
    got = healthy_examples(setup.refs, 2, accept=lambda ex: (_ for _ in ()).throw(ValueError("no")) if ex.id == healthy[0] else None)
    assert [e.id for e in got] == healthy[1:3]


# --------------------------------------------------------------------------- the endpoints


def test_list_200(setup):
    r = setup.client.get("/v1/examples", headers=setup.auth)
    assert r.status_code == 200, r.text
    listed = r.json()["examples"]
    healthy = [rec.image_index for rec in load_index(setup.refs).healthy()]
    assert [e["id"] for e in listed] == healthy[: setup.cfg.serve.example_sources]
    for e in listed:
        assert e["width"] == e["height"] == 64 and e["bits"] in (8, 16)
    assert str(setup.root) not in r.text


def test_png_200_is_the_source_image(setup):
    ex = setup.client.get("/v1/examples", headers=setup.auth).json()["examples"][1]
    r = setup.client.get(f"/v1/examples/{ex['id']}", headers=setup.auth)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (ex["width"], ex["height"]) and img.mode in ("L", "I;16", "I")
    original = (load_index(setup.refs).image_dir / ex["id"]).read_bytes()
    np.testing.assert_allclose(decode_image(r.content), decode_image(original), atol=1 / 255)


@pytest.mark.parametrize("bad_id, code", [
    ("00000999_000.png", "unknown_example"),
    ("x" * 128, "unknown_example"),
    ("..%2F..%2Fetc%2Fpasswd", "not_found"),  # no such route once decoded: still the JSON error shape
])
def test_unknown_id_404_json_without_paths(setup, bad_id, code):
    r = setup.client.get(f"/v1/examples/{bad_id}", headers=setup.auth)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["status"] == 404 and err["code"] == code
    assert str(setup.root) not in r.text and str(setup.refs) not in r.text
    if code == "unknown_example":
        assert "GET /v1/examples" in err["message"] and len(err["known"]) == setup.cfg.serve.example_sources


def test_too_long_id_422(setup):
    r = setup.client.get("/v1/examples/" + "x" * 129, headers=setup.auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("path", ["/v1/examples", "/v1/examples/00000005_003.png", "/v1/examples/nope"])
@pytest.mark.parametrize("headers, code", [({}, "missing_token"), ({"Authorization": "Bearer " + "w" * 40}, "wrong_token")])
def test_401_without_the_token(setup, path, headers, code):
    r = setup.client.get(path, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == code
    assert r.headers["www-authenticate"].startswith("Bearer")


# --------------------------------------------------------------------------- an example as a source; the gate


def test_an_example_generates_and_the_answer_carries_the_gate(setup):
    c = setup.client
    ex = c.get("/v1/examples", headers=setup.auth).json()["examples"][0]
    png = c.get(f"/v1/examples/{ex['id']}", headers=setup.auth).content
    finding = c.get("/v1/findings", headers=setup.auth).json()["available"][0]
    r = c.post("/v1/generate", params={"finding": finding, "steps": 1, "seed": 3, "format": "json"}, content=png,
               headers={**setup.auth, "Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    s = r.json()["samples"][0]
    gate = s["gate"]
    assert gate["accepted"] is s["accepted"]
    assert gate["findings"] == finding and isinstance(gate["p_before"], list) and isinstance(gate["p_after"], list)
    for k in ("rise", "margin", "outside_max_abs_diff", "mask_fraction"):
        assert gate[k] is None or math.isclose(gate[k], s[k], rel_tol=1e-6, abs_tol=1e-9), k


def test_json_safe():
    d = {"a": (1, 2.5, float("nan")), "b": float("inf"), "c": np.float32(0.5), "d": torch.tensor([1.0, float("-inf")]),
         "e": None, "f": True, "g": np.array([[1, 2]]), "h": "x|y"}
    assert json_safe(d) == {"a": [1, 2.5, None], "b": None, "c": 0.5, "d": [1.0, None], "e": None, "f": True,
                            "g": [[1, 2]], "h": "x|y"}


# --------------------------------------------------------------------------- the page's promises


def test_page_is_open_and_names_the_endpoints(setup):
    r = setup.client.get("/")
    assert r.status_code == 200 and r.text == PAGE
    for needle in ("/v1/examples", "/v1/findings", "/v1/generate", "img:not([src])", 'id="verdict"', 'id="overlay"'):
        assert needle in PAGE
    # no <img> is written with an empty or missing source that the browser would draw broken (the CSS hides them)
    assert 'src=""' not in PAGE
