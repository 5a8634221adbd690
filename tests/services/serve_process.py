"""Start and stop a real `serve run` of services.app:app on 127.0.0.1 (tests and bench).

Ray token authentication stays on, as in production: the `serve run` subprocess gets
``RAY_AUTH_MODE=token`` and a fresh random ``RAY_AUTH_TOKEN``, so the local Ray cluster it
starts uses that token and nothing is written to ``~/.ray``; the client side needs no Ray
token because it only speaks HTTP to the Serve proxy. The API's own bearer token is another
random value in ``CXR_API_TOKEN``. :func:`stop_serve` sends SIGTERM to the `serve run`
process group (the Serve application and the Ray processes that `serve run` started), then
SIGKILL after a grace period; `ray stop` is never used, so other Ray clusters on the
machine are left alone.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_serve_config(path: Path, profile: Path, port: int, generator: dict | None = None) -> Path:
    """A Serve config like configs/serve.yaml, on loopback, one small replica each."""
    cfg = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "cxr-augment",
                "route_prefix": "/",
                "import_path": "services.app:app",
                "args": {"config": str(profile)},
                "deployments": [
                    # configs/serve.yaml's queue settings, one replica each
                    {"name": "Ingress", "num_replicas": 1, "max_ongoing_requests": 64, "max_queued_requests": 256},
                    {"name": "Generator", "num_replicas": 1, "max_ongoing_requests": 8, "max_queued_requests": 64, **(generator or {})},
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def serve_env(api_token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(
        # a Ray of its own: with no address `serve run` joins whatever cluster
        # /tmp/ray/ray_current_cluster names, a stopped one or someone else's included
        RAY_ADDRESS="local",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(24),
        CXR_API_TOKEN=api_token,
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        TQDM_DISABLE="1",
    )
    return env


def start_serve(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    serve_bin = Path(sys.executable).with_name("serve")
    fh = open(log, "wb")
    return subprocess.Popen([str(serve_bin), "run", str(config)], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_serve(proc: subprocess.Popen, grace_s: float = 45.0) -> None:
    """SIGTERM to the process group we started, SIGKILL if it lingers."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def wait_ready(proc: subprocess.Popen, base: str, headers: dict[str, str], log: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base, timeout=10.0) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
            try:
                if c.get("/v1/findings", headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
    raise RuntimeError(f"the service was not ready after {timeout_s} s:\n{log.read_text(errors='replace')[-4000:]}")
