"""What generation needs loaded: the classifier, the inpainting network and the reference bank.

:func:`load_bundle` rebuilds both models from checkpoints ``{state_dict, config, version}``
given as a file, a folder holding one, or an MLflow URI (``runs:/<id>/model``,
``models:/<name>/<version>``), and reads the diseased references of every finding found in
an NIH-layout folder, with their attention maps. The Serve deployment and the jobs call it
the same way; nothing here imports Ray.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from augment.config import RunConfig
from augment.findings import FINDINGS

if TYPE_CHECKING:  # the models load lazily, in load_bundle
    from augment.painter import Painter

log = logging.getLogger(__name__)

__all__ = ["ModelBundle", "ModelSpec", "Example", "load_bundle", "healthy_examples", "resolve_checkpoint", "default_locations"]

GENERATOR_NAME = "generator.pt"


@dataclass(frozen=True)
class ModelSpec:
    """Where the models come from (what ``serve.*`` or a deployment's ``user_config`` names)."""

    classifier: str
    generator: str
    references: str
    verifier: str | None = None


@dataclass(frozen=True)
class ModelBundle:
    """Everything one generation call needs, on one device.

    Attributes:
        classifier: the EfficientNet classifier, eval mode.
        generator: the generator (:class:`~augment.painter.Painter`: the flow model or a baseline), eval mode.
        references: the :class:`~augment.synthesis.reference_bank.ReferenceBank` (images and
            maps at ``work_size``, on the CPU).
        spec: the locations the models were loaded from.
        work_size: side length at which references are read and registration runs.
        device: where the models live.
        info: JSON-ready description (checkpoint configs, load time), for ``/v1/models``.
        verifier: the local finding verifier (:class:`~augment.quality.verifier.Verifier`),
            the gate's judge; None when none was found (the classifier alone judges).
    """

    classifier: torch.nn.Module
    generator: Painter
    references: Any
    spec: ModelSpec
    work_size: int
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)
    verifier: Any = None

    @property
    def available_findings(self) -> list[str]:
        """Findings the bank holds references for, in NIH order."""
        have = set(self.references.findings())
        return [f for f in FINDINGS if f in have]


def default_locations(cfg: RunConfig) -> ModelSpec:
    """The profile's model locations: ``serve.*``, else where the pipeline writes them."""
    from augment.data import data_root

    out = Path(cfg.output_dir)
    return ModelSpec(
        classifier=cfg.serve.classifier or str(out / "classifier" / "classifier.pt"),
        generator=cfg.serve.generator or str(out / "generator" / GENERATOR_NAME),
        references=cfg.serve.references or str(data_root(cfg)),
        verifier=cfg.serve.verifier or str(out / "verifier" / "verifier.pt"),
    )


def resolve_checkpoint(path_or_uri: str | os.PathLike, names: tuple[str, ...], tracking_uri: str | None = None) -> Path:
    """A local checkpoint file for a path, a folder, or an MLflow artifact URI.

    Args:
        path_or_uri: a ``.pt`` file, a folder holding one (searched recursively for
            ``names`` first, then any ``*.pt``), ``file://...``, or an MLflow URI.
        names: preferred file names inside a folder.
        tracking_uri: the MLflow tracking server for ``runs:/`` and ``models:/`` URIs.

    Raises:
        ValueError: the download failed or no checkpoint is there; the message says which.
    """
    from augment.tracking import local_checkpoint

    local = local_checkpoint(path_or_uri, names, tracking_uri)
    if not local.is_file():
        raise ValueError(f"{path_or_uri}: checkpoint not found; train it with the pipeline or set the serve.* location")
    return local


def _reference_bank(root: Path, cfg: RunConfig, classifier: torch.nn.Module, size: int, per_finding: int) -> Any:
    """Diseased references of every finding that ``root`` holds, with their attention maps."""
    from augment.attention import build_attention_source
    from augment.synthesis.reference_bank import ReferenceBank, build_reference_bank
    from augment.data.nih import load_index

    index = load_index(root, on_bad_row="skip")
    source = build_attention_source(cfg.attention, classifier=classifier, index=index, root=root)
    present = [f for f in FINDINGS if index.with_finding(f)]
    ids: dict[str, list[str]] = {}
    labels: dict[str, list[str]] = {}
    images: dict[str, torch.Tensor] = {}
    maps: dict[str, torch.Tensor] = {}
    for f in present:
        try:
            one = build_reference_bank(index, [f], size, source, per_finding=per_finding, seed=cfg.seed)
        except ValueError as exc:  # e.g. every map empty: that finding is not offered
            log.warning("no usable %s reference in %s: %s", f, root, exc)
            continue
        ids.update(one.ids)
        labels.update(one.labels)
        images.update(one.images)
        maps.update(one.maps)
    if not ids:
        raise ValueError(
            f"{root} holds no diseased image with a usable {cfg.attention.source} attention map; "
            "point serve.references at an NIH-layout folder with diseased images"
        )
    return ReferenceBank(ids, labels, images, maps)


@dataclass(frozen=True)
class Example:
    """A healthy radiograph offered as a source (``/v1/examples``).

    Attributes:
        id: its NIH Image Index (a file name, never a path).
        width, height: its size in pixels.
        bits: 8 or 16, the bit depth of ``png``.
        png: the image as grayscale PNG bytes (re-encoded, so an RGB(A) file arrives as grayscale).
    """

    id: str
    width: int
    height: int
    bits: int
    png: bytes


def healthy_examples(root: str | os.PathLike, n: int, accept: Callable[[Example], None] | None = None) -> list[Example]:
    """The first ``n`` images labelled ``No Finding`` of an NIH-layout folder, in CSV order.

    Args:
        root: the folder (``Data_Entry_2017.csv`` and ``images/``), e.g. the reference folder.
        n: how many; 0 gives none (the folder is not read).
        accept: optional check of each candidate (e.g. the service's upload limits); an
            exception skips the image, which is logged, and the next one is tried.

    Unreadable images are skipped the same way; fewer than ``n`` come back when the folder
    has fewer usable healthy images.
    """
    from PIL import Image

    from augment.data.io import decode_image, encode_png
    from augment.data.nih import load_index

    if n <= 0:
        return []
    root = Path(str(root).removeprefix("file://"))
    index = load_index(root, on_bad_row="skip")
    out: list[Example] = []
    for rec in index.healthy():
        if len(out) >= n:
            break
        try:
            data = index.path(rec).read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                bits = 16 if img.mode.startswith("I") else 8
            pixels = decode_image(data, name=rec.image_index)
            ex = Example(rec.image_index, int(pixels.shape[1]), int(pixels.shape[0]), bits, encode_png(pixels, bits=bits))
            if accept is not None:
                accept(ex)
        except Exception as exc:  # one bad file must not hide the others
            log.warning("healthy example %s skipped: %s", rec.image_index, exc)
            continue
        out.append(ex)
    return out


def load_bundle(cfg: RunConfig, spec: ModelSpec | None = None, device: torch.device | str | None = None) -> ModelBundle:
    """Load the classifier, the generator and the reference bank.

    Args:
        cfg: the run profile (``data.image_size`` is the working size; ``attention`` picks
            the reference maps; ``tracking.uri`` resolves MLflow URIs).
        spec: model locations; default :func:`default_locations`.
        device: default the run's device (:func:`augment.device.run_device` of ``resources.use_gpu``).

    Raises:
        ValueError: a checkpoint or the reference folder is missing or unusable.
    """
    from augment.classifier import load_classifier
    from augment.painter import load_painter

    spec = spec or default_locations(cfg)
    from augment.device import run_device

    dev = torch.device(device) if device is not None else run_device(cfg.resources.use_gpu)
    t0 = time.perf_counter()
    classifier = load_classifier(spec.classifier, map_location=dev, tracking_uri=cfg.tracking.uri)
    gen_path = resolve_checkpoint(spec.generator, (GENERATOR_NAME,), cfg.tracking.uri)
    generator = load_painter(gen_path, map_location=dev)
    root = Path(str(spec.references).removeprefix("file://"))
    if not root.is_dir():
        raise ValueError(f"reference folder {root} does not exist; set serve.references to an NIH-layout folder")
    size = cfg.data.image_size
    bank = _reference_bank(root, cfg, classifier, size, cfg.serve.references_per_finding)
    verifier = None
    if cfg.quality.judge == "verifier" and spec.verifier:
        from augment.quality.verifier import load_verifier

        local = Path(str(spec.verifier).removeprefix("file://"))
        if local.is_file() or "://" in str(spec.verifier):
            verifier = load_verifier(resolve_checkpoint(spec.verifier, ("verifier.pt",), cfg.tracking.uri), map_location=dev)
        else:
            log.warning("no verifier checkpoint at %s: the gate judges with the classifier alone "
                        "(train one with `python -m jobs.train_verifier` or set serve.verifier)", spec.verifier)
    info = {
        "device": str(dev),
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_seconds": round(time.perf_counter() - t0, 3),
        "classifier": {
            "uri": spec.classifier,
            "arch": getattr(classifier, "arch", type(classifier).__name__),
            "image_size": getattr(classifier, "image_size", None),
            "parameters": sum(p.numel() for p in classifier.parameters()),
        },
        "generator": {
            "uri": spec.generator,
            "path": str(gen_path),
            "kind": generator.kind,
            "config": generator.settings(cfg.inpainting).model_dump(mode="json"),
            "parameters": sum(p.numel() for p in generator.model.parameters()),
        },
        "references": {
            "root": str(root),
            "work_size": size,
            "attention": cfg.attention.source,
            "per_finding": {f: len(v) for f, v in bank.ids.items()},
        },
        "verifier": None if verifier is None else {
            "uri": spec.verifier, "findings": verifier.findings, "thresholds": verifier.thresholds,
        },
    }
    return ModelBundle(classifier, generator, bank, spec, size, dev, info, verifier)
