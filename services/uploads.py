"""Reading uploads safely: size limits, image checks, base64, PNG answers.

Images arrive as a raw request body (``Content-Type: image/png``) or as base64 strings
inside JSON. Before anything is decoded, the size is checked (413: a raw upload against
``serve.max_upload_bytes``, a JSON body against ``serve.max_json_bytes``); the header is read
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
from services.errors import ApiError, send_error

__all__ = ["Upload", "BodyLimitMiddleware", "json_limit", "is_json", "read_body", "decode_upload", "decode_b64", "png_b64", "RAW_IMAGE_TYPES"]

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


def json_limit(cfg: ServeConfig) -> int:
    """The JSON body limit: ``serve.max_json_bytes``, else room for two base64 images of ``max_upload_bytes``."""
    if cfg.max_json_bytes is not None:
        return cfg.max_json_bytes
    return 2 * (4 * cfg.max_upload_bytes // 3 + 4) + 64 * 1024


def is_json(content_type: str) -> bool:
    main = content_type.split(";")[0].strip().lower()
    return main.endswith("/json") or main.endswith("+json")


class BodyLimitMiddleware:
    """ASGI middleware: refuse request bodies over their limit with a JSON 413 before they are read.

    JSON bodies (``Content-Type: application/json``) have ``serve.max_json_bytes``; every
    other body is an image upload with ``serve.max_upload_bytes``; the 413 quotes the one
    that applied. ``Content-Length`` is checked first; a body without one (chunked) is read
    here up to its limit and replayed, so the limit holds without it.

    Args:
        app: the ASGI app.
        cfg: a callable giving the replica's :class:`~augment.config.ServeConfig` (read per
            request, so a replica can set it after the app was built).
    """

    def __init__(self, app, cfg: Callable[[], ServeConfig]) -> None:
        self.app = app
        self._cfg = cfg

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        cfg = self._cfg()
        if is_json(headers.get(b"content-type", b"").decode("latin-1")):
            limit, key, what = json_limit(cfg), "serve.max_json_bytes", "JSON body"
            fix = "send smaller images, or a large one as the raw PNG body of /v1/generate"
        else:
            limit, key, what = cfg.max_upload_bytes, "serve.max_upload_bytes", "upload"
            fix = "send a smaller PNG (e.g. 8-bit, or downscaled)"
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                n = 0
            if n > limit:
                return await send_error(send, ApiError(413, "too_large", f"the {what} is {n} bytes; the limit is {limit} bytes ({key}): {fix}",
                                                       limit=limit))
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > limit:
                return await send_error(send, ApiError(413, "too_large", f"the {what} exceeds the limit of {limit} bytes ({key}): {fix}",
                                                       limit=limit))
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def read_body(request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes (413 beyond), refused early by ``Content-Length``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"the upload is {int(declared)} bytes; the limit is {limit} bytes (serve.max_upload_bytes)",
                       limit=limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the upload exceeds the limit of {limit} bytes (serve.max_upload_bytes)", limit=limit)
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
        raise ApiError(413, "too_large", f"{name} is {len(data)} bytes; the limit is {cfg.max_upload_bytes} bytes (serve.max_upload_bytes)",
                       limit=cfg.max_upload_bytes)
    if not data:
        raise ApiError(415, "not_an_image", f"{name} is empty; send a PNG radiograph")
    kind = _kind(data)
    if kind is None:
        raise ApiError(415, "not_an_image", f"{name} is not an image (no PNG signature); send an 8- or 16-bit grayscale PNG")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            mode = img.mode
    except Image.DecompressionBombError:
        raise ApiError(422, "wrong_dimensions", f"{name} declares more pixels than any accepted image; each side must be "
                       f"between {cfg.min_image_side} and {cfg.max_image_side} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ApiError(400, "corrupt_image", f"{name} starts like a {kind} file but its header cannot be read; "
                       "send an intact 8- or 16-bit grayscale PNG") from None
    _check_dimensions(name, h, w, cfg)
    if kind == "PNG":
        try:  # chunk CRCs and the end of the file: a damaged PNG fails here even when PIL could decode it
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
        except Exception:  # PIL raises several types (SyntaxError, OSError, struct.error)
            raise ApiError(400, "corrupt_image", f"{name} is a corrupt or truncated PNG (a chunk checksum or the end of "
                           "the file is wrong); send the file again, unmodified") from None
    try:
        pixels = decode_image(data, name=name)
    except ImageReadError:
        raise ApiError(400, "corrupt_image", f"{name} is a {kind} file whose pixels cannot be decoded (corrupt, truncated, or "
                       "not grayscale); send an intact 8- or 16-bit grayscale PNG") from None
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
        raise ApiError(413, "too_large", f"{name} decodes to more than the limit of {cfg.max_upload_bytes} bytes per image "
                       "(serve.max_upload_bytes); send a smaller PNG", limit=cfg.max_upload_bytes)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_base64", f"{name} is not valid base64; encode the PNG file's bytes with base64") from None
    return decode_upload(data, name, cfg)


def png_b64(arr: np.ndarray, bits: int = 8) -> str:
    """(H, W) in [0, 1] (or bool) -> base64 of a grayscale PNG."""
    return base64.b64encode(encode_png(np.asarray(arr, dtype=np.float32), bits=bits)).decode()
