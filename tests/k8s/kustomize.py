"""A small pure-Python stand-in for ``kubectl kustomize``, enough for ``k8s/``.

It implements the parts of Kustomize that the project's kustomizations use, with
Kustomize's semantics, and refuses everything else loudly (``NotImplementedError``) so a
test never passes on a feature that was silently ignored:

- ``resources``: local YAML files (multi-document) and directories holding a
  kustomization; each directory is built first, then the current layer transforms it.
- ``patches``: a file (``path``) or inline text (``patch``), with an optional ``target``
  (group, version, kind, name, namespace). A YAML list is a JSON6902 patch (RFC 6902:
  add, remove, replace, move, copy, test) and needs a ``target``; a mapping is a
  strategic-merge patch that names its object by apiVersion, kind and metadata.name.
  Strategic merge is implemented for what it means without an OpenAPI schema (custom
  resources such as ray.io's): maps merge recursively, ``null`` deletes a key, lists are
  replaced whole. A strategic-merge patch that carries a list into a built-in kind (where
  Kubernetes would merge lists by key) or uses ``$patch`` directives is refused.
- ``namespace``: set on every namespaced object (cluster-scoped kinds are left alone).
- ``labels`` with ``pairs`` (``includeSelectors``/``includeTemplates`` false): added to
  ``metadata.labels``.
- ``images``: ``name`` -> ``newName``/``newTag``/``digest`` on every ``image`` of a
  ``containers`` or ``initContainers`` list at any depth (Kustomize's legacy image filter,
  which is what reaches pod templates nested inside custom resources).

Transformers run in Kustomize's order: patches, namespace, labels, images.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "build", "apply_json6902", "strategic_merge", "dump"]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"}

CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "Node",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "RuntimeClass",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "APIService",
}

# API groups whose kinds have strategic-merge list semantics (merge keys) in Kubernetes.
BUILTIN_GROUPS = {"", "apps", "batch", "networking.k8s.io", "policy", "rbac.authorization.k8s.io",
                  "autoscaling", "storage.k8s.io", "scheduling.k8s.io", "node.k8s.io"}


class KustomizeError(ValueError):
    """A kustomization or patch is invalid; the message names the file and what is wrong."""


# --------------------------------------------------------------------------- helpers


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _rid(obj: dict) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def _load_docs(path: Path) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise KustomizeError(f"{path}: not valid YAML ({exc})") from None
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise KustomizeError(f"{path}: every document must be a Kubernetes object with apiVersion and kind")
    return docs


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"{directory}: no kustomization.yaml")


# --------------------------------------------------------------------------- JSON6902


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise KustomizeError(f"JSON pointer {pointer!r} must start with '/'")
    return [_unescape(t) for t in pointer[1:].split("/")]


def _index(container: list, token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise KustomizeError(f"list index {token!r} is not a non-negative integer")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise KustomizeError(f"list index {i} out of range (length {len(container)})")
    return i


def _resolve(doc: Any, tokens: list[str], pointer: str) -> Any:
    node = doc
    for t in tokens:
        if isinstance(node, dict):
            if t not in node:
                raise KustomizeError(f"path {pointer!r}: key {t!r} does not exist")
            node = node[t]
        elif isinstance(node, list):
            node = node[_index(node, t, allow_end=False)]
        else:
            raise KustomizeError(f"path {pointer!r}: {t!r} is below a scalar")
    return node


def _add(doc: Any, pointer: str, value: Any) -> Any:
    tokens = _split_pointer(pointer)
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise KustomizeError(f"add {pointer!r}: parent is a scalar")
    return doc


def _remove(doc: Any, pointer: str) -> Any:
    tokens = _split_pointer(pointer)
    if not tokens:
        raise KustomizeError("remove of the whole document is not allowed")
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise KustomizeError(f"remove {pointer!r}: key {last!r} does not exist")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, allow_end=False)]
    else:
        raise KustomizeError(f"remove {pointer!r}: parent is a scalar")
    return doc


def apply_json6902(doc: Any, ops: list[dict]) -> Any:
    """Apply an RFC 6902 JSON patch to a copy of ``doc`` and return it."""
    out = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise KustomizeError(f"JSON6902 operation {op!r} needs 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind == "add":
            out = _add(out, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            out = _remove(out, path)
        elif kind == "replace":
            _resolve(out, _split_pointer(path), path)  # must exist
            out = _remove(out, path) if _split_pointer(path) else out
            out = _add(out, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_resolve(out, _split_pointer(op["from"]), op["from"]))
            if kind == "move":
                out = _remove(out, op["from"])
            out = _add(out, path, value)
        elif kind == "test":
            actual = _resolve(out, _split_pointer(path), path)
            if actual != op["value"]:
                raise KustomizeError(f"test {path!r} failed: expected {op['value']!r}, found {actual!r}")
        else:
            raise KustomizeError(f"unknown JSON6902 op {kind!r}")
    return out


# --------------------------------------------------------------------------- strategic merge


def _check_smp(patch: Any, builtin: bool, where: str) -> None:
    if isinstance(patch, dict):
        for k, v in patch.items():
            if isinstance(k, str) and k.startswith("$"):
                raise NotImplementedError(f"{where}: strategic-merge directive {k!r} is not supported")
            _check_smp(v, builtin, f"{where}.{k}")
    elif isinstance(patch, list) and builtin:
        raise NotImplementedError(
            f"{where}: a strategic-merge patch carrying a list into a built-in kind needs "
            "Kubernetes' merge keys; not implemented (use a JSON6902 patch)"
        )


def strategic_merge(obj: dict, patch: dict) -> dict:
    """Strategic-merge ``patch`` into a copy of ``obj`` (schema-less semantics, see module doc)."""
    group, _ = _group_version(obj.get("apiVersion", ""))
    _check_smp({k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "metadata")},
               group in BUILTIN_GROUPS, obj.get("kind", "?"))

    def merge(base: Any, p: Any) -> Any:
        if not isinstance(base, dict) or not isinstance(p, dict):
            return copy.deepcopy(p)
        out = copy.deepcopy(base)
        for k, v in p.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = merge(base.get(k), v)
        return out

    return merge(obj, patch)


# --------------------------------------------------------------------------- transformers


def _matches(obj: dict, target: dict) -> bool:
    group, version = _group_version(obj.get("apiVersion", ""))
    meta = obj.get("metadata") or {}
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise NotImplementedError(f"patch target selector(s) {sorted(unknown)} are not supported")
    checks = {"group": group, "version": version, "kind": obj.get("kind"),
              "name": meta.get("name"), "namespace": meta.get("namespace")}
    return all(checks[k] == v for k, v in target.items())


def _apply_patches(objs: list[dict], patches: list[dict], base_dir: Path) -> list[dict]:
    for i, entry in enumerate(patches or []):
        where = f"{base_dir}/kustomization.yaml patches[{i}]"
        if "path" in entry:
            text = (base_dir / entry["path"]).read_text()
            where = f"{base_dir / entry['path']}"
        elif "patch" in entry:
            text = entry["patch"]
        else:
            raise KustomizeError(f"{where}: needs 'path' or 'patch'")
        extra = set(entry) - {"path", "patch", "target"}
        if extra:
            raise NotImplementedError(f"{where}: patch option(s) {sorted(extra)} are not supported")
        body = yaml.safe_load(text)
        target = entry.get("target")
        if isinstance(body, list):
            if not target:
                raise KustomizeError(f"{where}: a JSON6902 patch needs a target")
            hits = [j for j, o in enumerate(objs) if _matches(o, target)]
            if not hits:
                raise KustomizeError(f"{where}: target {target} matches no resource")
            for j in hits:
                try:
                    objs[j] = apply_json6902(objs[j], body)
                except KustomizeError as exc:
                    raise KustomizeError(f"{where}: {exc}") from None
        elif isinstance(body, dict):
            if target:
                hits = [j for j, o in enumerate(objs) if _matches(o, target)]
            else:
                pmeta = body.get("metadata") or {}
                hits = [
                    j for j, o in enumerate(objs)
                    if o.get("apiVersion") == body.get("apiVersion") and o.get("kind") == body.get("kind")
                    and o["metadata"].get("name") == pmeta.get("name")
                    and ("namespace" not in pmeta or o["metadata"].get("namespace") == pmeta["namespace"])
                ]
            if not hits:
                raise KustomizeError(f"{where}: strategic-merge patch matches no resource")
            for j in hits:
                objs[j] = strategic_merge(objs[j], {k: v for k, v in body.items() if k != "metadata"}
                                          | {"metadata": {k: v for k, v in (body.get("metadata") or {}).items()
                                                          if k not in ("name", "namespace")}})
        else:
            raise KustomizeError(f"{where}: a patch must be a YAML list (JSON6902) or mapping (strategic merge)")
    return objs


def _set_namespace(objs: list[dict], namespace: str) -> None:
    for o in objs:
        if o["kind"] not in CLUSTER_SCOPED_KINDS:
            o.setdefault("metadata", {})["namespace"] = namespace


def _add_labels(objs: list[dict], entries: list[dict]) -> None:
    for entry in entries or []:
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise NotImplementedError("labels with includeSelectors/includeTemplates are not supported")
        extra = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
        if extra:
            raise NotImplementedError(f"labels option(s) {sorted(extra)} are not supported")
        for o in objs:
            labels = o.setdefault("metadata", {}).setdefault("labels", {})
            labels.update({str(k): str(v) for k, v in entry["pairs"].items()})


def _split_image(image: str) -> tuple[str, str, str]:
    """'repo/name:tag@sha256:..' -> (name, tag, digest)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def _set_images(objs: list[dict], images: list[dict]) -> None:
    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for c in value:
                        if isinstance(c, dict) and isinstance(c.get("image"), str):
                            c["image"] = rewrite(c["image"])
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    def rewrite(image: str) -> str:
        name, tag, digest = _split_image(image)
        for rule in images:
            if rule["name"] != name:
                continue
            new_name = rule.get("newName", name)
            if "digest" in rule:
                return f"{new_name}@{rule['digest']}"
            new_tag = rule.get("newTag", tag)
            out = f"{new_name}:{new_tag}" if new_tag else new_name
            return f"{out}@{digest}" if digest and "newTag" not in rule else out
        return image

    if not images:
        return
    for rule in images:
        extra = set(rule) - {"name", "newName", "newTag", "digest"}
        if extra:
            raise NotImplementedError(f"images option(s) {sorted(extra)} are not supported")
    for o in objs:
        visit(o)


# --------------------------------------------------------------------------- build


def build(directory: str | Path) -> list[dict]:
    """Render the kustomization in ``directory`` like ``kubectl kustomize DIR``.

    Returns the objects in resource order. Raises :class:`KustomizeError` for invalid input
    and ``NotImplementedError`` for Kustomize features outside the supported subset.
    """
    directory = Path(directory).resolve()
    kfile = _kustomization_file(directory)
    k = yaml.safe_load(kfile.read_text()) or {}
    unsupported = set(k) - SUPPORTED_FIELDS
    if unsupported:
        raise NotImplementedError(f"{kfile}: field(s) {sorted(unsupported)} are not supported by this renderer")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{kfile}: kind must be Kustomization")

    objs: list[dict] = []
    for res in k.get("resources") or []:
        if "://" in res or res.startswith("github.com/"):
            raise NotImplementedError(f"{kfile}: remote resource {res!r} is not supported")
        path = (directory / res).resolve()
        if path.is_dir():
            objs.extend(build(path))
        elif path.is_file():
            objs.extend(_load_docs(path))
        else:
            raise KustomizeError(f"{kfile}: resource {res!r} does not exist")

    seen: set[tuple[str, str, str, str]] = set()
    for o in objs:
        rid = _rid(o)
        if rid in seen:
            raise KustomizeError(f"{kfile}: resource {rid} appears twice")
        seen.add(rid)

    objs = _apply_patches(objs, k.get("patches"), directory)
    if k.get("namespace"):
        _set_namespace(objs, k["namespace"])
    _add_labels(objs, k.get("labels"))
    _set_images(objs, k.get("images"))
    return objs


def dump(objs: list[dict]) -> str:
    """The rendered objects as one multi-document YAML stream (like ``kubectl kustomize``)."""
    return yaml.safe_dump_all(objs, sort_keys=False)
