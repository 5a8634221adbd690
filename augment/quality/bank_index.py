"""The near-copy bank as an index folder: built once per run, memory-mapped by every gate actor.

A gate actor used to read every training image at start-up to build its
:class:`~augment.quality.near_copy.TrainingBank` (86k reads and gigabytes per actor on
NIH). :func:`build_bank_index` does that work once, streaming the images in batches so its
memory stays bounded, and writes a folder::

    index.json       version, count, thumbnail side, feature space, encoder settings
    ids.json         (N,) image ids, in row order
    thumbnails.npy   (N, size*size) float16 in [0, 1]: the pixel check's downsampled images
    embeddings.npy   (N, D) float32, L2-normalised, in the encoder's space
    real_nn.npy      (N,) float32: each row's nearest other-patient cosine distance
    encoder.pt       the encoder's {state_dict, config, version} (read with weights_only=True)

The embeddings come from a small autoencoder trained on the real training thumbnails only
(:func:`augment.evaluation.encoder.fit_encoder`): a feature space the gate never selects
in, unlike the gate's classifier. The index carries that encoder, and
:func:`load_bank_index` returns a bank whose ``embed_fn`` embeds synthetic images the same
way (area-downsample to the thumbnail side, float16, encoder), so query and bank always
share one space, and the real-to-real floor (``real_nn.npy``) is measured in it too.

:func:`load_bank_index` opens the arrays with ``np.load(mmap_mode="r")``: an actor maps the
pages instead of holding a copy, and actors on one machine share them through the page
cache. The folder is written under a temporary name and renamed into place when complete,
so a failed build leaves no index.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from augment.data.io import ImageReadError, fsync_dir, read_image
from augment.quality.near_copy import TrainingBank, patient_codes, real_nearest_neighbours

log = logging.getLogger(__name__)

__all__ = ["INDEX_VERSION", "BankIndexSpec", "BankIndexInfo", "write_bank_index", "build_bank_index", "load_bank_index",
           "index_info"]

INDEX_VERSION = 1
FEATURE_SPACE = "autoencoder"
_FILES = ("index.json", "ids.json", "thumbnails.npy")


@dataclass(frozen=True)
class BankIndexSpec:
    """How an index is built.

    Attributes:
        size: thumbnail side for the pixel check (``quality.bank_image_size``).
        read_size: side the training images are read at before the area downsample
            (``data.image_size``, as the gate's images are).
        encoder_size: side the encoder sees (a multiple of 16; capped at ``size``).
        dim: feature dimension.
        epochs: encoder training epochs.
        fit_images: at most this many training thumbnails (a seeded sample) train the encoder.
        seed: seeds the sample and the encoder.
        batch_size: images read and embedded per batch (bounds the build's memory).
    """

    size: int = 64
    read_size: int = 256
    encoder_size: int = 32
    dim: int = 32
    epochs: int = 15
    fit_images: int = 1000
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.size < 8 or self.read_size < self.size:
            raise ValueError(f"need 8 <= size <= read_size, got size={self.size}, read_size={self.read_size}; "
                             "set quality.bank_image_size at most data.image_size")
        if self.encoder_size < 16 or self.encoder_size % 16:
            raise ValueError(f"encoder_size must be a multiple of 16 (>= 16), got {self.encoder_size}")
        if min(self.dim, self.epochs, self.fit_images, self.batch_size) < 1:
            raise ValueError(f"dim, epochs, fit_images and batch_size must be >= 1, got {self}")

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> "BankIndexSpec":
        """The spec of a :class:`augment.config.RunConfig` (``quality.bank_image_size``,
        ``data.image_size``, ``seed``)."""
        kw: dict[str, Any] = {"size": cfg.quality.bank_image_size, "read_size": max(cfg.data.image_size, cfg.quality.bank_image_size),
                              "seed": cfg.seed}
        kw["encoder_size"] = max(16, min(32, kw["size"]) // 16 * 16)
        kw.update(overrides)
        return cls(**kw)


@dataclass(frozen=True)
class BankIndexInfo:
    """What an index folder holds (its ``index.json``)."""

    path: str
    version: int
    count: int
    size: int
    feature_space: str | None
    dim: int | None
    skipped: int
    seconds: float
    nbytes: int
    spec: dict[str, Any]
    encoder: dict[str, Any] | None


def _thumbs(images: torch.Tensor, size: int) -> np.ndarray:
    """(B, 1, H, W) -> (B, size*size) float16, the same way queries are downsampled."""
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.clamp(0.0, 1.0).flatten(1).numpy().astype(np.float16)


class IndexEmbedder:
    """The index's feature space: (B, 1, H, W) in [0, 1] -> (B, D) float32 tensor.

    Downsamples to the thumbnail side and float16 exactly as the bank's thumbnails were made,
    then encodes with the index's encoder.
    """

    def __init__(self, model: torch.nn.Module, size: int) -> None:
        from augment.evaluation.encoder import EncoderFeatures

        self.features = EncoderFeatures(model.eval(), [], 0)
        self.size = size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        t = torch.from_numpy(_thumbs(images.detach().cpu(), self.size).astype(np.float32)).view(-1, 1, self.size, self.size)
        return torch.from_numpy(self.features(t))


def _tmp_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))


def write_bank_index(
    batches: Iterable[tuple[Sequence[str], torch.Tensor]],
    capacity: int,
    out_dir: str | os.PathLike,
    spec: BankIndexSpec = BankIndexSpec(),
    skipped: int | Sequence[str] = 0,
    source: dict[str, Any] | None = None,
) -> BankIndexInfo:
    """Write an index from batches of (ids, images (B, 1, H, W) in [0, 1]).

    Only one batch is held at a time: thumbnails go straight into a memmap in the temporary
    folder, the encoder trains on a sample of at most ``spec.fit_images`` thumbnails, and the
    embeddings are computed in batches. ``out_dir`` appears only when everything is written
    (an existing index there is replaced).

    Args:
        batches: the training images with their ids.
        capacity: at least the number of images the batches hold (rows allocated).
        out_dir: the index folder.
        spec: thumbnail side, encoder settings, seed.
        skipped: images the caller could not read (recorded): a count, or a list the
            batches fill while they are read (its length is taken once they are consumed).
        source: recorded in ``index.json`` (e.g. the training folder and its fingerprint).

    Raises:
        ValueError: more images than ``capacity``, duplicate ids, or images of the wrong shape.
    """
    t0 = time.perf_counter()
    final = Path(out_dir)
    tmp = _tmp_dir(final)
    try:
        p = spec.size * spec.size
        thumbs = np.lib.format.open_memmap(tmp / "thumbnails.full.npy", mode="w+", dtype=np.float16, shape=(max(capacity, 0), p))
        ids: list[str] = []
        for bid, imgs in batches:
            if not isinstance(imgs, torch.Tensor) or imgs.ndim != 4 or imgs.shape[1] != 1 or len(bid) != imgs.shape[0]:
                raise ValueError(f"each batch must be (ids, images (B, 1, H, W)) with one id per image, got "
                                 f"{len(bid)} ids and {tuple(getattr(imgs, 'shape', ()))}")
            if len(ids) + len(bid) > capacity:
                raise ValueError(f"the batches hold more than capacity={capacity} images; pass their number")
            thumbs[len(ids) : len(ids) + len(bid)] = _thumbs(imgs, spec.size)
            ids.extend(str(i) for i in bid)
        n = len(ids)
        if len(set(ids)) != n:
            raise ValueError("the training images' ids repeat; each row of the bank needs its own Image Index")
        thumbs.flush()
        if n == capacity:
            del thumbs
            os.replace(tmp / "thumbnails.full.npy", tmp / "thumbnails.npy")
        else:  # some images were skipped: keep the first n rows
            out = np.lib.format.open_memmap(tmp / "thumbnails.npy", mode="w+", dtype=np.float16, shape=(n, p))
            for a in range(0, n, 4096):
                out[a : min(n, a + 4096)] = thumbs[a : min(n, a + 4096)]
            out.flush()
            del out, thumbs
            (tmp / "thumbnails.full.npy").unlink()
        (tmp / "ids.json").write_text(json.dumps(ids))
        thumbs = np.load(tmp / "thumbnails.npy", mmap_mode="r") if n else np.zeros((0, p), np.float16)
        encoder_meta = None
        if n >= 4:
            encoder_meta = _fit_and_embed(thumbs, ids, tmp, spec)
        else:
            log.warning("near-copy bank: %d training image(s), too few to train its encoder; pixel check only", n)
        meta = {
            "version": INDEX_VERSION,
            "count": n,
            "size": spec.size,
            "thumbnail_dtype": "float16",
            "feature_space": FEATURE_SPACE if encoder_meta else None,
            "dim": spec.dim if encoder_meta else None,
            "skipped": skipped if isinstance(skipped, int) else len(skipped),
            "seconds": round(time.perf_counter() - t0, 2),
            "spec": asdict(spec),
            "encoder": encoder_meta,
            "source": source or {},
        }
        (tmp / "index.json").write_text(json.dumps(meta, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index_info(final)


def _fit_and_embed(thumbs: np.ndarray, ids: list[str], tmp: Path, spec: BankIndexSpec) -> dict[str, Any]:
    from augment.evaluation.encoder import fit_encoder

    n, s = len(thumbs), spec.size
    enc_size = min(spec.encoder_size, max(16, s // 16 * 16))
    rng = np.random.default_rng(spec.seed)
    rows = np.sort(rng.choice(n, size=min(n, spec.fit_images), replace=False))
    fit = torch.from_numpy(np.asarray(thumbs[rows], dtype=np.float32)).view(-1, 1, s, s)
    t0 = time.perf_counter()
    feats = fit_encoder(fit, size=enc_size, dim=spec.dim, epochs=spec.epochs, seed=spec.seed)
    fit_s = time.perf_counter() - t0
    del fit
    model = feats.model
    torch.save({"state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                "config": {"size": model.size, "dim": model.dim, "width": model.enc[0].out_channels},
                "version": INDEX_VERSION}, tmp / "encoder.pt")
    embed = IndexEmbedder(model, s)
    emb = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n, spec.dim))
    for a in range(0, n, spec.batch_size):
        x = torch.from_numpy(np.asarray(thumbs[a : a + spec.batch_size], dtype=np.float32)).view(-1, 1, s, s)
        emb[a : a + len(x)] = F.normalize(embed(x), dim=1).numpy()
    emb.flush()
    nn = real_nearest_neighbours(emb, patient_codes(ids)[0])
    if nn is not None:
        np.save(tmp / "real_nn.npy", nn)
    del emb
    return {"size": enc_size, "dim": spec.dim, "epochs": spec.epochs, "n_fit": len(rows),
            "final_loss": float(feats.losses[-1]), "fit_seconds": round(fit_s, 2)}


def _read_batches(index: Any, size: int, batch_size: int, skipped: list[str]) -> Iterator[tuple[list[str], torch.Tensor]]:
    ids: list[str] = []
    arrs: list[np.ndarray] = []
    for r in index.records:
        try:
            arrs.append(read_image(index.path(r), size))
            ids.append(r.image_index)
        except ImageReadError as exc:  # the register step counts it per item
            log.warning("near-copy bank skips an unreadable training image: %s", exc)
            skipped.append(r.image_index)
        if len(arrs) == batch_size:
            yield ids, torch.from_numpy(np.stack(arrs))[:, None]
            ids, arrs = [], []
    if arrs:
        yield ids, torch.from_numpy(np.stack(arrs))[:, None]


def build_bank_index(index: Any, out_dir: str | os.PathLike, spec: BankIndexSpec = BankIndexSpec(),
                     progress: bool = True) -> BankIndexInfo:
    """Read every training image of an :class:`augment.data.NIHIndex` once and write the index.

    Images are read at ``spec.read_size`` in batches of ``spec.batch_size`` (unreadable ones
    are skipped with a warning and counted), so memory stays bounded whatever the split's size.
    """
    skipped: list[str] = []
    batches: Iterable[tuple[list[str], torch.Tensor]] = _read_batches(index, spec.read_size, spec.batch_size, skipped)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(index), desc="near-copy bank", unit="img", leave=False)

        def counted(it: Iterable[tuple[list[str], torch.Tensor]]) -> Iterator[tuple[list[str], torch.Tensor]]:
            for b in it:
                bar.update(len(b[0]))
                yield b
            bar.update(len(skipped))
            bar.close()

        batches = counted(batches)
    source = {"root": str(getattr(index, "root", "")), "n_records": len(index)}
    return write_bank_index(batches, len(index), out_dir, spec, skipped=skipped, source=source)


def index_info(path: str | os.PathLike) -> BankIndexInfo:
    """Read an index folder's ``index.json``.

    Raises:
        ValueError: not an index folder, or of another version.
    """
    p = Path(path)
    missing = [f for f in _FILES if not (p / f).is_file()]
    if missing:
        raise ValueError(f"{p} is not a near-copy bank index (missing {', '.join(missing)}); build one with "
                         "augment.quality.bank_index.build_bank_index (python -m jobs.augment builds it when missing)")
    meta = json.loads((p / "index.json").read_text())
    if meta.get("version") != INDEX_VERSION:
        raise ValueError(f"{p} is a near-copy bank index of version {meta.get('version')}, this code reads version "
                         f"{INDEX_VERSION}; delete the folder and build it again")
    nbytes = sum(f.stat().st_size for f in p.iterdir() if f.is_file())
    return BankIndexInfo(path=str(p), version=meta["version"], count=meta["count"], size=meta["size"],
                         feature_space=meta.get("feature_space"), dim=meta.get("dim"), skipped=meta.get("skipped", 0),
                         seconds=meta.get("seconds", 0.0), nbytes=nbytes, spec=meta.get("spec", {}), encoder=meta.get("encoder"))


def _load_array(path: Path, rows: int) -> np.ndarray:
    return np.load(path, mmap_mode="r") if rows else np.load(path)


def load_bank_index(path: str | os.PathLike) -> TrainingBank:
    """Open an index folder as a :class:`TrainingBank` whose arrays are read-only memmaps.

    The bank carries the index's encoder as its ``embed_fn``; nothing here reads a training image.

    Raises:
        ValueError: not an index, another version, or files that disagree with ``index.json``.
        augment.checkpoint.CheckpointError: the encoder file is unreadable or unsafe.
    """
    from augment.checkpoint import read_checkpoint

    info = index_info(path)
    p = Path(path)
    ids = tuple(json.loads((p / "ids.json").read_text()))
    pixels = _load_array(p / "thumbnails.npy", info.count)
    if len(ids) != info.count or pixels.shape != (info.count, info.size * info.size):
        raise ValueError(f"{p}: ids.json ({len(ids)}) and thumbnails.npy {pixels.shape} disagree with index.json "
                         f"(count {info.count}, side {info.size}); delete the folder and build it again")
    emb = real_nn = embed_fn = None
    if info.feature_space is not None:
        emb = _load_array(p / "embeddings.npy", info.count)
        if emb.shape != (info.count, info.dim):
            raise ValueError(f"{p}: embeddings.npy is {emb.shape}, index.json says ({info.count}, {info.dim}); rebuild it")
        if (p / "real_nn.npy").is_file():
            real_nn = np.load(p / "real_nn.npy")
        from augment.evaluation.encoder import Autoencoder

        ck = read_checkpoint(p / "encoder.pt", "near-copy bank encoder", hint="build the index again")
        c = ck["config"]
        model = Autoencoder(int(c["size"]), int(c["dim"]), int(c.get("width", 16)))
        model.load_state_dict(ck["state_dict"])
        embed_fn = IndexEmbedder(model, info.size)
    return TrainingBank(ids=ids, pixels=pixels, embeddings=emb, size=info.size, real_embedding_nn=real_nn,
                        embed_fn=embed_fn, feature_space=info.feature_space or "none")
