"""Bearer-token access to the API (every path but ``/healthz``, the page at ``/`` and the docs).

Where the token comes from:

- ``serve.token_file`` (e.g. a mounted Kubernetes Secret), when it is set and the file holds
  a token. It is re-read whenever the file changes (its mtime, size or inode), so a rotated
  Secret applies on the next request, without a restart. **The file wins over the
  environment variable** when both are set: the environment of a running process cannot
  change, the file can.
- else the environment variable ``CXR_API_TOKEN`` (in Kubernetes, from the Secret
  ``cxr-api-token``).

A token must be at least :data:`MIN_TOKEN_CHARS` characters and not a placeholder such as
``replace-me`` (the value in ``k8s/secrets.example.env``): a configured token that breaks
these rules stops the application at start with a ``ValueError`` naming the source and the
fix (``python -c "import secrets; print(secrets.token_hex(32))"``). A token file rotated to a
weak value later is refused too: every protected request answers 503 ``token_misconfigured``
(and the log says why) until the file is fixed; the old token is not kept.

With ``serve.require_token`` true (the default) and no token, the application refuses to
start. The check runs in :class:`TokenMiddleware`, before FastAPI reads or parses the body:
a request without the right ``Authorization: Bearer <token>`` header answers 401 whatever
its body (malformed or 60 MB), and the body is never read by the application.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Callable

from fastapi.security import HTTPBearer

from services.errors import ApiError, send_error

__all__ = ["TOKEN_ENV", "MIN_TOKEN_CHARS", "PLACEHOLDERS", "OPEN_PATHS", "TokenSource", "TokenMiddleware", "bearer_scheme",
           "check_authorization", "token_problem"]

log = logging.getLogger("cxr.serve")

TOKEN_ENV = "CXR_API_TOKEN"
MIN_TOKEN_CHARS = 32
PLACEHOLDERS = frozenset({"replace-me", "changeme", "change-me", "token", "secret", "password"})
"""Values refused whatever their length (compared case-insensitively)."""

OPEN_PATHS = frozenset({"/healthz", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
"""Paths answered without a token; every other path needs one (an unknown path without a token is a 401, not a 404)."""

bearer_scheme = HTTPBearer(auto_error=False, description="the service's API token (serve.token_file or env CXR_API_TOKEN)")
"""FastAPI security scheme: documents bearer auth in the OpenAPI schema (the check itself is :class:`TokenMiddleware`)."""

_FIX = 'generate one with: python -c "import secrets; print(secrets.token_hex(32))"'
_CHALLENGE = 'Bearer realm="cxr-augment"'


def token_problem(token: str) -> str | None:
    """Why ``token`` may not be used as the API token, or None when it may."""
    if token.strip().lower() in PLACEHOLDERS:
        return f"it is the placeholder {token.strip()!r}"
    if len(token) < MIN_TOKEN_CHARS:
        return f"it has {len(token)} characters; at least {MIN_TOKEN_CHARS} are required"
    return None


class TokenSource:
    """Where the expected token comes from (see the module docstring for the rules).

    Args:
        token_file: optional file holding the token (surrounding whitespace stripped).
        require: raise when no token is configured.

    Raises:
        ValueError: a configured token (the file's or ``CXR_API_TOKEN``) is too short or a
            placeholder, or ``require`` and neither source holds a token.
    """

    def __init__(self, token_file: str | None, require: bool = True) -> None:
        self.token_file = Path(token_file) if token_file else None
        self.require = require
        self._cached: tuple[tuple[int, int, int], str] | None = None
        self._warned: str | None = None
        sources = [(f"the file {self.token_file} (serve.token_file)", self._file_token()), (f"the environment variable {TOKEN_ENV}", _env_token())]
        for where, value in sources:
            problem = token_problem(value) if value else None
            if problem:
                raise ValueError(f"the API token in {where} is refused: {problem}; {_FIX}")
        if require and not self.token():
            where = f" or the file {self.token_file}" if self.token_file else ""
            raise ValueError(
                f"no API token: set the environment variable {TOKEN_ENV}{where} (serve.token_file) to a random value of at "
                f"least {MIN_TOKEN_CHARS} characters ({_FIX}), or set serve.require_token: false to run without access control"
            )

    def _file_token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            st = self.token_file.stat()
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if self._cached is None or self._cached[0] != key:
                self._cached = (key, self.token_file.read_text().strip())
        except (OSError, UnicodeDecodeError):
            return None
        return self._cached[1] or None

    def token(self) -> str | None:
        """The current token (the file's, else the environment's), or None when none is configured."""
        return self._file_token() or _env_token()

    @property
    def enabled(self) -> bool:
        return self.require or self.token() is not None

    def check(self, authorization: str | None) -> None:
        """Raise :class:`ApiError` (401, or 503 for a weak rotated token) unless ``authorization`` carries the token.

        Args:
            authorization: the request's ``Authorization`` header value, if any.
        """
        expected = self.token()
        if expected is None and not self.require:
            return
        if expected is not None and (problem := token_problem(expected)):
            if self._warned != expected:
                log.error("the API token in effect is refused (%s); every protected request answers 503 until it is replaced", problem)
                self._warned = expected
            raise ApiError(503, "token_misconfigured", "the service's API token is misconfigured; the operator must replace it")
        scheme, _, given = (authorization or "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "missing_token", "send the API token as 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": _CHALLENGE})
        if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "wrong_token", "the bearer token is not valid; check it against the service's configured token",
                           headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'})


def _env_token() -> str | None:
    return os.environ.get(TOKEN_ENV, "").strip() or None


def check_authorization(source: TokenSource | None, authorization: str | None) -> None:
    """:meth:`TokenSource.check`, or 503 ``not_ready`` while the replica has no source yet."""
    if source is None:
        raise ApiError(503, "not_ready", "the service is starting; retry after Retry-After seconds", headers={"Retry-After": "2"})
    source.check(authorization)


class TokenMiddleware:
    """ASGI middleware: the token check, before anything reads the request body.

    Args:
        app: the ASGI app.
        source: a callable giving the replica's :class:`TokenSource` (None while starting).
        open_paths: paths that need no token.
    """

    def __init__(self, app, source: Callable[[], TokenSource | None], open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self._source = source
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path in self.open_paths:
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        try:
            check_authorization(self._source(), header)
        except ApiError as err:
            return await send_error(send, err)
        return await self.app(scope, receive, send)
