"""Bearer-token access to the API (every endpoint but ``/healthz`` and the page at ``/``).

The token comes from the environment variable ``CXR_API_TOKEN`` (in Kubernetes, from the
Secret ``cxr-api-token``), else from the file ``serve.token_file`` names (e.g. a mounted
Secret; re-read when it changes, so a rotated Secret applies without a restart). With
``serve.require_token`` true (the default) and no token, the application refuses to start.
A missing or wrong ``Authorization: Bearer <token>`` header answers 401.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.errors import ApiError

__all__ = ["TOKEN_ENV", "TokenSource", "bearer_scheme", "check_bearer"]

TOKEN_ENV = "CXR_API_TOKEN"

bearer_scheme = HTTPBearer(auto_error=False, description="the service's API token (env CXR_API_TOKEN or serve.token_file)")
"""FastAPI security scheme: documents bearer auth in the OpenAPI schema."""


class TokenSource:
    """Where the expected token comes from.

    Args:
        token_file: optional file holding the token (whitespace stripped).
        require: raise when no token is configured.

    Raises:
        ValueError: ``require`` and neither ``CXR_API_TOKEN`` nor a readable, non-empty
            ``token_file``.
    """

    def __init__(self, token_file: str | None, require: bool = True) -> None:
        self.token_file = Path(token_file) if token_file else None
        self.require = require
        self._cached: tuple[float, str] | None = None
        if require and not self.token():
            where = f" or the file {self.token_file}" if self.token_file else ""
            raise ValueError(
                f"no API token: set the environment variable {TOKEN_ENV}{where} (serve.token_file), "
                "or set serve.require_token: false to run without access control"
            )

    def token(self) -> str | None:
        """The current token, or None when none is configured."""
        env = os.environ.get(TOKEN_ENV, "").strip()
        if env:
            return env
        if self.token_file is None:
            return None
        try:
            mtime = self.token_file.stat().st_mtime
            if self._cached is None or self._cached[0] != mtime:
                self._cached = (mtime, self.token_file.read_text().strip())
        except OSError:
            return None
        return self._cached[1] or None

    @property
    def enabled(self) -> bool:
        return self.require or self.token() is not None


def check_bearer(source: TokenSource, credentials: HTTPAuthorizationCredentials | None, request: Request | None = None) -> None:
    """Raise a 401 :class:`ApiError` unless the request carries the expected bearer token."""
    expected = source.token()
    if expected is None and not source.require:
        return
    challenge = {"WWW-Authenticate": 'Bearer realm="cxr-augment"'}
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "missing_token", "send the API token as 'Authorization: Bearer <token>'", headers=challenge)
    if expected is None or not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise ApiError(401, "wrong_token", "the bearer token is not valid", headers={**challenge, "WWW-Authenticate": 'Bearer realm="cxr-augment", error="invalid_token"'})
