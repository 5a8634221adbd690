"""The service's guards in process, no Ray: token rules and rotation, the token check before the
body, body limits per content type, admission and the deadline, and what error messages may show.

The middlewares are driven as raw ASGI apps, so a test can prove that the body was never read
(``receive`` fails the test if called).
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from augment.config import ServeConfig
from services.admission import Admission, AdmissionMiddleware, await_with_deadline, spread_retry_after
from services.auth import MIN_TOKEN_CHARS, TOKEN_ENV, TokenMiddleware, TokenSource, token_problem
from services.deployments import public_location, public_message
from services.errors import ApiError
from services.uploads import BodyLimitMiddleware, decode_upload, json_limit

GOOD = "a" * MIN_TOKEN_CHARS
OTHER = "b" * 40


# --------------------------------------------------------------------------- ASGI driving


async def _never_receive():
    raise AssertionError("the body was read")


async def _inner_ok(scope, receive, send):
    """An app that reads the whole body, then answers 200 with its length."""
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    out = json.dumps({"read": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})


def _call(app, path="/v1/generate", method="POST", headers=(), receive=_never_receive):
    sent: list[dict] = []

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "path": path, "method": method, "headers": [(k.encode(), v.encode()) for k, v in headers]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


def _chunks(*parts: bytes):
    items = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive():
        return items.pop(0)

    return receive


# --------------------------------------------------------------------------- token rules


@pytest.mark.parametrize("token, problem", [
    ("replace-me", "placeholder"), ("REPLACE-ME", "placeholder"), ("short", "at least 32"),
    ("x" * (MIN_TOKEN_CHARS - 1), "at least 32"), (GOOD, None),
])
def test_token_problem(token, problem):
    got = token_problem(token)
    assert (got is None) if problem is None else (problem in got)


@pytest.mark.parametrize("value", ["replace-me", "s3cret"])
def test_weak_env_token_refused_at_start(monkeypatch, value):
    monkeypatch.setenv(TOKEN_ENV, value)
    with pytest.raises(ValueError, match=f"{TOKEN_ENV} is refused.*secrets.token_hex"):
        TokenSource(None)


def test_weak_file_token_refused_at_start(monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    f = tmp_path / "token"
    f.write_text("replace-me\n")
    with pytest.raises(ValueError, match="placeholder"):
        TokenSource(str(f))


def test_no_token_refused_unless_not_required(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ValueError, match="no API token"):
        TokenSource(None)
    src = TokenSource(None, require=False)
    src.check(None)  # open access, by choice


def test_file_wins_over_env_and_rotates_without_restart(monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, GOOD)
    f = tmp_path / "token"
    f.write_text(OTHER + "\n")
    src = TokenSource(str(f))
    src.check(f"Bearer {OTHER}")
    with pytest.raises(ApiError) as e:
        src.check(f"Bearer {GOOD}")
    assert e.value.status == 401 and e.value.code == "wrong_token"
    rotated = "c" * 48
    f.write_text(rotated)
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a new mtime even on coarse clocks
    src.check(f"Bearer {rotated}")
    with pytest.raises(ApiError):
        src.check(f"Bearer {OTHER}")


def test_rotation_to_a_weak_token_fails_closed(monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    f = tmp_path / "token"
    f.write_text(GOOD)
    src = TokenSource(str(f))
    f.write_text("replace-me")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    for header in (f"Bearer {GOOD}", "Bearer replace-me"):
        with pytest.raises(ApiError) as e:
            src.check(header)
        assert e.value.status == 503 and e.value.code == "token_misconfigured"
        assert "replace-me" not in e.value.message


# --------------------------------------------------------------------------- token before the body


@pytest.fixture()
def guarded(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, GOOD)
    src = TokenSource(None)
    return TokenMiddleware(_inner_ok, source=lambda: src)


@pytest.mark.parametrize("headers, code", [
    ((), "missing_token"),
    ((("authorization", "Basic dXNlcjpwdw=="),), "missing_token"),
    ((("authorization", "Bearer " + "x" * 40),), "wrong_token"),
])
def test_token_checked_before_any_body_read(guarded, headers, code):
    # a 60 MB malformed JSON body is declared; receive() fails the test if the app reads it
    hdrs = (*headers, ("content-type", "application/json"), ("content-length", str(60 * 2**20)))
    status, h, body = _call(guarded, "/v1/inpaint", headers=hdrs)
    assert status == 401 and body["error"]["code"] == code
    assert h["www-authenticate"].startswith("Bearer") and h["content-type"] == "application/json"


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/findings", "/v1/models", "/v1/register", "/v1/unknown", "/metrics"])
def test_every_path_but_the_open_ones_needs_the_token(guarded, path):
    assert _call(guarded, path, method="GET")[0] == 401


@pytest.mark.parametrize("path", ["/healthz", "/", "/openapi.json", "/docs"])
def test_open_paths_pass_without_token(guarded, path):
    status, _, body = _call(guarded, path, method="GET", receive=_chunks(b""))
    assert status == 200 and body == {"read": 0}


def test_right_token_reaches_the_app(guarded):
    status, _, body = _call(guarded, headers=(("authorization", f"Bearer {GOOD}"),), receive=_chunks(b"abc", b"de"))
    assert status == 200 and body == {"read": 5}


def test_not_ready_replica_answers_503():
    mw = TokenMiddleware(_inner_ok, source=lambda: None)
    status, h, body = _call(mw)
    assert status == 503 and body["error"]["code"] == "not_ready" and h["retry-after"].isdigit()


# --------------------------------------------------------------------------- body limits


CFG = ServeConfig(max_upload_bytes=256 * 1024)


def test_json_limit_default_and_explicit():
    assert json_limit(CFG) == 2 * (4 * 256 * 1024 // 3 + 4) + 64 * 1024
    assert json_limit(ServeConfig(max_json_bytes=5000)) == 5000
    assert json_limit(ServeConfig()) < 4 * ServeConfig().max_upload_bytes, "JSON has a smaller limit than before"


@pytest.mark.parametrize("ctype, size, limit, key", [
    ("image/png", 300 * 1024, 256 * 1024, "serve.max_upload_bytes"),
    ("application/octet-stream", 300 * 1024, 256 * 1024, "serve.max_upload_bytes"),
    ("application/json", 2 * 2**20, json_limit(CFG), "serve.max_json_bytes"),
    ("application/json; charset=utf-8", 2 * 2**20, json_limit(CFG), "serve.max_json_bytes"),
])
def test_413_quotes_the_limit_that_applied(ctype, size, limit, key):
    mw = BodyLimitMiddleware(_inner_ok, cfg=lambda: CFG)
    status, _, body = _call(mw, headers=(("content-type", ctype), ("content-length", str(size))))
    err = body["error"]
    assert status == 413 and err["code"] == "too_large" and err["limit"] == limit
    assert f"{size} bytes" in err["message"] and f"{limit} bytes ({key})" in err["message"]


def test_chunked_body_over_the_limit_is_refused_and_one_under_is_replayed():
    mw = BodyLimitMiddleware(_inner_ok, cfg=lambda: CFG)
    half = b"\0" * (150 * 1024)
    status, _, body = _call(mw, headers=(("content-type", "image/png"),), receive=_chunks(half, half))
    assert status == 413 and "exceeds the limit of 262144 bytes (serve.max_upload_bytes)" in body["error"]["message"]
    status, _, body = _call(mw, headers=(("content-type", "image/png"),), receive=_chunks(half, b"xyz"))
    assert status == 200 and body == {"read": len(half) + 3}


# --------------------------------------------------------------------------- admission and deadline


def test_retry_after_is_spread_over_r_to_2r():
    waits = {spread_retry_after(2) for _ in range(200)}
    assert waits == {2, 3, 4}
    assert spread_retry_after(0) == 0


def test_admission_counts_and_refuses_beyond_the_limit():
    adm = Admission(2)
    assert adm.try_enter() and adm.try_enter() and not adm.try_enter()
    adm.leave()
    assert adm.try_enter() and adm.inflight == 2 and adm.rejected == 1
    with pytest.raises(ValueError, match="at least 1"):
        Admission(0)


def test_admission_middleware_answers_503_at_once_and_frees_places():
    adm = Admission(2)
    gate = asyncio.Event()

    async def slow(scope, receive, send):
        await gate.wait()
        await _inner_ok(scope, receive, send)

    mw = AdmissionMiddleware(slow, admission=lambda: (adm, 3))

    async def go():
        sent: dict[int, list] = {}

        def req(i, path="/v1/generate", method="POST"):
            sent[i] = []

            async def send(m):
                sent[i].append(m)

            scope = {"type": "http", "path": path, "method": method, "headers": []}
            return asyncio.create_task(mw(scope, _chunks(b""), send))

        a, b = req(0), req(1)
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        await req(2)  # refused at once, while 0 and 1 wait
        refused_in = time.perf_counter() - t0
        other = req(3, "/v1/findings", "GET")  # not counted
        assert adm.inflight == 2
        gate.set()
        await asyncio.gather(a, b, other)
        return sent, refused_in

    sent, refused_in = asyncio.run(go())
    status = {i: next(m["status"] for m in msgs if m["type"] == "http.response.start") for i, msgs in sent.items()}
    assert status == {0: 200, 1: 200, 2: 503, 3: 200}
    start = next(m for m in sent[2] if m["type"] == "http.response.start")
    headers = dict(start["headers"])
    assert 3 <= int(headers[b"retry-after"]) <= 6 and headers[b"content-type"] == b"application/json"
    err = json.loads(sent[2][1]["body"])["error"]
    assert err["code"] == "overloaded" and "serve.max_inflight" in err["message"]
    assert refused_in < 0.1 and adm.inflight == 0


class _Never:
    """A DeploymentResponse stand-in that never completes."""

    def __init__(self) -> None:
        self.cancelled = False

    def __await__(self):
        return asyncio.sleep(3600).__await__()

    def cancel(self) -> None:
        self.cancelled = True


class _Soon:
    def __await__(self):
        yield from asyncio.sleep(0.01).__await__()
        return {"ok": 1}


def test_deadline_answers_504_and_cancels_the_call():
    resp = _Never()
    t0 = time.monotonic()
    with pytest.raises(ApiError) as e:
        asyncio.run(await_with_deadline(resp, t0 + 0.2, 0.2, 2))
    took = time.monotonic() - t0
    assert e.value.status == 504 and e.value.code == "timeout" and e.value.headers == {"Retry-After": "2"}
    assert "serve.request_timeout_s" in e.value.message and 0.15 < took < 1.0 and resp.cancelled


def test_deadline_already_passed_and_a_timely_answer():
    resp = _Never()
    with pytest.raises(ApiError):
        asyncio.run(await_with_deadline(resp, time.monotonic() - 1, 1.0, 2))
    assert resp.cancelled
    assert asyncio.run(await_with_deadline(_Soon(), time.monotonic() + 5, 5.0, 2)) == {"ok": 1}


# --------------------------------------------------------------------------- what messages may show


def test_public_message_hides_reprs_and_paths():
    msg = public_message("cannot identify image file <_io.BytesIO object at 0x7f3a2b10> read from /srv/cxr/models/g.pt")
    assert "0x" not in msg and "/srv" not in msg and "cannot identify image file" in msg


@pytest.mark.parametrize("uri, shown", [("/srv/cxr/models/classifier.pt", "classifier.pt"), ("file:///a/b/gen.pt", "gen.pt"),
                                        ("runs:/0123/model", "runs:/0123/model"), ("models:/cxr-gen/3", "models:/cxr-gen/3")])
def test_public_location(uri, shown):
    assert public_location(uri) == shown


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + b"\xff" * 64, b"\x89PNG\r\n\x1a\n", b"GIF89a" + b"\0" * 10])
def test_corrupt_image_messages_carry_no_exception_text(data):
    with pytest.raises(ApiError) as e:
        decode_upload(data, "image", CFG)
    assert e.value.status in (400, 415)
    assert "0x" not in e.value.message and "BytesIO" not in e.value.message and "Error" not in e.value.message
