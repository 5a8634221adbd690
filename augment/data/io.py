"""Image I/O at the edge of the library.

Inside the library an image is a float32 tensor in [0, 1] of shape (B, 1, H, W) (a single
image as a NumPy array is (H, W), same dtype and range). This module is the only place
that converts from and to files: 8- and 16-bit grayscale PNG, RGB/RGBA radiographs turned
to gray, resizing, and atomic writes (temp file, fsync, rename, fsync of the folder, so a
crash never leaves a half-written PNG).
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ImageReadError",
    "RawImage",
    "decode_raw",
    "read_raw",
    "encode_png_pixels",
    "decode_image",
    "read_image",
    "read_batch",
    "resize",
    "encode_png",
    "write_png",
    "atomic_write_bytes",
    "fsync_dir",
    "atomic_torch_save",
    "to_batch",
    "validate_batch",
]


class ImageReadError(ValueError):
    """A file is missing, is not an image, or is corrupt; the message names the file."""


def _to_gray_float(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
    elif mode == "I":
        raw = np.asarray(img, dtype=np.int64)
        top = 65535.0 if raw.max() > 255 else 255.0
        arr = np.clip(raw, 0, top).astype(np.float32) / top
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    elif mode in ("L", "P", "1", "LA"):
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    elif mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        # Radiographs saved as colour: ITU-R 601 luma (PIL's "L" conversion), alpha dropped.
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    else:
        raise ImageReadError(f"{name}: unsupported PNG mode {mode!r}; save it as 8- or 16-bit grayscale")
    if not np.isfinite(arr).all():
        raise ImageReadError(f"{name}: image holds NaN or infinite values")
    return np.ascontiguousarray(arr, dtype=np.float32)


def decode_image(data: bytes, name: str = "<bytes>", size: int | None = None) -> np.ndarray:
    """Decode PNG (or any PIL-readable) bytes to a float32 (H, W) array in [0, 1].

    Args:
        data: the encoded file.
        name: used in error messages.
        size: when given, resize to (size, size).

    Raises:
        ImageReadError: empty, not an image, or truncated/corrupt.
    """
    if not data:
        raise ImageReadError(f"{name}: empty file; expected a PNG radiograph")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = _to_gray_float(img, name)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{name}: not a readable image ({exc}); expected an 8- or 16-bit PNG") from None
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise ImageReadError(f"{name}: image of shape {arr.shape} is too small; need at least 8x8 pixels")
    return resize(arr, size) if size else arr


def read_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Read one radiograph from disk as float32 (H, W) in [0, 1], optionally resized."""
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: file not found; check the images/ folder and the CSV's 'Image Index'")
    return decode_image(p.read_bytes(), name=str(p), size=size)


@dataclass(frozen=True)
class RawImage:
    """A grayscale radiograph as stored: its own pixel values, size and bit depth.

    Attributes:
        pixels: (H, W) uint8 (``bits`` 8) or uint16 (``bits`` 16), the file's values unscaled.
        bits: 8 or 16.
    """

    pixels: np.ndarray
    bits: int

    @property
    def max_value(self) -> int:
        return (1 << self.bits) - 1

    def to_float(self) -> np.ndarray:
        """float32 (H, W) in [0, 1]: the values :func:`read_image` gives for the same file."""
        return self.pixels.astype(np.float32) / float(self.max_value)


def _png_bit_depth(data: bytes) -> int | None:
    """The bit depth in a PNG's IHDR chunk (byte 24), None for other formats."""
    if len(data) > 25 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return data[24]
    return None


def decode_raw(data: bytes, name: str = "<bytes>") -> RawImage:
    """Decode image bytes to their stored grayscale values, without rescaling or resizing.

    8-bit (and 1/2/4-bit, palette) grayscale gives uint8, 16-bit grayscale uint16; colour
    images are turned to 8-bit gray as :func:`read_image` does (ITU-R 601 luma). Unlike
    :func:`decode_image` nothing is normalised: ``RawImage.to_float()`` equals
    ``decode_image`` for the same bytes.

    Raises:
        ImageReadError: empty, not an image, corrupt, too small, or a mode with no 8/16-bit
            grayscale equivalent (float, 32-bit integer values above 65535); the message names
            the file.
    """
    if not data:
        raise ImageReadError(f"{name}: empty file; expected a PNG radiograph")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                pixels, bits = np.asarray(img, dtype=np.uint16), 16
            elif mode == "I":
                raw = np.asarray(img, dtype=np.int64)
                if raw.size and (raw.min() < 0 or raw.max() > 65535):
                    raise ImageReadError(
                        f"{name}: 32-bit integer pixels in [{raw.min()}, {raw.max()}] do not fit 16 bits; "
                        "save it as 8- or 16-bit grayscale PNG"
                    )
                depth = _png_bit_depth(data)
                if depth == 16 or (depth is None and raw.size and raw.max() > 255):
                    pixels, bits = raw.astype(np.uint16), 16
                else:
                    pixels, bits = raw.astype(np.uint8), 8
            elif mode in ("L", "P", "1", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
                pixels, bits = np.asarray(img.convert("L"), dtype=np.uint8), 8
            else:
                raise ImageReadError(f"{name}: unsupported image mode {mode!r}; save it as 8- or 16-bit grayscale PNG")
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{name}: not a readable image ({exc}); expected an 8- or 16-bit PNG") from None
    if pixels.ndim != 2 or min(pixels.shape) < 8:
        raise ImageReadError(f"{name}: image of shape {pixels.shape} is too small; need at least 8x8 pixels")
    return RawImage(np.ascontiguousarray(pixels), bits)


def read_raw(path: str | os.PathLike) -> RawImage:
    """Read one radiograph from disk at its own size and bit depth (see :func:`decode_raw`)."""
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: file not found; check the images/ folder and the CSV's 'Image Index'")
    return decode_raw(p.read_bytes(), name=str(p))


def encode_png_pixels(pixels: np.ndarray) -> bytes:
    """Encode stored values as they are: (H, W) uint8 as an 8-bit, uint16 as a 16-bit grayscale PNG.

    Raises:
        ValueError: not a single (H, W) image, or another dtype (floats go through :func:`encode_png`).
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"encode_png_pixels expects a single (H, W) image, got shape {arr.shape}")
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png_pixels expects uint8 or uint16 pixels, got {arr.dtype}; use encode_png for floats")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize a (H, W) float image to (size, size) with antialiased bilinear interpolation."""
    if arr.shape == (size, size):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].clamp_(0.0, 1.0).numpy()


def read_batch(paths: Iterable[str | os.PathLike], size: int) -> torch.Tensor:
    """Read images into one (B, 1, size, size) float32 tensor."""
    arrs = [read_image(p, size) for p in paths]
    if not arrs:
        raise ValueError("read_batch got no paths")
    return torch.from_numpy(np.stack(arrs))[:, None]


def encode_png(arr: np.ndarray | torch.Tensor, bits: int = 8) -> bytes:
    """Encode a (H, W) (or (1, H, W)) image in [0, 1] as grayscale PNG bytes of 8 or 16 bits."""
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().float().cpu().numpy()
    arr = np.asarray(arr, dtype=np.float32).squeeze()
    if arr.ndim != 2:
        raise ValueError(f"encode_png expects a single (H, W) image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("encode_png got NaN or infinite pixels")
    arr = np.clip(arr, 0.0, 1.0)
    if bits == 8:
        img = Image.fromarray(np.round(arr * 255.0).astype(np.uint8))
    elif bits == 16:
        img = Image.fromarray(np.round(arr * 65535.0).astype(np.uint16))
    else:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    The temp file (``.<name>.<random>.tmp``) is fsynced before the rename and the folder
    after it, so after a crash ``path`` holds either the old bytes or all of the new ones,
    also after a power loss.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(p.parent)
    return p


def atomic_torch_save(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write_bytes`: a crash never leaves half a checkpoint."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def write_png(path: str | os.PathLike, arr: np.ndarray | torch.Tensor, bits: int = 8) -> Path:
    """Atomically write an image in [0, 1] as a grayscale PNG (8-bit like NIH, or 16-bit)."""
    return atomic_write_bytes(path, encode_png(arr, bits=bits))


def to_batch(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Bring (H, W), (1, H, W), (B, H, W)... into the library's (B, 1, H, W) float32 convention."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None] if t.shape[0] != 1 else t[None]
    elif t.ndim != 4:
        raise ValueError(f"expected an image of 2 to 4 dimensions, got shape {tuple(t.shape)}")
    return t.float()


def validate_batch(x: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Check the library convention: float tensor (B, 1, H, W), finite, in [0, 1].

    Raises:
        TypeError: not a tensor.
        ValueError: wrong shape, NaN/inf, or values outside [0, 1]; the message says which.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 1, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; divide 8-bit data by 255")
    return x
