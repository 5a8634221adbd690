"""A real `serve run` of services.app:app on 127.0.0.1, shared by the module's tests.

How Ray's own token authentication is handled, and how the processes are stopped: see
serve_process.py.
"""

from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_process import free_port, serve_env, start_serve, stop_serve, wait_ready, write_serve_config  # noqa: E402
from tiny_models import build_tiny_setup  # noqa: E402


@dataclass(frozen=True)
class Service:
    base: str
    token: str
    profile: Path
    root: Path
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=kw.pop("timeout", 120.0), **kw)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Service:
    root = tmp_path_factory.mktemp("serve")
    profile = build_tiny_setup(root)
    token = secrets.token_urlsafe(24)
    port = free_port()
    config = write_serve_config(root / "serve.yaml", profile, port)
    log = root / "serve.log"
    t0 = time.monotonic()
    proc = start_serve(config, serve_env(token), log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, base, {"Authorization": f"Bearer {token}"}, log)
        print(f"\nservice ready in {time.monotonic() - t0:.1f} s at {base}")
        yield Service(base, token, profile, root, log)
    finally:
        stop_serve(proc)
