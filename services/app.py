"""The Ray Serve application: a FastAPI ``Ingress`` composed with the ``Generator`` deployment.

``services.app:app`` is the import path of ``configs/serve.yaml``, of ``serve deploy`` and
of the KubeRay RayService. It is an application builder::

    serve run configs/serve.yaml                                  # args from the file
    serve run services.app:app config=configs/local.yaml          # args on the command line

``args``: ``config`` (a run profile, validated by :mod:`augment.config`) and optionally
``overrides`` (a list of ``KEY=VALUE`` like the jobs' ``--set``). The profile decides the
replicas' resources (``resources.cpus_per_actor``; a GPU when ``resources.use_gpu``), the
models (``serve.classifier``, ``serve.generator``: paths or MLflow URIs), the references,
limits, batching and the API token (see :mod:`services.auth`).

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``): ``POST /v1/generate``,
``POST /v1/inpaint``, ``POST /v1/register``, ``GET /v1/findings``, ``GET /v1/models``,
``GET /v1/examples`` and ``GET /v1/examples/{id}`` (healthy example sources, see
``serve.example_sources``), ``GET /healthz`` (no token) and a page at ``/``. Ray Serve's metrics (and ``cxr_*``
application metrics) are exported on each Ray node's metrics port.

Before FastAPI reads a body, three ASGI middlewares run, in this order: the token check
(:mod:`services.auth`; 401 whatever the body), admission (:mod:`services.admission`; JSON
503 + ``Retry-After`` beyond ``serve.max_inflight`` image requests) and the body limits
(:mod:`services.uploads`; 413 quoting ``serve.max_upload_bytes`` or ``serve.max_json_bytes``).
An admitted request waits for the Generator at most ``serve.request_timeout_s`` after it
arrived (then JSON 504). JSON parsing, PNG decoding and encoding run in worker threads, off
the event loop.
"""

import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from augment import __version__
from augment.config import RunConfig, load_config
from augment.data.io import encode_png
from augment.findings import ALIASES, FINDINGS
from services.admission import Admission, AdmissionMiddleware, arrival, await_with_deadline
from services.auth import TokenMiddleware, TokenSource, bearer_scheme, check_authorization
from services.deployments import USER_CONFIG_KEYS, Generator
from services.errors import ERROR_RESPONSES, ApiError, ErrorResponse, from_payload, install_error_handlers
from services.page import PAGE
from services.schemas import (
    ExampleInfo,
    ExamplesResponse,
    FindingInfo,
    FindingsResponse,
    GenerateResponse,
    Health,
    InpaintBody,
    InpaintResponse,
    RegisterBody,
    RegisterResponse,
)
from services.uploads import RAW_IMAGE_TYPES, BodyLimitMiddleware, decode_b64, decode_upload, is_json, png_b64, read_body

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

__all__ = ["app", "api", "Ingress", "Generator", "build_app", "INGRESS_CPUS"]

REPO = Path(__file__).resolve().parents[1]
INGRESS_CPUS = 0.25
"""CPU reserved per Ingress replica: it only checks, decodes and encodes images."""

_PNG_200 = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "JSON, or PNG bytes with format=png / Accept: image/png"}
_RAW_BODY = {
    "requestBody": {
        "required": True,
        "description": "the healthy radiograph: an 8- or 16-bit grayscale PNG file as the raw body",
        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_IMAGE_TYPES},
    }
}


class _State:
    """Per-replica settings the module-level FastAPI pieces read (set by ``Ingress.__init__``)."""

    cfg: RunConfig = RunConfig()
    tokens: TokenSource | None = None
    admission: Admission = Admission(RunConfig().serve.max_inflight)
    pool: ThreadPoolExecutor | None = None


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run CPU-bound work (PNG decoding and encoding) in the replica's worker threads, not on its event loop."""
    if _State.pool is None:
        _State.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cxr-codec")
    return await asyncio.get_running_loop().run_in_executor(_State.pool, partial(fn, *args))


api = FastAPI(
    title="cxr-augment",
    version=__version__,
    description=(
        "Synthetic chest radiographs of under-represented findings: Demons registration of a diseased "
        "reference onto a healthy radiograph, flow-matching inpainting of the carried region, and a "
        "classifier gate. Every endpoint but /healthz needs 'Authorization: Bearer <token>'."
    ),
)
install_error_handlers(api, retry_after_s=RunConfig().serve.retry_after_s)


# Starlette runs the middleware added last first: the token check, then admission, then the
# body limit, and only then FastAPI, which reads and parses the body.
api.add_middleware(BodyLimitMiddleware, cfg=lambda: _State.cfg.serve)
api.add_middleware(AdmissionMiddleware, admission=lambda: (_State.admission, _State.cfg.serve.retry_after_s))
api.add_middleware(TokenMiddleware, source=lambda: _State.tokens)


def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> None:
    """FastAPI dependency: documents bearer auth in the schema; checks again (:class:`TokenMiddleware` already did)."""
    header = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
    check_authorization(_State.tokens, header)


def _want_png(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "png"
    accept = request.headers.get("accept", "")
    return "image/png" in accept and "application/json" not in accept


def _findings(names: list[str]) -> list[str]:
    """Split ``a,b`` and canonicalise; 422 listing the known findings for an unknown one."""
    out: list[str] = []
    for raw in names:
        for n in (p.strip() for p in raw.split(",")):
            if not n:
                continue
            canon = ALIASES.get(n, n)
            if canon not in FINDINGS:
                raise ApiError(422, "unknown_finding", f"unknown finding {n!r}; use NIH's spelling", known=list(FINDINGS))
            if canon not in out:
                out.append(canon)
    if not out:
        raise ApiError(422, "unknown_finding", "name at least one finding", known=list(FINDINGS))
    return out


def _bits_header(bits: int) -> int:
    return 16 if bits == 16 else 8


def _generate_answer(out: dict[str, Any], shape: tuple[int, int], bits: int, png: bool, part: str, n: int, seed: int) -> Response:
    """The /v1/generate answer (PNG encoding: CPU-bound, run with :func:`off_loop`)."""
    h, w = shape
    if png:
        smp = out["samples"][0]
        ref = smp["references"]
        headers = {
            "X-CXR-Seed": str(smp["seed"]),
            "X-CXR-Accepted": str(bool(smp["accepted"])).lower(),
            "X-CXR-Findings": ",".join(out["findings"]),
            "X-CXR-References": ",".join(f"{r['finding']}={r['image_index']}" for r in ref),
            "X-CXR-Proba-Before": ",".join(f"{f}={out['proba_before'][f]:.4f}" for f in out["findings"]),
            "X-CXR-Proba-After": ",".join(f"{f}={smp['proba_after'][f]:.4f}" for f in out["findings"]),
        }
        arr = smp["image"] if part == "image" else smp["mask"].astype(np.float32)
        return Response(encode_png(arr, bits=bits if part == "image" else 8), media_type="image/png", headers=headers)
    samples = []
    for smp in out["samples"]:
        samples.append({**{k: v for k, v in smp.items() if k not in ("image", "mask")},
                        "image": png_b64(smp["image"], bits), "mask": png_b64(smp["mask"].astype(np.float32))})
    return JSONResponse(
        GenerateResponse(
            findings=out["findings"], proba_before=out["proba_before"], seed=seed, n=n, steps=out["steps"],
            guidance=out["guidance"], width=w, height=h, bits=bits, batch_size=out["batch_size"],
            seconds=out["seconds"], samples=samples,
        ).model_dump(mode="json")
    )


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the JSON request body (read by :func:`_parse_json`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def _parse_json(request: Request, model: type[M]) -> M:
    """The body as ``model``, parsed and validated in a worker thread (a big JSON body would stall the event loop).

    Raises:
        ApiError: 415 for a non-JSON Content-Type; RequestValidationError (422) for malformed JSON or fields.
    """
    ctype = request.headers.get("content-type", "")
    if ctype and not is_json(ctype):
        raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype.split(';')[0]!r}: send a JSON body (application/json)")
    raw = await request.body()
    try:
        return await off_loop(model.model_validate_json, raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_input=False)]) from None


def _inpaint_inputs(body: InpaintBody, cfg) -> tuple[Any, np.ndarray]:
    """Decode and check the /v1/inpaint images (CPU-bound, run with :func:`off_loop`)."""
    image = decode_b64(body.image, "image", cfg)
    mask = decode_b64(body.mask, "mask", cfg)
    if mask.shape != image.shape:
        raise ApiError(422, "mask_size", f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                       f"{image.shape[1]}x{image.shape[0]}; send a mask of the image's size")
    m = mask.pixels > 0.5
    if not m.any():
        raise ApiError(422, "empty_mask", "the mask is empty: mark the pixels to repaint in white")
    return image, m


def _inpaint_answer(out: dict[str, Any], image, png: bool, seed: int) -> Response:
    bits = _bits_header(image.bits)
    if png:
        return Response(encode_png(out["image"], bits=bits), media_type="image/png", headers={"X-CXR-Seed": str(seed)})
    h, w = image.shape
    return JSONResponse(
        InpaintResponse(
            image=png_b64(out["image"], bits), mask=png_b64(out["mask"].astype(np.float32)), findings=out["findings"],
            proba_before=out["proba_before"], proba_after=out["proba_after"], seed=seed, steps=out["steps"],
            guidance=out["guidance"], width=w, height=h, seconds=out["seconds"],
        ).model_dump(mode="json")
    )


def _register_inputs(body: RegisterBody, cfg) -> tuple[Any, Any, Any]:
    """Decode and check the /v1/register images (CPU-bound, run with :func:`off_loop`)."""
    fixed = decode_b64(body.fixed, "fixed", cfg)
    moving = decode_b64(body.moving, "moving", cfg)
    if fixed.shape != moving.shape:
        raise ApiError(422, "wrong_dimensions", f"fixed is {fixed.shape[1]}x{fixed.shape[0]} and moving is "
                       f"{moving.shape[1]}x{moving.shape[0]}; send two images of one size")
    mmap = None
    if body.map is not None:
        mmap = decode_b64(body.map, "map", cfg)
        if mmap.shape != moving.shape:
            raise ApiError(422, "map_size", f"the map is {mmap.shape[1]}x{mmap.shape[0]} but moving is "
                           f"{moving.shape[1]}x{moving.shape[0]}; send a map of the moving image's size")
    return fixed, moving, mmap


def _register_answer(out: dict[str, Any], moving, png: bool) -> Response:
    bits = _bits_header(moving.bits)
    if png:
        return Response(encode_png(out["warped"], bits=bits), media_type="image/png")
    return JSONResponse(
        RegisterResponse(
            warped=png_b64(out["warped"], bits),
            warped_map=None if out["warped_map"] is None else png_b64(out["warped_map"]),
            **{k: out[k] for k in ("mse_before", "mse_after", "ncc_before", "ncc_after", "folded_fraction", "work_size", "seconds")},
        ).model_dump(mode="json")
    )


@serve.deployment(
    name="Ingress",
    # Well above serve.max_inflight (16): requests beyond it are answered (JSON 503) by the
    # replica in milliseconds, so the proxy does not queue /healthz behind them.
    max_ongoing_requests=64,
    max_queued_requests=256,
    backpressure_config={"status_code": 503, "retry_after_s": 2},
)
@serve.ingress(api)
class Ingress:
    """HTTP front: checks the token and the input, calls the ``Generator``, encodes the answer."""

    def __init__(self, generator: DeploymentHandle, profile: dict[str, Any]) -> None:
        cfg = RunConfig.model_validate(profile)
        _State.cfg = cfg
        _State.tokens = TokenSource(cfg.serve.token_file, cfg.serve.require_token)
        _State.admission = Admission(cfg.serve.max_inflight)
        self.generator = generator
        self.cfg = cfg

    async def _call(self, request: Request | None, method: str, payload: Any = None) -> dict[str, Any]:
        """Call the Generator until ``serve.request_timeout_s`` after ``request`` arrived.

        Overload -> 503 with Retry-After; too late -> 504 (the call is cancelled); an error dict -> its ApiError.
        """
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        s = self.cfg.serve
        retry = {"Retry-After": str(s.retry_after_s)}
        t0 = arrival(request.scope) if request is not None else time.monotonic()
        try:
            handle = getattr(self.generator, method)
            response = handle.remote(payload) if payload is not None else handle.remote()
            out = await await_with_deadline(response, t0 + s.request_timeout_s, s.request_timeout_s, s.retry_after_s)
        except BackPressureError:
            raise ApiError(503, "overloaded", f"the generator's queue is full; retry after {s.retry_after_s} s (Retry-After)",
                           headers=retry) from None
        except DeploymentUnavailableError:
            raise ApiError(503, "unavailable", "the generator is not available; retry later", headers=retry) from None
        if isinstance(out, dict) and "error" in out:
            raise from_payload(out)
        return out

    # ------------------------------------------------------------------ open endpoints

    @api.get("/healthz", response_model=Health, tags=["health"], summary="Liveness (no token needed)")
    async def healthz(self) -> Health:
        return Health(status="ok", version=__version__)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)

    # ------------------------------------------------------------------ catalogue

    @api.get("/v1/findings", response_model=FindingsResponse, tags=["catalogue"], dependencies=[Depends(require_token)],
             responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]}, summary="Findings and their references")
    async def findings(self) -> FindingsResponse:
        info = await self._call(None, "info")
        counts = info.get("references", {}).get("per_finding", {})
        return FindingsResponse(
            findings=[FindingInfo(name=f, available=f in counts, references=int(counts.get(f, 0))) for f in FINDINGS],
            available=list(info.get("available_findings", [])),
        )

    @api.get("/v1/models", tags=["catalogue"], dependencies=[Depends(require_token)],
             responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]}, summary="Loaded models and settings")
    async def models(self) -> dict[str, Any]:
        return await self._call(None, "info")

    @api.get("/v1/examples", response_model=ExamplesResponse, tags=["catalogue"], dependencies=[Depends(require_token)],
             responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]}, summary="Healthy example sources")
    async def examples(self) -> ExamplesResponse:
        out = await self._call(None, "examples")
        return ExamplesResponse(examples=[ExampleInfo(**e) for e in out["examples"]])

    @api.get(
        "/v1/examples/{example_id}",
        response_class=Response,
        tags=["catalogue"],
        dependencies=[Depends(require_token)],
        responses={
            200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "the example's PNG"},
            401: ERROR_RESPONSES[401],
            404: {"model": ErrorResponse, "description": "no example source with that id (unknown_example)"},
            422: {"model": ErrorResponse, "description": "an id longer than 128 characters"},
            503: ERROR_RESPONSES[503],
        },
        summary="One healthy example source as PNG (a body for /v1/generate)",
    )
    async def example(
        self, example_id: str = PathParam(..., min_length=1, max_length=128, description="an id from GET /v1/examples"),
    ) -> Response:
        out = await self._call(None, "example", example_id)
        return Response(out["png"], media_type="image/png", headers={"Cache-Control": "private, max-age=3600",
                                                                     "X-CXR-Example": out["id"]})

    # ------------------------------------------------------------------ generate

    @api.post(
        "/v1/generate",
        response_model=GenerateResponse,
        tags=["generation"],
        dependencies=[Depends(require_token)],
        responses={200: _PNG_200, **ERROR_RESPONSES},
        openapi_extra=_RAW_BODY,
        summary="Paint findings into a healthy radiograph",
    )
    async def generate(
        self,
        request: Request,
        finding: list[str] = Query(..., min_length=1, description="target finding(s), NIH spelling; repeat or comma-separate"),
        n: int = Query(1, ge=1, le=64, description="number of samples (limit serve.max_samples)"),
        steps: int | None = Query(None, ge=1, le=1000, description="ODE steps (default inpainting.steps; limit serve.max_steps)"),
        guidance: float | None = Query(None, ge=0.0, le=20.0, description="classifier-free guidance weight"),
        seed: int | None = Query(None, ge=0, le=2**31 - 1, description="seed of sample 0 (random when absent; returned)"),
        format: Literal["json", "png"] | None = Query(None, description="json (default) or png; else from the Accept header"),
        part: Literal["image", "mask"] = Query("image", description="with format=png: the synthetic image or its mask"),
    ) -> Any:
        s = self.cfg.serve
        names = _findings(finding)
        if len(names) > s.max_findings:
            raise ApiError(422, "too_many_findings", f"{len(names)} findings asked; at most {s.max_findings} per request")
        if n > s.max_samples:
            raise ApiError(422, "too_many_samples", f"n={n}; at most {s.max_samples} samples per request (serve.max_samples)")
        if steps is not None and steps > s.max_steps:
            raise ApiError(422, "too_many_steps", f"steps={steps}; at most {s.max_steps} (serve.max_steps)")
        png = _want_png(request, format)
        if png and n > 1:
            raise ApiError(422, "png_single_sample", "format=png returns one image: use n=1, or format=json for several samples")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype.startswith(("text/", "multipart/")) or ctype.endswith("json"):
            # Any other type (none, image/png, application/octet-stream, curl's default
            # x-www-form-urlencoded) is read as the file itself and judged by its bytes.
            raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype!r}: send the PNG file as the raw body (image/png)")
        upload = await off_loop(decode_upload, await read_body(request, s.max_upload_bytes), "image", s)
        seed = secrets.randbelow(2**31) if seed is None else seed
        out = await self._call(
            request,
            "generate",
            {"image": upload.pixels, "findings": names, "seed": seed, "n_samples": n, "steps": steps, "guidance": guidance},
        )
        return await off_loop(_generate_answer, out, upload.shape, _bits_header(upload.bits), png, part, n, seed)

    # ------------------------------------------------------------------ inpaint

    @api.post(
        "/v1/inpaint",
        response_model=InpaintResponse,
        tags=["generation"],
        dependencies=[Depends(require_token)],
        responses={200: _PNG_200, **ERROR_RESPONSES},
        openapi_extra=_json_body(InpaintBody),
        summary="Repaint a given mask with findings (no registration)",
    )
    async def inpaint(
        self,
        request: Request,
        format: Literal["json", "png"] | None = Query(None, description="json (default) or png; else from the Accept header"),
    ) -> Any:
        s = self.cfg.serve
        body = await _parse_json(request, InpaintBody)
        names = _findings(body.findings)
        if body.steps is not None and body.steps > s.max_steps:
            raise ApiError(422, "too_many_steps", f"steps={body.steps}; at most {s.max_steps} (serve.max_steps)")
        image, m = await off_loop(_inpaint_inputs, body, s)
        seed = secrets.randbelow(2**31) if body.seed is None else body.seed
        out = await self._call(request, "inpaint", {"image": image.pixels, "mask": m.astype(np.float32), "findings": names,
                                                    "seed": seed, "steps": body.steps, "guidance": body.guidance})
        return await off_loop(_inpaint_answer, out, image, _want_png(request, format), seed)

    # ------------------------------------------------------------------ register

    @api.post(
        "/v1/register",
        response_model=RegisterResponse,
        tags=["registration"],
        dependencies=[Depends(require_token)],
        responses={200: _PNG_200, **ERROR_RESPONSES},
        openapi_extra=_json_body(RegisterBody),
        summary="Register a moving radiograph (and a map) onto a fixed one",
    )
    async def register(
        self,
        request: Request,
        format: Literal["json", "png"] | None = Query(None, description="json (default) or png (the warped image)"),
    ) -> Any:
        body = await _parse_json(request, RegisterBody)
        fixed, moving, mmap = await off_loop(_register_inputs, body, self.cfg.serve)
        out = await self._call(request, "register", {"fixed": fixed.pixels, "moving": moving.pixels,
                                                     "map": None if mmap is None else mmap.pixels})
        return await off_loop(_register_answer, out, moving, _want_png(request, format))


def _profile_path(config: str) -> Path:
    p = Path(config)
    if p.is_file() or p.is_absolute():
        return p
    return REPO / p if (REPO / p).is_file() else p


def build_app(cfg: RunConfig):
    """``Ingress.bind(Generator.bind(...))`` with the replicas' resources taken from ``cfg``."""
    TokenSource(cfg.serve.token_file, cfg.serve.require_token)  # fail at deploy time, not per request
    profile = cfg.model_dump(mode="json")
    r = cfg.resources
    gpus = (r.gpus_per_actor or 1.0) if r.use_gpu else 0.0
    generator = Generator.options(
        ray_actor_options={"num_cpus": r.cpus_per_actor, "num_gpus": gpus},
        user_config={k: getattr(cfg.serve, k) for k in USER_CONFIG_KEYS},
    ).bind(profile)
    return Ingress.options(ray_actor_options={"num_cpus": INGRESS_CPUS}).bind(generator, profile)


def app(args: dict[str, Any]):
    """Application builder for ``services.app:app``.

    Args:
        args: ``config`` (path of a run profile; relative paths are tried from the working
            directory, then from the repository root) and optionally ``overrides``
            (``["resources.use_gpu=false", ...]``).

    Raises:
        ValueError: missing or unknown args, an invalid profile, or no API token.
    """
    args = dict(args or {})
    unknown = sorted(set(args) - {"config", "overrides"})
    if unknown:
        raise ValueError(f"unknown application args {unknown}; give config (a profile path) and optionally overrides")
    if not args.get("config"):
        raise ValueError("args.config is required: the run profile, e.g. configs/local.yaml")
    overrides = args.get("overrides") or []
    if isinstance(overrides, str):
        overrides = [overrides]
    cfg = load_config(_profile_path(str(args["config"])), list(overrides))
    return build_app(cfg)
