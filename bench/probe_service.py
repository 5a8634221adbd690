"""The hardening probes of issue 20 against a live service: status, error code and time of each.

Starts a real ``serve run`` of ``services.app:app`` on 127.0.0.1 with the tests' tiny
random-weight models (``tests/services/serve_process.py``), a profile that accepts images up
to 4096x4096 and 32 MiB (so that the big upload is decoded, not refused by its header), and
``configs/serve.yaml``'s queue settings. A second, short-lived service with
``serve.request_timeout_s: 0.2`` gives the timeout probe. Probes, in order:

bad token; no token + malformed JSON; no token + a declared 60 MB JSON body (only the
headers and 64 KiB are sent); oversized raw upload; oversized JSON body; 4096x4096 upload
(with ``/healthz`` polled every 20 ms during it); corrupt PNG; unknown finding; ``/v1/models``
(server paths, PID, uptime); overload (64 requests at once against ``serve.max_inflight`` 16);
request timeout.

    python bench/probe_service.py            # writes bench/results/probes.json, prints a table
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "services"))
sys.path.insert(0, str(REPO / "bench"))

from serve_process import free_port, serve_env, start_serve, stop_serve, wait_ready, write_serve_config  # noqa: E402
from tiny_models import build_tiny_setup  # noqa: E402

from augment.data.io import encode_png  # noqa: E402

BIG = 4096


def _row(probe: str, sent: str, r: httpx.Response | None, seconds: float, **extra) -> dict:
    out = {"probe": probe, "sent": sent, "seconds": round(seconds, 3)}
    if r is not None:
        out["status"] = r.status_code
        out["content_type"] = r.headers.get("content-type", "")
        if out["content_type"].startswith("application/json") and r.status_code >= 400:
            err = r.json().get("error", {})
            out["code"] = err.get("code")
            out["message"] = err.get("message")
        if "retry-after" in r.headers:
            out["retry_after"] = r.headers["retry-after"]
    out.update(extra)
    print(json.dumps({k: v for k, v in out.items() if k != "message"}), flush=True)
    return out


def _timed(c: httpx.Client, method: str, path: str, **kw) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = c.request(method, path, **kw)
    return r, time.perf_counter() - t0


def _declared(base: str, path: str, headers: dict[str, str], declared: int, prefix: bytes) -> tuple[int, float, dict]:
    """Send the headers of a ``declared``-byte body and only ``prefix`` of it; the status, time and JSON answer."""
    host, port = base.removeprefix("http://").split(":")
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{lines}Content-Length: {declared}\r\n\r\n".encode()
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head + prefix)
        data = b""
        while True:
            chunk = sock.recv(65536)
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if not chunk:
                break
            if head_end >= 0:
                m = re.search(rb"content-length: (\d+)", data[:head_end].lower())
                if m and len(data) >= head_end + 4 + int(m.group(1)):
                    break
    took = time.perf_counter() - t0
    status = re.match(rb"HTTP/1\.1 (\d+)", data)
    try:
        body = json.loads(data[data.find(b"\r\n\r\n") + 4:])
    except ValueError:
        body = {}
    return (int(status.group(1)) if status else 0), took, body


def _declared_row(probe: str, sent: str, status: int, took: float, body: dict) -> dict:
    err = body.get("error", {}) if isinstance(body, dict) else {}
    return _row(probe, sent, None, took, status=status, content_type="application/json" if err else "", code=err.get("code"),
                message=err.get("message"))


def _big_png(seed: int = 0) -> bytes:
    """A 4096x4096 8-bit radiograph-like PNG: a smooth gradient plus noise (about 13 MB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:BIG, 0:BIG].astype(np.float32) / BIG
    img = 0.2 + 0.5 * xx * (1 - yy) + rng.normal(0, 0.03, (BIG, BIG)).astype(np.float32)
    return encode_png(np.clip(img, 0, 1).astype(np.float32))


def _upload_with_health(base: str, headers: dict, body: bytes) -> tuple[httpx.Response, float, list[float]]:
    lat: list[float] = []
    done = threading.Event()

    def poll():
        with httpx.Client(base_url=base, timeout=30) as h:
            while not done.is_set():
                t0 = time.perf_counter()
                h.get("/healthz")
                lat.append(time.perf_counter() - t0)
                time.sleep(0.02)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    time.sleep(0.3)
    with httpx.Client(base_url=base, timeout=600) as c:
        r, took = _timed(c, "POST", "/v1/generate?finding=Nodule&seed=1", content=body, headers=headers)
    time.sleep(0.2)
    done.set()
    t.join()
    return r, took, lat


async def _burst(base: str, headers: dict, body: bytes, n: int) -> list[tuple[int, float, str, str | None]]:
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=httpx.Limits(max_connections=n + 2)) as c:
        async def one(i):
            t0 = time.perf_counter()
            r = await c.post(f"/v1/generate?finding=Nodule&seed={i}", content=body, headers=headers)
            code = r.json()["error"]["code"] if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json") else None
            return r.status_code, time.perf_counter() - t0, r.headers.get("content-type", ""), code

        return await asyncio.gather(*[one(i) for i in range(n)])


def _start(root: Path, extra: dict, token: str) -> tuple[object, str, Path]:
    profile = build_tiny_setup(root, extra=extra)
    port = free_port()
    config = write_serve_config(root / "serve.yaml", profile, port)
    log = root / "serve.log"
    proc = start_serve(config, serve_env(token), log)
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base, {"Authorization": f"Bearer {token}"}, log)
    return proc, base, profile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "probes.json"))
    args = ap.parse_args(argv)
    from bench_overload import _machine

    machine_before = _machine()
    rows: list[dict] = []
    token = secrets.token_hex(32)
    auth = {"Authorization": f"Bearer {token}"}
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        root = Path(tmp) / "main"
        root.mkdir()
        extra = {"max_image_side": BIG, "max_upload_bytes": 32 * 2**20, "max_aspect_ratio": 2.0}
        proc, base, _ = _start(root, extra, token)
        try:
            from augment.data.nih import load_index

            index = load_index(root / "references")
            healthy = index.path(index.healthy()[0]).read_bytes()
            png = {**auth, "Content-Type": "image/png"}
            with httpx.Client(base_url=base, timeout=600) as c:
                _timed(c, "POST", "/v1/generate?finding=Nodule&seed=0", content=healthy, headers=png)  # warm-up
                r, t = _timed(c, "POST", "/v1/generate?finding=Nodule", content=healthy,
                              headers={"Authorization": "Bearer " + "0" * 64, "Content-Type": "image/png"})
                rows.append(_row("bad token", "POST /v1/generate, a wrong 64-character token", r, t))
                r, t = _timed(c, "POST", "/v1/inpaint", content=b"{not json", headers={"Content-Type": "application/json"})
                rows.append(_row("no token + malformed JSON", "POST /v1/inpaint, body '{not json'", r, t,
                                 schema_revealed="detail" in r.text))
                rows.append(_declared_row("no token + 60 MB JSON body", "POST /v1/inpaint, Content-Length 60 MiB; headers and 64 KiB sent",
                                          *_declared(base, "/v1/inpaint", {"Content-Type": "application/json"}, 60 * 2**20,
                                                     b'{"image": "' + b"A" * (64 * 1024))))
                rows.append(_declared_row("oversized upload", "POST /v1/generate, Content-Length 33 MiB (limit 32 MiB); 64 KiB sent",
                                          *_declared(base, "/v1/generate?finding=Nodule", png, 33 * 2**20,
                                                     b"\x89PNG\r\n\x1a\n" + b"\0" * (64 * 1024))))
                rows.append(_declared_row("oversized JSON body", "POST /v1/inpaint, Content-Length 90 MiB (limit: 2 base64 images "
                                          "of 32 MiB); 64 KiB sent",
                                          *_declared(base, "/v1/inpaint", {**auth, "Content-Type": "application/json"}, 90 * 2**20,
                                                     b'{"image": "' + b"A" * (64 * 1024))))
            big = _big_png()
            r, t, lat = _upload_with_health(base, png, big)
            rows.append(_row("4096x4096 upload", f"POST /v1/generate, {BIG}x{BIG} 8-bit PNG of {len(big) / 2**20:.1f} MiB", r, t))
            rows.append(_row("/healthz during the 4096x4096 upload", f"GET /healthz every 20 ms, {len(lat)} polls", None, max(lat),
                             status=200, healthz_p50_s=round(float(np.median(lat)), 4), healthz_max_s=round(max(lat), 4)))
            with httpx.Client(base_url=base, timeout=600) as c:
                r, t = _timed(c, "POST", "/v1/generate?finding=Nodule", content=healthy[: len(healthy) // 2], headers=png)
                rows.append(_row("corrupt PNG", "POST /v1/generate, the first half of a PNG", r, t))
                r, t = _timed(c, "POST", "/v1/generate?finding=Broken_Arm", content=healthy, headers=png)
                rows.append(_row("unknown finding", "POST /v1/generate?finding=Broken_Arm", r, t))
                r, t = _timed(c, "GET", "/v1/models", headers=auth)
                text = r.text
                rows.append(_row("/v1/models", "GET /v1/models", r, t, server_paths=str(root) in text or "/tmp/" in text,
                                 pid='"pid"' in text, uptime="uptime" in text))
            res = asyncio.run(_burst(base, png, healthy, 64))
            ok = [x for x in res if x[0] == 200]
            shed = [x for x in res if x[0] == 503]
            rows.append(_row("overload", "64 POST /v1/generate at once (serve.max_inflight 16)", None,
                             max((x[1] for x in shed), default=float("nan")), status=503,
                             statuses={str(s): sum(1 for x in res if x[0] == s) for s in sorted({x[0] for x in res})},
                             all_503_json_overloaded=all(x[2].startswith("application/json") and x[3] == "overloaded" for x in shed),
                             slowest_503_s=round(max((x[1] for x in shed), default=float("nan")), 3),
                             slowest_200_s=round(max((x[1] for x in ok), default=float("nan")), 3)))
        finally:
            stop_serve(proc)
        root2 = Path(tmp) / "timeout"
        root2.mkdir()
        proc, base, _ = _start(root2, {"request_timeout_s": 0.2, "max_image_side": 1024, "max_upload_bytes": 4 * 2**20}, token)
        try:
            yy, xx = np.mgrid[0:1024, 0:1024].astype(np.float32) / 1024
            slow = encode_png((0.2 + 0.6 * xx * yy).astype(np.float32))
            with httpx.Client(base_url=base, timeout=600) as c:
                r, t = _timed(c, "POST", "/v1/generate?finding=Nodule,Mass,Effusion&n=4&steps=100&seed=0", content=slow,
                              headers={**auth, "Content-Type": "image/png"})
                rows.append(_row("request timeout", "POST /v1/generate, 3 findings, n=4, steps=100 on 1024x1024; "
                                 "serve.request_timeout_s 0.2", r, t))
                r2, t2 = _timed(c, "GET", "/v1/findings", headers=auth)
                rows.append(_row("/v1/findings after the timeout", "GET /v1/findings (answered by the Generator)", r2, t2))
        finally:
            stop_serve(proc)
    result = {
        "benchmark": "hardening probes of issue 20 (serve run on 127.0.0.1, tiny random-weight models, one replica each)",
        "command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv if argv is not None else sys.argv[1:])]),
        "machine": {**{k: v for k, v in machine_before.items() if k != "load_1min"}, "load_1min_before": machine_before["load_1min"],
                    "load_1min_after": round(os.getloadavg()[0], 2)},
        "probes": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("\n| probe | status | code | time (s) |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['probe']} | {row.get('status')} | {row.get('code') or ''} | {row['seconds']:.3f} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
