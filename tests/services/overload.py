"""A bounded overload run against a live service (the test and ``bench/bench_overload.py``).

``clients`` closed-loop clients POST ``/v1/generate`` for ``seconds``; a client that gets a
503 waits before its next request: the ``Retry-After`` it was given (a client that follows the
contract) or a fixed ``pause_s`` (a client that hammers). Meanwhile ``/healthz`` is polled
every ``poll_s`` from a process of its own, so that its latency is not the load clients'.

:func:`run_overload_niced` runs both in a subprocess at Ray's worker niceness (15): Ray runs
the proxy and the replicas at nice 15, so a load generator on the same machine at nice 0
would take the CPU from the service it measures. Only loopback is used; the run is bounded
in time and in clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

__all__ = ["OverloadResult", "run_overload", "run_overload_niced", "percentile"]
RAY_WORKER_NICENESS = 15


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 1]); NaN for no data."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class OverloadResult:
    """What the clients saw. Latencies in seconds."""

    clients: int
    seconds: float
    statuses: dict[int, int] = field(default_factory=dict)
    admitted: list[float] = field(default_factory=list)
    rejected: list[float] = field(default_factory=list)
    rejected_not_contract: int = 0
    """503s without a JSON ``overloaded`` error and a numeric Retry-After."""
    other: list[str] = field(default_factory=list)
    """Anything else: other statuses (with their content type) or transport errors."""
    health: list[float] = field(default_factory=list)
    health_failures: int = 0

    def summary(self) -> dict:
        ms = lambda x: round(1000 * x, 1)  # noqa: E731
        return {
            "clients": self.clients,
            "seconds": self.seconds,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "admitted": {"n": len(self.admitted), "p50_ms": ms(percentile(self.admitted, 0.5)),
                         "p95_ms": ms(percentile(self.admitted, 0.95)), "max_ms": ms(max(self.admitted, default=float("nan"))),
                         "throughput_rps": round(len(self.admitted) / self.seconds, 2)},
            "rejected": {"n": len(self.rejected), "p50_ms": ms(percentile(self.rejected, 0.5)),
                         "p99_ms": ms(percentile(self.rejected, 0.99)), "max_ms": ms(max(self.rejected, default=float("nan"))),
                         "not_json_overloaded_with_retry_after": self.rejected_not_contract},
            "other": self.other[:20],
            "healthz": {"n": len(self.health), "p50_ms": ms(percentile(self.health, 0.5)),
                        "p99_ms": ms(percentile(self.health, 0.99)), "max_ms": ms(max(self.health, default=float("nan"))),
                        "failures": self.health_failures},
        }

    def to_dict(self) -> dict:
        return asdict(self)


async def run_overload(base: str, headers: dict[str, str], body: bytes, clients: int, seconds: float,
                       pause_s: float | None = None, poll_s: float = 0.05, query: str = "finding=Nodule") -> OverloadResult:
    """Drive the service; returns every latency seen.

    Args:
        pause_s: after a 503, wait this long; None: wait the Retry-After the service sent.
    """
    res = OverloadResult(clients=clients, seconds=seconds)
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    health_q: mp.Queue = mp.get_context("fork").Queue()
    poller = mp.get_context("fork").Process(target=_poll_health, args=(base, seconds, poll_s, health_q), daemon=True)
    poller.start()
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as c:
        async def client(k: int) -> None:
            i = 0
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post(f"/v1/generate?{query}&seed={k * 100_000 + i}", content=body, headers=headers)
                except httpx.HTTPError as exc:
                    res.other.append(f"{type(exc).__name__}")
                    continue
                dt = time.perf_counter() - t0
                i += 1
                res.statuses[r.status_code] = res.statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    res.admitted.append(dt)
                elif r.status_code == 503:
                    res.rejected.append(dt)
                    retry = r.headers.get("retry-after", "")
                    ok = r.headers.get("content-type", "").startswith("application/json") and retry.isdigit()
                    if ok:
                        ok = r.json().get("error", {}).get("code") == "overloaded"
                    res.rejected_not_contract += not ok
                    await asyncio.sleep(pause_s if pause_s is not None else (float(retry) if retry.isdigit() else 1.0))
                else:
                    res.other.append(f"{r.status_code} {r.headers.get('content-type', '')}")

        await asyncio.gather(*[client(k) for k in range(clients)])
    res.health, res.health_failures = health_q.get(timeout=60)
    poller.join(timeout=10)
    return res


def _poll_health(base: str, seconds: float, poll_s: float, out) -> None:
    """GET /healthz every ``poll_s`` for ``seconds`` (a process of its own)."""
    lat, failures = [], 0
    stop = time.perf_counter() + seconds
    with httpx.Client(base_url=base, timeout=30) as h:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                ok = h.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                lat.append(time.perf_counter() - t0)
            else:
                failures += 1
            time.sleep(poll_s)
    out.put((lat, failures))


def run_overload_niced(base: str, token: str, body: bytes, clients: int, seconds: float, pause_s: float | None = None,
                       niceness: int = RAY_WORKER_NICENESS) -> OverloadResult:
    """:func:`run_overload` in a subprocess at ``niceness`` (the token goes through the environment)."""
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        body_file, out = Path(tmp) / "body.png", Path(tmp) / "out.json"
        body_file.write_bytes(body)
        cmd = ["nice", "-n", str(niceness), sys.executable, str(Path(__file__).resolve()), "--base", base, "--body", str(body_file),
               "--clients", str(clients), "--seconds", str(seconds), "--out", str(out)]
        if pause_s is not None:
            cmd += ["--pause", str(pause_s)]
        subprocess.run(cmd, check=True, env={**os.environ, "CXR_OVERLOAD_TOKEN": token}, timeout=seconds + 300)
        return OverloadResult(**{**json.loads(out.read_text()), "statuses": {int(k): v for k, v in json.loads(out.read_text())["statuses"].items()}})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="overload run (see the module docstring); token in env CXR_OVERLOAD_TOKEN")
    ap.add_argument("--base", required=True)
    ap.add_argument("--body", required=True, help="PNG file to POST")
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--pause", type=float, default=None, help="pause after a 503 (default: its Retry-After)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    headers = {"Authorization": f"Bearer {os.environ['CXR_OVERLOAD_TOKEN']}", "Content-Type": "image/png"}
    res = asyncio.run(run_overload(a.base, headers, Path(a.body).read_bytes(), a.clients, a.seconds, pause_s=a.pause))
    Path(a.out).write_text(json.dumps(res.to_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
