"""The overload contract of an Ingress replica: admit a bounded number of image requests, answer
the rest at once with a JSON 503, and give every admitted request a deadline.

- :class:`AdmissionMiddleware` counts the requests in progress on the image endpoints
  (``/v1/generate``, ``/v1/inpaint``, ``/v1/register``). Beyond ``serve.max_inflight`` it
  answers 503 ``overloaded`` with ``Retry-After`` before the body is read, so a full service
  rejects in milliseconds instead of queueing. ``Retry-After`` is drawn from
  [``serve.retry_after_s``, 2 x ``serve.retry_after_s``], so that clients refused in one burst
  come back spread out rather than in the next burst. It runs after the token check: requests
  without a token never take a place.
- :func:`await_with_deadline` awaits the ``Generator``'s answer until
  ``serve.request_timeout_s`` after the request arrived; then it cancels the call (a queued
  generation is dropped, a running one is interrupted when Serve can) and answers 504
  ``timeout`` with ``Retry-After``.

The deployments are sized so that these JSON answers are the ones clients see (see
``configs/serve.yaml``): the Ingress's ``max_ongoing_requests`` is far above
``serve.max_inflight``, so the Serve proxy does not queue in front of it, and the
Generator's ``max_queued_requests`` (per caller) is at least ``serve.max_inflight``, so its
own backpressure (also mapped to a JSON 503) only fires when the settings disagree.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Awaitable, Callable

from services.errors import ApiError, send_error

__all__ = ["ADMITTED_PATHS", "Admission", "AdmissionMiddleware", "await_with_deadline", "arrival", "overloaded", "spread_retry_after"]

ADMITTED_PATHS = frozenset({"/v1/generate", "/v1/inpaint", "/v1/register"})
_T0 = "cxr.arrival"


class Admission:
    """A counter of the requests in progress, refusing beyond ``limit``.

    Args:
        limit: requests admitted at once (``serve.max_inflight``).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the admission limit must be at least 1, got {limit}")
        self.limit = limit
        self.inflight = 0
        self.rejected = 0

    def try_enter(self) -> bool:
        """Take a place; False (and nothing taken) when all ``limit`` places are taken."""
        if self.inflight >= self.limit:
            self.rejected += 1
            return False
        self.inflight += 1
        return True

    def leave(self) -> None:
        self.inflight = max(0, self.inflight - 1)


def spread_retry_after(retry_after_s: int) -> int:
    """A Retry-After drawn from [r, 2r]: clients refused together do not all come back together."""
    return retry_after_s + random.randint(0, retry_after_s) if retry_after_s > 0 else 0


def overloaded(limit: int, retry_after_s: int) -> ApiError:
    """503 ``overloaded`` with a spread ``Retry-After`` (see :func:`spread_retry_after`)."""
    wait = spread_retry_after(retry_after_s)
    return ApiError(503, "overloaded", f"the service is working on its maximum of {limit} image requests (serve.max_inflight); "
                    f"retry after {wait} s (Retry-After)", headers={"Retry-After": str(wait)})


class AdmissionMiddleware:
    """ASGI middleware: :class:`Admission` on the image endpoints; stamps every request's arrival time.

    Args:
        app: the ASGI app.
        admission: a callable giving the replica's :class:`Admission` and Retry-After seconds.
        paths: the endpoints counted.
    """

    def __init__(self, app, admission: Callable[[], tuple[Admission, int]], paths: frozenset[str] = ADMITTED_PATHS) -> None:
        self.app = app
        self._admission = admission
        self.paths = paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[_T0] = time.monotonic()
        if scope.get("path") not in self.paths or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        adm, retry_after_s = self._admission()
        if not adm.try_enter():
            return await send_error(send, overloaded(adm.limit, retry_after_s))
        try:
            await self.app(scope, receive, send)
        finally:
            adm.leave()


def arrival(scope: dict[str, Any]) -> float:
    """When the request reached the Ingress (``time.monotonic()``), as stamped by the middleware."""
    return float(scope.get(_T0, time.monotonic()))


async def await_with_deadline(response: Awaitable[Any], deadline: float, timeout_s: float, retry_after_s: int) -> Any:
    """Await ``response`` (a ``DeploymentResponse``) until ``deadline`` (``time.monotonic()``).

    Raises:
        ApiError: 504 ``timeout`` when the deadline passes; ``response.cancel()`` is called first.
    """

    async def wait() -> Any:
        return await response

    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(wait(), timeout=remaining)
    except asyncio.TimeoutError:
        cancel = getattr(response, "cancel", None)
        if cancel is not None:
            cancel()
        raise ApiError(504, "timeout", f"the request was not answered within {timeout_s:g} s (serve.request_timeout_s) and was "
                       "cancelled; retry later, or ask for fewer samples or steps",
                       headers={"Retry-After": str(retry_after_s)}) from None
