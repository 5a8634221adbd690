"""The phantom data set: procedural frontal chest radiographs with ground-truth findings.

The embedded default when no NIH data is at hand. Two layers:

- :func:`render_phantom` is a pure, seeded renderer: one image (float32 (H, W) in [0, 1])
  with a boolean mask and a pixel box per finding. Anatomy (body, lungs, heart and
  mediastinum, spine, ribs, clavicles, scapulae, diaphragm, vessels) is in
  :mod:`augment.data.phantom_anatomy`, findings in :mod:`augment.data.phantom_findings`.
- :func:`generate_phantom` writes a whole data set in the NIH layout, so every NIH reader
  (ours and torchxrayvision's ``NIH_Dataset``) reads it::

      root/images/00000001_000.png         8-bit grayscale
      root/Data_Entry_2017.csv             NIH's exact columns
      root/BBox_List_2017.csv              one box per finding, in pixels of the stored image
      root/masks/00000001_000__Nodule.png  ground-truth masks (0 / 255)
      root/phantom.json                    the config it was made from

  Patients have several follow-up images that share their anatomy, so a split that is not
  patient-wise leaks. The folder appears atomically (written beside it, then renamed) and a
  second call with the same config returns it untouched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from augment.config import PhantomConfig
from augment.data.io import encode_png, read_image
from augment.data.nih import BBox, Record, write_bbox_list, write_data_entry
from augment.data.phantom_anatomy import (
    Acquisition,
    Anatomy,
    anatomy_layers,
    build_geometry,
    compose,
    sample_acquisition,
    sample_anatomy,
    vessel_tree,
)
from augment.data.phantom_findings import MM_PER_UNIT, RENDERERS, Context
from augment.data.phantom_geometry import Frame
from augment.findings import FINDINGS, NO_FINDING

log = logging.getLogger(__name__)

__all__ = [
    "PHANTOM_FINDINGS",
    "PhantomImage",
    "render_phantom",
    "generate_phantom",
    "load_phantom_mask",
    "plan_labels",
]

PHANTOM_FINDINGS: tuple[str, ...] = tuple(sorted(RENDERERS))
"""Findings the renderer can draw (NIH spelling)."""

MANIFEST = "phantom.json"
GENERATOR_VERSION = 1
MIN_SIZE = 32


@dataclass(frozen=True)
class PhantomImage:
    """One rendered radiograph.

    Attributes:
        image: float32 (H, W) in [0, 1].
        masks: finding -> bool (H, W) ground truth; one entry per requested finding.
        boxes: finding -> (x, y, w, h) in pixels, the tight box around the mask.
        body, lungs, heart: bool (H, W) anatomy masks (the visible lung fields, without
            the mediastinum and heart).
        ctr: cardiothoracic ratio of the drawn heart (> 0.5 means cardiomegaly).
        anatomy, acquisition: the parameters it was drawn from.
    """

    image: np.ndarray = field(repr=False)
    masks: dict[str, np.ndarray] = field(repr=False)
    boxes: dict[str, tuple[float, float, float, float]]
    body: np.ndarray = field(repr=False)
    lungs: np.ndarray = field(repr=False)
    heart: np.ndarray = field(repr=False)
    ctr: float
    anatomy: Anatomy = field(repr=False)
    acquisition: Acquisition = field(repr=False)

    @property
    def findings(self) -> tuple[str, ...]:
        return tuple(self.masks)


def _check_findings(findings: Sequence[str]) -> tuple[str, ...]:
    if isinstance(findings, str):
        raise TypeError(f"findings must be a sequence of names, got the string {findings!r}; wrap it in a list")
    out = []
    for name in findings:
        if name not in PHANTOM_FINDINGS:
            if name in FINDINGS or name == NO_FINDING:
                raise ValueError(
                    f"the phantom renderer cannot draw {name!r}; it draws {list(PHANTOM_FINDINGS)} "
                    "(pass an empty list for a healthy image)"
                )
            raise ValueError(f"unknown finding {name!r}; use NIH's spelling, one of {list(PHANTOM_FINDINGS)}")
        if name not in out:
            out.append(name)
    return tuple(n for n in RENDERERS if n in out)  # drawing order


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))


def render_phantom(
    rng: np.random.Generator,
    size: int,
    findings: Sequence[str],
    anatomy: Anatomy | None = None,
    contrast: Mapping[str, float] | None = None,
) -> PhantomImage:
    """Render one procedural frontal chest radiograph.

    The same generator state gives the same image, and the anatomy, pose, exposure and noise
    do not depend on ``findings``: rendering twice from equal states, once with and once
    without a finding, differs only where the finding is.

    Args:
        rng: source of randomness (a few draws are taken from it).
        size: side length in pixels (at least 32).
        findings: names from :data:`PHANTOM_FINDINGS`; empty for a healthy image.
        anatomy: the patient's anatomy (for follow-ups of one patient); drawn when None.
        contrast: per finding, a factor on its opacity's amplitude (Nodule, Mass: the findings
            drawn as a density of their own); 1 when absent. The draws stay the same, so a
            factor changes how conspicuous a lesion is and nothing else.

    Returns:
        A :class:`PhantomImage` with the image (float32 (size, size) in [0, 1]), a mask and
        a box per finding, and anatomy masks.

    Raises:
        ValueError: size below 32, or a finding the renderer cannot draw.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; use np.random.default_rng(seed)"
        )
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"size must be an integer of at least {MIN_SIZE} pixels, got {size!r}")
    size = int(size)
    names = _check_findings(findings)
    seeds = rng.integers(0, 2**63 - 1, size=2 + len(PHANTOM_FINDINGS))
    anat = anatomy if anatomy is not None else sample_anatomy(np.random.default_rng(int(seeds[0])))
    acq = sample_acquisition(np.random.default_rng(int(seeds[1])))
    frngs = {n: np.random.default_rng(int(seeds[2 + PHANTOM_FINDINGS.index(n)])) for n in names}
    params = {n: RENDERERS[n][0](frngs[n], anat) for n in names}
    for n, k in (contrast or {}).items():
        if n in params and "amplitude" in params[n]:
            params[n]["amplitude"] *= float(k)

    ctr = params["Cardiomegaly"]["ctr"] if "Cardiomegaly" in params else None
    dome_raise = params["Atelectasis"]["dome_raise"] if "Atelectasis" in params else (0.0, 0.0)
    frame = Frame.make(size, acq.shift, acq.rotation, acq.scale)
    geom = build_geometry(anat, acq, frame, ctr=ctr, dome_raise=dome_raise)
    vessels = vessel_tree(np.random.default_rng(anat.vessel_seed), geom)
    layers = anatomy_layers(anat, acq, geom, vessels)
    ctx = Context(anat, geom, layers, vessels)
    masks = {n: RENDERERS[n][1](params[n], frngs[n], ctx) for n in names}
    image = compose(layers, acq, frame)
    return PhantomImage(
        image=image,
        masks=masks,
        boxes={n: _box(m) for n, m in masks.items()},
        body=geom.body > 0.5,
        lungs=geom.lung > 0.5,
        heart=geom.heart > 0.5,
        ctr=float(geom.ctr),
        anatomy=anat,
        acquisition=acq,
    )


# ---------------------------------------------------------------------------------------
# Labels and patients
# ---------------------------------------------------------------------------------------


def _calibrate(p: np.ndarray) -> np.ndarray:
    """Per-finding draw probabilities q such that, drawing each finding independently with q
    and giving an image that drew none a single finding chosen in proportion to q, finding f
    appears in a share p[f] of the diseased images. Exact when sum(p) >= 1; otherwise every
    diseased image gets exactly one finding (shares p / sum(p))."""
    total = float(p.sum())
    if total <= 1.0:
        return np.zeros_like(p)

    def excess(lam: float) -> float:  # marginal share of f is lam * p_f * (1 + P0 / (lam * total))
        return lam + float(np.prod(1.0 - lam * p)) / total - 1.0

    lo, hi = 0.0, 1.0 / max(float(p.max()), 1e-12)
    hi = min(hi, 1.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return np.clip(hi * p, 0.0, 1.0)


def plan_labels(cfg: PhantomConfig) -> list[tuple[str, ...]]:
    """The findings of each image, in image order (empty tuple = No Finding).

    ``round(healthy_fraction * n_images)`` images are healthy; every other image carries at
    least one finding, finding f in about ``prevalence[f]`` of them.

    Raises:
        ValueError: a finding with nonzero prevalence that the renderer cannot draw, or
            diseased images requested with all prevalences zero.
    """
    prev = {k: v for k, v in cfg.prevalence.items() if v > 0}
    bad = sorted(set(prev) - set(PHANTOM_FINDINGS))
    if bad:
        raise ValueError(
            f"data.phantom.prevalence names {bad}, which the phantom renderer cannot draw; "
            f"set them to 0 or remove them (it draws {list(PHANTOM_FINDINGS)})"
        )
    n = cfg.n_images
    n_healthy = int(round(cfg.healthy_fraction * n))
    if n_healthy < n and not prev:
        raise ValueError("data.phantom.prevalence is all zero but healthy_fraction < 1; give some finding a prevalence")
    rng = np.random.default_rng([cfg.seed, 1])
    healthy = np.zeros(n, bool)
    healthy[rng.permutation(n)[:n_healthy]] = True
    names = sorted(prev)
    p = np.array([prev[k] for k in names])
    if p.sum() < 1.0:
        log.warning("phantom prevalences sum to %.2f < 1: every diseased image gets exactly one finding, "
                    "so each finding's share is its prevalence / %.2f", p.sum(), p.sum())
    q = _calibrate(p)
    out: list[tuple[str, ...]] = []
    for i in range(n):
        if healthy[i]:
            out.append(())
            continue
        drawn = rng.uniform(size=len(names)) < q
        if not drawn.any():
            w = q if q.sum() > 0 else p
            drawn[rng.choice(len(names), p=w / w.sum())] = True
        out.append(tuple(n_ for n_, d in zip(names, drawn) if d))
    return out


@dataclass(frozen=True)
class _Patient:
    pid: int
    sex: str
    age: int
    images: int


def _patients(cfg: PhantomConfig) -> list[_Patient]:
    n = cfg.n_images
    n_pat = cfg.n_patients if cfg.n_patients is not None else max(1, round(n / 3))
    if n_pat > n:
        raise ValueError(
            f"data.phantom.n_patients ({n_pat}) exceeds n_images ({n}); every patient needs at least one image"
        )
    rng = np.random.default_rng([cfg.seed, 2])
    # Follow-ups: one image each, the rest spread with a skew (a few patients have many).
    weights = rng.gamma(0.7, size=n_pat)
    extra = rng.multinomial(n - n_pat, weights / weights.sum())
    return [
        _Patient(pid=cfg.patient_id_offset + i + 1, sex="F" if rng.uniform() < 0.45 else "M", age=int(rng.integers(18, 86)), images=1 + int(e))
        for i, e in enumerate(extra)
    ]


# ---------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------


def _manifest(cfg: PhantomConfig) -> dict:
    return {
        "generator": "augment.data.phantom",
        "version": GENERATOR_VERSION,
        # a zero patient offset is left out: folders made before the key existed still match
        "config": cfg.model_dump(mode="json", exclude={"patient_id_offset"} if cfg.patient_id_offset == 0 else None),
        "findings": list(PHANTOM_FINDINGS),
        "box_units": "pixels of the stored image",
        "mask_files": "masks/<image stem>__<Finding>.png",
    }


def _existing(root: Path, cfg: PhantomConfig) -> Path | None:
    """``root`` when it already holds this config's phantom; None when it is absent or empty."""
    if not root.exists():
        return None
    if not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; pick another data.root for the phantom")
    man = root / MANIFEST
    if man.is_file():
        try:
            found = json.loads(man.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{man} is unreadable ({exc}); delete {root} to regenerate the phantom") from None
        want = _manifest(cfg)
        if found.get("config") == want["config"] and found.get("version") == want["version"]:
            return root
        raise ValueError(
            f"{root} holds a phantom made from another config or generator version; "
            f"delete it or pick another data.root"
        )
    if any(root.iterdir()):
        raise ValueError(
            f"{root} exists, is not empty and has no {MANIFEST}; it is not a phantom folder, pick another path"
        )
    return None


def generate_phantom(cfg: PhantomConfig, root: str | os.PathLike, progress: bool = True) -> Path:
    """Write the phantom data set for ``cfg`` at ``root`` in the NIH layout.

    Deterministic (same config, same bytes), atomic (built in a hidden sibling folder and
    renamed into place; an interrupted run leaves no ``root``) and idempotent (a ``root``
    whose ``phantom.json`` matches ``cfg`` is returned as is).

    Args:
        cfg: the phantom config (size, count, patients, seed, label mix).
        root: the folder to create.
        progress: show a tqdm progress bar.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: ``root`` holds something else, or the config asks for findings the
            renderer cannot draw.
    """
    root = Path(root)
    if _existing(root, cfg) is not None:
        log.info("phantom at %s already matches its config; not regenerating", root)
        return root
    labels = plan_labels(cfg)
    patients = _patients(cfg)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        records: list[Record] = []
        boxes: dict[str, list[BBox]] = {}
        spacing = round(MM_PER_UNIT / cfg.image_size, 6)
        i = 0
        with tqdm(total=cfg.n_images, desc="phantom", unit="img", disable=not progress) as bar:
            for pat in patients:
                anat = sample_anatomy(np.random.default_rng([cfg.seed, 3, pat.pid]), sex=pat.sex)
                age = pat.age
                for fu in range(pat.images):
                    rng = np.random.default_rng([cfg.seed, 4, i])
                    view = "AP" if rng.uniform() < 0.25 else "PA"
                    age += int(rng.uniform() < 0.3)
                    ph = render_phantom(rng, cfg.image_size, labels[i], anatomy=anat, contrast=cfg.lesion_contrast)
                    name = f"{pat.pid:08d}_{fu:03d}.png"
                    (tmp / "images" / name).write_bytes(encode_png(ph.image))
                    for finding, mask in ph.masks.items():
                        stem = name[:-4]
                        (tmp / "masks" / f"{stem}__{finding}.png").write_bytes(encode_png(mask.astype(np.float32)))
                        boxes.setdefault(name, []).append(BBox(finding, *ph.boxes[finding]))
                    records.append(Record(
                        image_index=name,
                        labels=tuple(sorted(labels[i])) or (NO_FINDING,),
                        patient_id=pat.pid,
                        follow_up=fu,
                        age=min(age, 99),
                        sex=pat.sex,
                        view=view,
                        width=cfg.image_size,
                        height=cfg.image_size,
                        spacing_x=spacing,
                        spacing_y=spacing,
                    ))
                    i += 1
                    bar.update(1)
        write_data_entry(tmp / "Data_Entry_2017.csv", records)
        write_bbox_list(tmp / "BBox_List_2017.csv", boxes)
        (tmp / MANIFEST).write_text(json.dumps(_manifest(cfg), indent=2, sort_keys=True) + "\n")
        if root.exists():  # an empty folder (checked above) is replaced
            root.rmdir()
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished the same folder first: keep theirs if it matches.
            if _existing(root, cfg) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("phantom: %d images of %dx%d, %d patients in %.1f s -> %s",
             cfg.n_images, cfg.image_size, cfg.image_size, len(patients), time.perf_counter() - t0, root)
    return root


def load_phantom_mask(root: str | os.PathLike, image_index: str, finding: str) -> np.ndarray:
    """The ground-truth mask of ``finding`` in one phantom image, bool (H, W).

    An image that does not carry the finding gets an all-False mask of its size.

    Raises:
        ValueError: ``finding`` is not one the phantom draws.
        FileNotFoundError: no such image under ``root/images``.
    """
    if finding not in PHANTOM_FINDINGS:
        raise ValueError(f"unknown phantom finding {finding!r}; expected one of {list(PHANTOM_FINDINGS)}")
    root = Path(root)
    image = root / "images" / image_index
    if not image.is_file():
        raise FileNotFoundError(f"{image}: no such phantom image; check the image index (e.g. 00000001_000.png)")
    mask = root / "masks" / f"{Path(image_index).stem}__{finding}.png"
    if mask.is_file():
        return read_image(mask) > 0.5
    with Image.open(image) as im:
        w, h = im.size
    return np.zeros((h, w), dtype=bool)
