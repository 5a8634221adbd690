"""`ray job submit` of the pipeline against a head this test starts on 127.0.0.1, with Ray
2.60's token authentication on: the head and the client share one token through
``RAY_AUTH_TOKEN``. Only the cluster started here is stopped (its process group), never
``ray stop``, which would end every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared_paths import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(token: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's python is the head's
        HOME=str(tmp / "home"),  # keeps ~/.ray of the user untouched
    )
    return env


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    # one head for the module: a second head started right after the first was stopped
    # was seen to receive the first one's shutdown (its raylet got SIGTERM)
    tmp_path = tmp_path_factory.mktemp("head")
    token = secrets.token_hex(32)
    env = _env(token, tmp_path)
    (tmp_path / "home").mkdir()
    gcs, dash = _free_port(), _free_port()
    # every port of its own, so that another Ray on the machine (a test, a user) cannot
    # hold the job agent's port (52365 by default) and leave the head without job agent
    ports = {
        "dashboard-agent-listen-port": _free_port(), "dashboard-agent-grpc-port": _free_port(),
        "metrics-export-port": _free_port(), "runtime-env-agent-port": _free_port(),
        "ray-client-server-port": _free_port(), "node-manager-port": _free_port(), "object-manager-port": _free_port(),
    }
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--num-gpus=0",
         "--include-dashboard=true", "--disable-usage-stats", *(f"--{k}={v}" for k, v in ports.items())],
        env=env, cwd=tmp_path, stdout=open(tmp_path / "head.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited: {(tmp_path / 'head.log').read_text()[-2000:]}")
        r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True, text=True)
        if r.returncode == 0:
            break
        time.sleep(2)
    else:
        pytest.fail("the Ray head did not answer within 120 s")
    yield address, env, tmp_path
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    # `ray start` recorded this head as the machine's current cluster; a later ray.init()
    # without an address must not try to join it once it is gone
    current = Path("/tmp/ray/ray_current_cluster")
    if current.is_file() and current.read_text().strip().endswith(f":{gcs}"):
        current.unlink(missing_ok=True)


def test_client_without_token_is_refused(head):
    address, env, _ = head
    env = {**env, "RAY_AUTH_TOKEN": "0" * 64}
    r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "auth" in (r.stdout + r.stderr).lower()


def test_pipeline_via_ray_job_submit(head):
    address, env, tmp = head
    out, db = tmp / "runs", tmp / "mlflow.db"
    overrides = [
        f"output_dir={out}", f"tracking.uri=sqlite:///{db}", "name=jobsubmit",
        "data.phantom.n_images=60", "data.phantom.image_size=64", "data.image_size=64",
        "classifier.image_size=64", "classifier.epochs=1", "classifier.batch_size=16",
        "inpainting.crop_size=32", "inpainting.block_out_channels=[16, 32]", "inpainting.train_steps=4",
        "inpainting.sample_every=1000", "inpainting.steps=2",
        "augment.findings=[Cardiomegaly]", "augment.target_count=100", "augment.max_per_finding=2",
        f"augment.output={out}/pool", "augment.batch_size=2", "registration.iterations=5", "registration.pyramid_levels=1",
    ]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--no-wait", "--",
           "python", "-m", "jobs.pipeline", "--config", "configs/local.yaml"]
    for o in overrides:
        cmd += ["--set", o]
    deadline = time.time() + 120
    while True:  # the head answers before its job agent is up: "No available agent", try again
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode == 0 or "No available agent" not in r.stderr + r.stdout or time.time() > deadline:
            break
        time.sleep(3)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", r.stdout + r.stderr).group(0)  # the CLI colours its output
    status = ""
    deadline = time.time() + 600
    while time.time() < deadline:
        s = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, job_id], env=env, capture_output=True, text=True)
        # the CLI's verdict line: "Job 'raysubmit_...' succeeded" (or failed / was stopped)
        lines = [ln.lower() for ln in (s.stdout + s.stderr).splitlines() if f"'{job_id}'" in ln]
        status = "\n".join(lines)
        if any(k in status for k in ("succeeded", "failed", "stopped")):
            break
        time.sleep(5)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job_id], env=env, capture_output=True, text=True).stdout
    assert "succeeded" in status, f"{status}\n{logs[-4000:]}"
    assert "Open MLflow on it" in logs
    # outputs: stage folders with results, the pool with its provenance table
    results = {p.parent.name.split("-")[0]: json.loads(p.read_text()) for p in (out / "stages").glob("*/result.json")}
    assert {"data", "classifier", "generator", "augment", "compare"} <= set(results)
    pools = list((out / "pool").glob("*/provenance.csv"))
    assert len(pools) == 1 and len(pools[0].read_text().splitlines()) == 3  # header + 2 items
    # one parent MLflow run with its children
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("cxr-augment/jobsubmit")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("cxr.stage") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.data.tags["cxr.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert {"data", "classifier", "generator", "augment", "compare"} <= children
