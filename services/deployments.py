"""The ``Generator`` deployment: models on a CPU or a GPU, batched generation.

It holds a :class:`~augment.generation.ModelBundle` and answers the Ingress with plain
dicts (NumPy arrays inside). ``/v1/generate`` requests are grouped by ``@serve.batch``
(``serve.max_batch_size``, ``serve.batch_wait_timeout_s``) and run as one
:func:`~augment.generation.generate_batch` call; with ``serve.batching: false`` each runs
alone (the benchmark compares both). Torch work runs in one worker thread, so the replica's
event loop stays free to queue the next batch and answer health checks.

``user_config`` (``reconfigure``) may name other models or change batching without a
restart: ``{"classifier": uri, "generator": uri, "references": folder, "batching": bool,
"max_batch_size": int, "batch_wait_timeout_s": float}``. Models are reloaded only when a
location changed. Bad input never raises out of a method: it comes back as
``{"error": {...}}`` with a 4xx status, so no request can take a replica down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePath
from typing import Any

import numpy as np
import torch
from ray import serve

from augment.config import RunConfig, ServeConfig
from augment.errors import NoContrastError, UnknownFindingError
from augment.findings import FINDINGS

log = logging.getLogger("cxr.serve")

__all__ = ["Generator", "USER_CONFIG_KEYS", "error_dict", "public_message", "public_location", "json_safe"]

USER_CONFIG_KEYS = ("classifier", "generator", "references", "verifier", "batching", "max_batch_size", "batch_wait_timeout_s")


def error_dict(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message, **extra}}


_OBJECT_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")
_ABS_PATH = re.compile(r"(?<![\w:/])(?:/[\w.@+-]+){2,}/?")


def public_message(msg: str) -> str:
    """A library message as a client may see it: object reprs and absolute server paths removed."""
    return _ABS_PATH.sub("<path>", _OBJECT_REPR.sub("<object>", msg))


def _internal(what: str, exc: Exception) -> dict[str, Any]:
    """An unexpected failure: logged with a reference; the client gets the reference, not the exception."""
    ref = secrets.token_hex(6)
    log.error("internal error %s in %s", ref, what, exc_info=exc)
    return error_dict(500, "internal_error", f"{what} failed inside the service; retry later; if it persists, give the operator "
                      f"the reference {ref}", reference=ref)


def public_location(uri: Any) -> Any:
    """A model location for ``/v1/models``: an MLflow URI as is, a server path reduced to its file name."""
    if not isinstance(uri, str) or "://" in uri and not uri.startswith("file://") or uri.startswith(("runs:/", "models:/")):
        return uri
    return PurePath(uri.removeprefix("file://")).name


def json_safe(value: Any) -> Any:
    """``value`` as JSON can carry it: tuples as lists, NumPy/torch scalars and arrays as numbers and
    lists, non-finite floats (NaN, inf: JSON has none) as ``None``."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.detach().cpu().tolist())
    if isinstance(value, (np.ndarray, np.generic)):
        return json_safe(value.tolist())
    return str(value)


def _as_error(exc: Exception, known: list[str]) -> dict[str, Any]:
    """Library errors (ValueError/TypeError naming the problem) -> a 422 error dict, the code by
    the error's class (:mod:`augment.errors`), never by its message."""
    msg = public_message(str(exc))
    if isinstance(exc, UnknownFindingError):
        return error_dict(422, "unknown_finding", msg, known=known)
    if isinstance(exc, NoContrastError):
        return error_dict(422, "no_contrast", msg)
    return error_dict(422, "invalid_input", msg)


@serve.deployment(
    name="Generator",
    max_ongoing_requests=8,
    max_queued_requests=64,
    backpressure_config={"status_code": 503, "retry_after_s": 2},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=30,
)
class Generator:
    """Model replica.

    Args:
        profile: the validated run profile as a dict (``RunConfig.model_dump(mode="json")``).
    """

    def __init__(self, profile: dict[str, Any]) -> None:
        self.cfg = RunConfig.model_validate(profile)
        threads = self.cfg.resources.torch_threads
        if threads:
            torch.set_num_threads(threads)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-torch")
        self._bundle = None
        self._serve_cfg: ServeConfig = self.cfg.serve
        self._loaded_from: tuple[str, str, str, str | None] | None = None
        self._examples: dict[str, Any] = {}  # id -> augment.generation.bundle.Example
        self._examples_from: tuple[str, int] | None = None
        self._instance = secrets.token_hex(4)  # tells replicas apart (and restarts) without naming a PID
        self._metrics = _Metrics()
        # The builder always passes a user_config, so Serve calls reconfigure before the
        # first request; a Generator deployed without one loads the profile's models lazily.

    # ------------------------------------------------------------------ configuration

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply ``user_config``: reload models whose location changed, update batching."""
        from augment.generation import ModelSpec, default_locations, load_bundle

        user_config = dict(user_config or {})
        unknown = sorted(set(user_config) - set(USER_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown user_config key(s) {unknown}; allowed: {list(USER_CONFIG_KEYS)}")
        serve_cfg = ServeConfig.model_validate({**self.cfg.serve.model_dump(), **user_config})
        spec = default_locations(self.cfg.model_copy(update={"serve": serve_cfg}))
        key = (spec.classifier, spec.generator, spec.references, spec.verifier)
        if key != self._loaded_from:
            t0 = time.perf_counter()
            bundle = load_bundle(self.cfg, ModelSpec(*key))
            self._warm_up(bundle)
            self._bundle, self._loaded_from = bundle, key
            log.info("models loaded from %s in %.1f s", key, time.perf_counter() - t0)
        self._serve_cfg = serve_cfg
        self._load_examples(spec.references, serve_cfg)
        self._generate_batched.set_max_batch_size(serve_cfg.max_batch_size)
        self._generate_batched.set_batch_wait_timeout_s(serve_cfg.batch_wait_timeout_s)

    def _load_examples(self, references: str, serve_cfg: ServeConfig) -> None:
        """The healthy example sources: the first ``serve.example_sources`` No Finding images of the
        reference folder that ``/v1/generate`` would accept (its upload limits)."""
        from augment.generation.bundle import healthy_examples
        from services.uploads import decode_upload

        key = (str(references), serve_cfg.example_sources)
        if key == self._examples_from:
            return
        try:
            found = healthy_examples(references, serve_cfg.example_sources, accept=lambda ex: decode_upload(ex.png, ex.id, serve_cfg))
        except Exception:  # e.g. an unreadable CSV: the service still generates, it offers no examples
            log.exception("healthy example sources could not be read")
            found = []
        self._examples = {ex.id: ex for ex in found}
        self._examples_from = key
        log.info("%d healthy example source(s) of %d asked", len(found), serve_cfg.example_sources)

    def _warm_up(self, bundle) -> None:
        """One tiny generation, so the first request does not pay for lazy initialisation."""
        from augment.generation import GenerationRequest, generate_batch

        f = bundle.available_findings[0]
        ref = bundle.references.images[f][0:1].clone()
        try:
            generate_batch(bundle, self.cfg, [GenerationRequest(ref, (f,), seed=0, steps=1)])
        except Exception:  # a warm-up failure must not block loading; real requests report errors
            log.exception("warm-up generation failed")

    # ------------------------------------------------------------------ info

    def _require(self):
        if self._bundle is None:
            self.reconfigure({})
        return self._bundle

    def info(self) -> dict[str, Any]:
        """Loaded models, references and batching settings (``/v1/models``, ``/v1/findings``).

        No server paths (a checkpoint file is named by its file name; MLflow URIs stay),
        no PID, no uptime: only what a client needs to know which models answer it.
        """
        b = self._require()
        s = self._serve_cfg
        info = {k: (dict(v) if isinstance(v, dict) else v) for k, v in b.info.items() if k != "loaded_at"}
        for part in ("classifier", "generator", "verifier"):
            if isinstance(info.get(part), dict):
                info[part].pop("path", None)
                info[part]["uri"] = public_location(info[part].get("uri"))
        if isinstance(info.get("references"), dict):
            info["references"].pop("root", None)
        return {
            **info,
            "available_findings": b.available_findings,
            "batching": {"enabled": s.batching, "max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s},
            "replica": {"instance": self._instance, "cuda": torch.cuda.is_available(), "torch_threads": torch.get_num_threads()},
            "limits": {"max_samples": s.max_samples, "max_steps": s.max_steps, "max_findings": s.max_findings,
                       "max_upload_bytes": s.max_upload_bytes, "max_image_side": s.max_image_side,
                       "request_timeout_s": s.request_timeout_s},
        }

    # ------------------------------------------------------------------ examples

    def examples(self) -> dict[str, Any]:
        """The healthy example sources (``/v1/examples``): id (NIH Image Index), size and bit depth."""
        self._require()
        return {"examples": [{"id": e.id, "width": e.width, "height": e.height, "bits": e.bits} for e in self._examples.values()]}

    def example(self, example_id: str) -> dict[str, Any]:
        """One example source's PNG bytes, or a 404 error dict naming the known ids."""
        self._require()
        ex = self._examples.get(str(example_id))
        if ex is None:
            shown = str(example_id)[:64]
            return error_dict(404, "unknown_example", f"no example source {shown!r}; GET /v1/examples lists them",
                              known=list(self._examples))
        return {"id": ex.id, "png": ex.png, "width": ex.width, "height": ex.height, "bits": ex.bits}

    # ------------------------------------------------------------------ generate

    async def generate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload``: image (H, W) float32, findings, seed, n_samples, steps, guidance."""
        t0 = time.perf_counter()
        if self._serve_cfg.batching:
            out = await self._generate_batched(payload)
        else:
            loop = asyncio.get_running_loop()
            out = (await loop.run_in_executor(self._pool, self._run_generate, [payload]))[0]
        self._metrics.observe(out, time.perf_counter() - t0)
        return out

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batched(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run_generate, payloads)

    def _run_generate(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Generate a batch; when it fails, each request alone, so one bad request fails alone."""
        from augment.generation import GenerationRequest, generate_batch

        bundle = self._require()
        reqs = []
        for p in payloads:
            reqs.append(
                GenerationRequest(
                    image=torch.from_numpy(np.ascontiguousarray(p["image"], dtype=np.float32))[None, None],
                    findings=tuple(p["findings"]),
                    seed=int(p["seed"]),
                    n_samples=int(p.get("n_samples", 1)),
                    steps=p.get("steps"),
                    guidance=p.get("guidance"),
                )
            )
        try:
            results = generate_batch(bundle, self.cfg, reqs)
            return [self._result_dict(r, len(payloads)) for r in results]
        except (ValueError, TypeError):
            if len(reqs) == 1:
                return [self._one_or_error(bundle, reqs[0], 1)]
            return [self._one_or_error(bundle, r, len(payloads)) for r in reqs]
        except Exception as exc:  # unexpected: report it per request, keep the replica alive
            return [_internal("generation", exc)] * len(reqs)

    def _one_or_error(self, bundle, req, batch_size: int) -> dict[str, Any]:
        from augment.generation import generate_batch

        try:
            return self._result_dict(generate_batch(bundle, self.cfg, [req])[0], batch_size)
        except (ValueError, TypeError) as exc:
            return _as_error(exc, bundle.available_findings)
        except Exception as exc:
            return _internal("generation", exc)

    @staticmethod
    def _result_dict(res, batch_size: int) -> dict[str, Any]:
        return {
            "findings": list(res.findings),
            "proba_before": res.proba_before,
            "steps": res.steps,
            "guidance": res.guidance,
            "seconds": res.seconds,
            "batch_size": batch_size,
            "samples": [
                {
                    "image": s.image[0, 0].numpy(),
                    "mask": s.mask[0, 0].numpy(),
                    "seed": s.seed,
                    "accepted": s.decision.accepted,
                    "reasons": list(s.decision.reasons),
                    "rise": s.decision.rise,
                    "margin": s.decision.margin,
                    "outside_max_abs_diff": s.decision.outside_max_abs_diff,
                    "mask_fraction": s.decision.mask_fraction,
                    "gate": json_safe(s.decision.to_dict()),
                    "proba_after": s.proba_after,
                    "references": [ref.__dict__ for ref in s.references],
                }
                for s in res.samples
            ],
        }

    # ------------------------------------------------------------------ inpaint, register

    async def inpaint(self, payload: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run_inpaint, payload)

    def _run_inpaint(self, p: dict[str, Any]) -> dict[str, Any]:
        from augment.generation import inpaint_image

        try:
            out = inpaint_image(
                self._require(), self.cfg, torch.from_numpy(p["image"])[None, None], torch.from_numpy(p["mask"])[None, None],
                p["findings"], seed=int(p["seed"]), steps=p.get("steps"), guidance=p.get("guidance"),
            )
        except (ValueError, TypeError) as exc:
            return _as_error(exc, list(FINDINGS))
        except Exception as exc:
            return _internal("inpainting", exc)
        return {
            "image": out.image[0, 0].numpy(), "mask": out.mask[0, 0].numpy(), "findings": list(out.findings),
            "proba_before": out.proba_before, "proba_after": out.proba_after, "seed": out.seed,
            "steps": out.steps, "guidance": out.guidance, "seconds": out.seconds,
        }

    async def register(self, payload: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run_register, payload)

    def _run_register(self, p: dict[str, Any]) -> dict[str, Any]:
        from augment.generation import register_images

        t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]  # noqa: E731
        try:
            bundle = self._require()
            out = register_images(t(p["fixed"]), t(p["moving"]), self.cfg.registration, bundle.work_size, t(p.get("map")),
                                  device=bundle.device)
        except (ValueError, TypeError) as exc:
            return _as_error(exc, list(FINDINGS))
        except Exception as exc:
            return _internal("registration", exc)
        return {
            "warped": out.warped[0, 0].numpy(),
            "warped_map": None if out.warped_map is None else out.warped_map[0, 0].numpy(),
            "mse_before": out.mse_before, "mse_after": out.mse_after, "ncc_before": out.ncc_before, "ncc_after": out.ncc_after,
            "folded_fraction": out.folded_fraction, "work_size": out.work_size, "seconds": out.seconds,
        }


class _Metrics:
    """Application metrics exported with Ray Serve's own (Prometheus, on each node's metrics port)."""

    def __init__(self) -> None:
        try:
            from ray.serve import metrics

            self.requests = metrics.Counter("cxr_generate_requests", description="/v1/generate requests", tag_keys=("outcome",))
            self.samples = metrics.Counter("cxr_generated_samples", description="synthetic images made", tag_keys=("accepted",))
            self.latency = metrics.Histogram(
                "cxr_generate_seconds", description="time in the Generator per request",
                boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
            )
        except Exception:  # metrics are optional (e.g. outside a Ray worker)
            self.requests = None

    def observe(self, out: dict[str, Any], seconds: float) -> None:
        if self.requests is None:
            return
        try:
            self.requests.inc(tags={"outcome": "error" if "error" in out else "ok"})
            for s in out.get("samples", ()):
                self.samples.inc(tags={"accepted": str(bool(s["accepted"])).lower()})
            self.latency.observe(seconds)
        except Exception:  # never fail a request over a metric
            pass
