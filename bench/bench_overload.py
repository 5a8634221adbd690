"""Overload: 4x the service's capacity on POST /v1/generate for 30 s, /healthz polled meanwhile.

A real ``serve run`` of ``services.app:app`` on 127.0.0.1 with the tests' tiny random-weight
models (see ``tests/services/serve_process.py``), one Ingress and one Generator replica with
``configs/serve.yaml``'s queue settings. Capacity is ``serve.max_inflight`` (image requests one
Ingress replica admits at once, default 16); ``--factor`` times that many closed-loop clients
send 64x64 PNGs. Two client behaviours, one run each on the same service:

- ``retry-after``: a rejected client waits the ``Retry-After`` it got (clients that follow
  the contract);
- ``hammer``: a rejected client waits only ``--hammer-pause`` seconds (0.05 by default).

The contract checked: admitted requests finish (200, within ``serve.request_timeout_s``),
the others get a JSON 503 ``overloaded`` with ``Retry-After`` within a second, and
``/healthz`` (polled every 50 ms from a process of its own) keeps its p99 under 100 ms.
The clients run at nice 15, like Ray's proxy and replicas (``tests/services/overload.py``),
so that the load generator does not take the CPU from the service it measures. Latencies
are reported twice: as the clients saw them, and as the Serve proxy logged them (from its
access log: the service's side, without the load generator's own delays on a busy machine).

    python bench/bench_overload.py                  # 4x16 clients, 30 s per behaviour
    python bench/bench_overload.py --seconds 10     # shorter

Writes ``bench/results/overload.json``. Not part of the test run (its small version is
``tests/services/test_service.py::test_overload_at_4x_capacity...``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "services"))
sys.path.insert(0, str(REPO / "bench"))

from overload import percentile, run_overload_niced  # noqa: E402
from serve_process import free_port, serve_env, start_serve, stop_serve, wait_ready, write_serve_config  # noqa: E402
from tiny_models import build_tiny_setup  # noqa: E402


def _machine() -> dict:
    from bench_classifier import _machine as machine

    return {**machine(), "load_1min": round(os.getloadavg()[0], 2)}


_ACCESS = re.compile(r"^INFO (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ proxy \S+ \S+ -- (GET|POST) (\S+) (\d{3}) ([\d.]+)ms$")


def proxy_latencies(port: int, start: float, end: float) -> dict:
    """The Serve proxy's own access-log latencies (ms) in [start, end] (epoch s), per kind of answer.

    The proxy times a request from when it has read its headers to the end of its answer:
    the service's side, without the load generator's own delays. Its log is found in the
    Ray session whose proxy listens on ``port``.
    """
    logs = [p for p in glob.glob("/tmp/ray/session_*/logs/serve/proxy_*.log") if f"(HTTP port: {port})" in Path(p).read_text(errors="replace")[:20000]]
    if not logs:
        return {}
    kinds: dict[str, list[float]] = {"503": [], "200": [], "healthz": []}
    for line in Path(logs[0]).read_text(errors="replace").splitlines():
        m = _ACCESS.match(line)
        if not m:
            continue
        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
        if not start - 1 <= t <= end + 1:
            continue
        ms = float(m.group(5))
        if m.group(3) == "/healthz":
            kinds["healthz"].append(ms)
        elif m.group(3).startswith("/v1/generate") and m.group(4) in ("200", "503"):
            kinds[m.group(4)].append(ms)
    return {k: {"n": len(v), "p50_ms": round(percentile(v, 0.5), 1), "p99_ms": round(percentile(v, 0.99), 1),
                "max_ms": round(max(v, default=float("nan")), 1)} for k, v in kinds.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capacity", type=int, default=16, help="serve.max_inflight")
    ap.add_argument("--factor", type=int, default=4, help="clients = factor x capacity")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of each behaviour's run")
    ap.add_argument("--hammer-pause", type=float, default=0.05, help="pause after a 503 in the hammer run (s)")
    ap.add_argument("--behaviours", nargs="+", default=["retry-after", "hammer"], choices=["retry-after", "hammer"])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "overload.json"))
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        root = Path(tmp)
        profile = build_tiny_setup(root, extra={"max_inflight": args.capacity})
        token = secrets.token_hex(32)
        port = free_port()
        config = write_serve_config(root / "serve.yaml", profile, port)
        log = root / "serve.log"
        proc = start_serve(config, serve_env(token), log)
        try:
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}
            wait_ready(proc, base, headers, log)
            from augment.data.nih import load_index

            index = load_index(root / "references")
            body = index.path(index.healthy()[0]).read_bytes()
            run_overload_niced(base, token, body, clients=4, seconds=3.0)  # warm-up
            for behaviour in args.behaviours:
                before = _machine()
                t0 = time.time()
                res = run_overload_niced(base, token, body, clients=args.factor * args.capacity, seconds=args.seconds,
                                         pause_s=None if behaviour == "retry-after" else args.hammer_pause)
                s = res.summary()
                s.update(behaviour=behaviour, wall_s=round(time.time() - t0, 1), load_1min_before=before["load_1min"],
                         load_1min_after=round(os.getloadavg()[0], 2), proxy=proxy_latencies(port, t0, time.time()))
                runs.append(s)
                print(json.dumps(s), flush=True)
        finally:
            stop_serve(proc)
    result = {
        "benchmark": "overload of POST /v1/generate over HTTP (serve run on 127.0.0.1), one Ingress and one Generator replica",
        "command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv if argv is not None else sys.argv[1:])]),
        "machine": {k: v for k, v in _machine().items() if k != "load_1min"},
        "models": "tests' tiny models: EfficientNet-B0 at 32 px, [8, 16] UNet at 32 px crops, 2 steps, Demons 8 iterations at 64 px",
        "image": "64x64 8-bit PNG",
        "capacity": {"max_inflight": args.capacity, "generator_max_ongoing_requests": 8, "ingress_max_ongoing_requests": 64},
        "clients": args.factor * args.capacity,
        "healthz_poll_s": 0.05,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
