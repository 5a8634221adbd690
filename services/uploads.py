"""Reading uploads safely: size limits, image checks, base64, PNG answers.

Images arrive as a raw request body (``Content-Type: image/png``) or as base64 strings
inside JSON. Before anything is decoded, the size is checked (413); the header is read
before the pixels, so a decompression bomb is refused by its declared size (422) and
never allocated. A body that is not an image answers 415; one that starts like an image
but does not decode answers 400.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from augment.config import ServeConfig
from augment.data.io import ImageReadError, decode_image, encode_png
from services.errors import ApiError

__all__ = ["Upload", "BodyLimitMiddleware", "read_body", "decode_upload", "decode_b64", "png_b64", "RAW_IMAGE_TYPES"]

RAW_IMAGE_TYPES = ("image/png", "application/octet-stream")
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
    b"GIF8": "GIF",
}


@dataclass(frozen=True)
class Upload:
    """A decoded image: ``pixels`` (H, W) float32 in [0, 1] and the file's bit depth (8 or 16)."""

    pixels: np.ndarray
    bits: int

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


class BodyLimitMiddleware:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413 before they are read.

    Checks ``Content-Length`` first, then counts the bytes of chunked bodies as they arrive.

    Args:
        app: the ASGI app.
        limit: bytes, or a callable giving them (read per request, so a replica can set it
            after the app was built).
    """

    def __init__(self, app, limit: int | Callable[[], int]) -> None:
        self.app = app
        self._limit = limit

    @property
    def limit(self) -> int:
        return int(self._limit() if callable(self._limit) else self._limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    n = 0
                if n > self.limit:
                    return await self._reject(send, n)
        seen = 0
        limit = self.limit

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(seen)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge as exc:
            await self._reject(send, exc.size)

    async def _reject(self, send, size: int) -> None:
        import json

        body = json.dumps(
            {"error": {"status": 413, "code": "too_large", "message": f"request body of {size} bytes exceeds the limit of {self.limit} bytes"}}
        ).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


async def read_body(request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes (413 beyond), refused early by ``Content-Length``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"the upload is {int(declared)} bytes; the limit is {limit} bytes (serve.max_upload_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the upload exceeds the limit of {limit} bytes (serve.max_upload_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _kind(data: bytes) -> str | None:
    return next((k for magic, k in _MAGIC.items() if data.startswith(magic)), None)


def decode_upload(data: bytes, name: str, cfg: ServeConfig) -> Upload:
    """Check and decode one image file.

    Raises:
        ApiError: 413 too large, 415 not an image, 400 corrupt, 422 wrong dimensions.
    """
    if len(data) > cfg.max_upload_bytes:
        raise ApiError(413, "too_large", f"{name} is {len(data)} bytes; the limit is {cfg.max_upload_bytes} bytes (serve.max_upload_bytes)")
    if not data:
        raise ApiError(415, "not_an_image", f"{name} is empty; send a PNG radiograph")
    kind = _kind(data)
    if kind is None:
        raise ApiError(415, "not_an_image", f"{name} is not an image (no PNG signature); send an 8- or 16-bit grayscale PNG")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            mode = img.mode
    except Image.DecompressionBombError as exc:
        raise ApiError(422, "wrong_dimensions", f"{name}: {exc}; each side must be at most {cfg.max_image_side} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ApiError(400, "corrupt_image", f"{name} looks like a {kind} file but its header cannot be read ({exc})") from None
    _check_dimensions(name, h, w, cfg)
    if kind == "PNG":
        try:  # chunk CRCs and the end of the file: a damaged PNG fails here even when PIL could decode it
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
        except Exception as exc:  # PIL raises several types (SyntaxError, OSError, struct.error)
            raise ApiError(400, "corrupt_image", f"{name}: corrupt or truncated PNG ({exc})") from None
    try:
        pixels = decode_image(data, name=name)
    except ImageReadError as exc:
        raise ApiError(400, "corrupt_image", f"{name}: corrupt or truncated {kind} ({exc})") from None
    bits = 16 if mode.startswith("I") else 8
    return Upload(pixels, bits)


def _check_dimensions(name: str, h: int, w: int, cfg: ServeConfig) -> None:
    lo, hi = cfg.min_image_side, cfg.max_image_side
    if min(h, w) < lo or max(h, w) > hi:
        raise ApiError(422, "wrong_dimensions", f"{name} is {w}x{h} pixels; each side must be between {lo} and {hi} pixels",
                       width=w, height=h)
    if max(h, w) / min(h, w) > cfg.max_aspect_ratio:
        raise ApiError(422, "wrong_dimensions", f"{name} is {w}x{h} pixels; the long side may be at most "
                       f"{cfg.max_aspect_ratio:g} times the short side (a chest radiograph is about square)", width=w, height=h)


def decode_b64(text: str, name: str, cfg: ServeConfig) -> Upload:
    """Decode a base64 (optionally ``data:image/png;base64,``-prefixed) image field."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > cfg.max_upload_bytes * 4 // 3 + 8:
        raise ApiError(413, "too_large", f"{name} exceeds the limit of {cfg.max_upload_bytes} bytes (serve.max_upload_bytes)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_base64", f"{name} is not valid base64; encode the PNG file's bytes with base64") from None
    return decode_upload(data, name, cfg)


def png_b64(arr: np.ndarray, bits: int = 8) -> str:
    """(H, W) in [0, 1] (or bool) -> base64 of a grayscale PNG."""
    return base64.b64encode(encode_png(np.asarray(arr, dtype=np.float32), bits=bits)).decode()
