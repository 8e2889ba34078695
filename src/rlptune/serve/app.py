"""The HTTP API (FastAPI): classify, tasks, health, metrics, the web page; every bad request a 4xx JSON error.

Errors are ``{"error": "<one line>"}`` with a 4xx status; an unexpected failure is a 500 with a fixed message
(the traceback goes to the server log, never to the client).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..backbones import eval_transform, load_backbone
from ..data.images import load_image
from ..errors import RlptuneError
from .batcher import Batcher, ServerClosing
from .docs import STATIC_FILES, STATIC_PREFIX, add_docs_routes
from .metrics import Metrics
from .page import PAGE
from .settings import ServeSettings
from .tasks import TaskConflict, TaskRegistry, check_task_name

log = logging.getLogger("rlptune.serve")

ROUTES = (
    "/",
    "/healthz",
    "/metrics",
    "/v1/classify",
    "/v1/tasks",
    "/docs",
    "/openapi.json",
    *(STATIC_PREFIX + name for name in STATIC_FILES),
)

#: ``top_k`` is clipped to the task's classes; beyond this it is surely a mistake (and never a 5,000-digit number).
MAX_TOP_K = 1_000_000
_DIGITS = 40  # longer integers are not converted at all (Python refuses over 4,300 digits, slowly)
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


class ApiError(Exception):
    """A client error with its HTTP status and one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())


class BodyTooLarge(Exception):
    pass


class _LongInteger:
    """A JSON integer too long to convert: kept as its length, so that the field it sits in is named."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _without_root(message: str, root: Path) -> str:
    """A loader's message with the server's own folder left out: clients learn the file, not where it lives."""
    for prefix in {str(root), str(Path(root).resolve())}:
        message = message.replace(prefix.rstrip("/") + "/", "")
    return message


def _parse_json_int(text: str):
    return int(text) if len(text) <= _DIGITS else _LongInteger(len(text.lstrip("-")))


def _shown(value) -> str:
    """A client's value in an error line: short, one line, never a long repr of nested data."""
    if isinstance(value, _LongInteger):
        return f"a {value.digits}-digit number"
    if isinstance(value, (list, dict)):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def parse_top_k(value) -> int:
    """``top_k`` from JSON (a number or a string) or a form field (a string): the same number is accepted or
    refused the same way whatever its spelling (``3``, ``"3"``, ``3.0``, ``"3e0"``); NaN, infinities, fractions,
    booleans and numbers outside 1..MAX_TOP_K are refused with one line naming the field."""
    expected = f"top_k must be a whole number from 1 to {MAX_TOP_K:,} (it is clipped to the task's class count)"
    number = value
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            digits = len(text.lstrip("+-"))
            if digits > _DIGITS:
                raise ApiError(400, f"{expected}, got a {digits}-digit number")
            number = int(text)
        elif len(text) <= 400 and _FLOAT_TEXT.fullmatch(text):
            number = float(text)
        else:
            raise ApiError(400, f"{expected}, got {_shown(value)}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{expected}, got {_shown(value)}")
    if isinstance(number, float):
        if not math.isfinite(number) or not number.is_integer():
            raise ApiError(400, f"{expected}, got {_shown(value)}")
        number = int(number)
    if not 1 <= number <= MAX_TOP_K:
        shown = f"a {len(str(abs(number)))}-digit number" if abs(number) >= 10**_DIGITS else str(number)
        raise ApiError(400, f"{expected}, got {shown}")
    return number


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def _route_label(path: str) -> str:
    if path.startswith("/v1/tasks/"):
        return "/v1/tasks/{name}"
    return path if path in ROUTES else "other"


class GuardMiddleware:
    """Pure ASGI: refuses bodies over the limit (413), times every request for /metrics, and answers a request
    cancelled at shutdown (still running when ``--graceful-timeout-s`` ends) with a JSON 503."""

    def __init__(self, app, limit: int, metrics: Metrics, graceful_timeout_s: float = 0.0) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.graceful_timeout_s = graceful_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500, "started": False}
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = len(declared) > 20 or int(declared) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                size = f"{int(declared)} bytes" if len(declared) <= 20 else f"a {len(declared)}-digit number of bytes"
                response = _error(
                    413, f"request body of {size} is over the limit of {self.limit} bytes (--max-request-mb)"
                )
                await response(scope, receive, send)
                self.metrics.request(_route_label(scope["path"]), scope["method"], 413, time.perf_counter() - start)
                return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge()
            return message

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, recording_send)
        except asyncio.CancelledError:
            # The ASGI server cancels requests still running when the graceful-shutdown timeout ends. Answer in
            # the API's error shape instead of letting it send a plain-text 500 and log a traceback; the task
            # ends here either way.
            timeout = self.graceful_timeout_s
            log.warning(
                "%s %s cancelled at shutdown (still running after --graceful-timeout-s %g)",
                scope["method"][:40],
                _route_label(scope["path"]),
                timeout,
            )
            if not status["started"]:
                status["code"] = 503
                message = (
                    f"server is shutting down: the request did not finish within --graceful-timeout-s ({timeout:g} s)"
                )
                await _error(503, message, {"Connection": "close"})(scope, receive, send)
        finally:
            self.metrics.request(
                _route_label(scope["path"]), scope["method"], status["code"], time.perf_counter() - start
            )


class Server:
    """What the endpoints share: settings, backbone, tasks, batcher, metrics, the decoding temp folder."""

    def __init__(self, settings: ServeSettings, backbone, token: str) -> None:
        self.settings = settings
        self.backbone = backbone
        self.token = token
        self.registry = TaskRegistry(settings.adapters, backbone, settings.cache_bytes)
        self.registry.scan()
        if settings.preload:
            self.registry.preload()
        self.transform = eval_transform(backbone)
        self.metrics = Metrics()
        self.batcher = Batcher(backbone, settings.max_batch_size, settings.max_wait_ms / 1000.0, self.metrics.batch)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="rlptune-serve-"))
        self.started = time.time()
        self.closing = False
        self.metrics.gauges.update(
            {
                "rlptune_adapters_registered": ("Adapter folders the server can serve.", lambda: len(self.registry)),
                "rlptune_adapters_loaded": ("Tasks whose scoring tensors are in memory.", lambda: self.registry.cached),
                "rlptune_adapter_cache_bytes": ("Bytes held by loaded tasks.", lambda: self.registry.cached_bytes),
                "rlptune_adapter_loads_total": ("Tasks loaded from disk.", lambda: self.registry.loads),
                "rlptune_adapter_evictions_total": ("Tasks evicted from memory.", lambda: self.registry.evictions),
            }
        )

    # -- images ---------------------------------------------------------------------------------------------
    def decode(self, blobs: list[tuple[str, bytes]]) -> torch.Tensor:
        """Preprocessed images (n, 3, H, W), decoded exactly as ``rlptune predict`` does (same loader, same transform)."""
        tensors = []
        for index, (label, data) in enumerate(blobs, start=1):
            name = f"image {index}" + (f" ({label})" if label else "")
            self.tmpdir.mkdir(mode=0o700, parents=True, exist_ok=True)  # also after a restart or a /tmp cleaner
            fd, path = tempfile.mkstemp(dir=self.tmpdir, suffix=".img")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                try:
                    image = load_image(path, max_pixels=self.settings.max_image_pixels)
                except RlptuneError as exc:
                    message = str(exc).replace(path, name)
                    raise ApiError(
                        413 if "above the limit" in message or "decompression bomb" in message else 400, message
                    ) from None
            finally:
                os.unlink(path)
            tensors.append(self.transform(image))
        return torch.stack(tensors)

    def check_token(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        if not header:
            raise ApiError(401, "this endpoint needs the server's token: send 'Authorization: Bearer <token>'")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise ApiError(403, "wrong token")


async def _read_classify(request: Request, server: Server) -> tuple[str, int, list[tuple[str, bytes]]]:
    """(task, top_k, [(filename, bytes)]) from a multipart form or a JSON body with base64 images."""
    settings = server.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=settings.max_images_per_request + 1, max_fields=16)
        task = form.get("task")
        top_k = form.get("top_k", "5")
        uploads = [v for key in ("image", "images") for v in form.getlist(key)]
        blobs = []
        for item in uploads:
            if isinstance(item, str):
                raise ApiError(400, "form field 'image' must be a file upload, not text")
            blobs.append((item.filename or "", await item.read()))
        if not isinstance(task, str):
            raise ApiError(400, "form field 'task' (the task name) is missing")
    elif ctype == "application/json":
        raw = await request.body()
        try:
            body = json.loads(raw, parse_int=_parse_json_int)
        except RecursionError:
            raise ApiError(400, "request body is not valid JSON (nested too deeply)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(body, dict):
            raise ApiError(400, "JSON body must be an object {task, images: [base64, ...], top_k}")
        task = body.get("task")
        top_k = body.get("top_k", 5)
        images = body.get("images", [body["image"]] if "image" in body else None)
        if not isinstance(task, str):
            raise ApiError(400, "JSON field 'task' (the task name) is missing or not a string")
        if not isinstance(images, list):
            raise ApiError(400, "JSON field 'images' must be a list of base64-encoded image files")
        if len(images) > settings.max_images_per_request:
            raise ApiError(413, f"{len(images)} images in one request, the limit is {settings.max_images_per_request}")
        blobs = []
        for i, text in enumerate(images, start=1):
            if not isinstance(text, str):
                raise ApiError(400, f"images[{i - 1}] must be a base64 string")
            if text.startswith("data:") and "," in text:
                text = text.split(",", 1)[1]
            try:
                blobs.append(("", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                raise ApiError(400, f"images[{i - 1}] is not valid base64") from None
    else:
        raise ApiError(
            415,
            "send multipart/form-data (task, top_k, image files) or application/json (task, top_k, images as base64)",
        )
    top_k = parse_top_k(top_k)
    if not blobs:
        raise ApiError(400, "no image in the request (multipart field 'image', or JSON field 'images')")
    if len(blobs) > settings.max_images_per_request:
        raise ApiError(413, f"{len(blobs)} images in one request, the limit is {settings.max_images_per_request}")
    return task, top_k, blobs


_CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["task", "image"],
                    "properties": {
                        "task": {"type": "string", "description": "task (adapter) name"},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 5},
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["task", "images"],
                    "properties": {
                        "task": {"type": "string"},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 5},
                        "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                    },
                }
            },
        },
    }
}

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["config", "model"],
                    "properties": {
                        "config": {"type": "string", "format": "binary", "description": "rlptune_adapter.json"},
                        "model": {"type": "string", "format": "binary", "description": "rlptune_adapter.safetensors"},
                    },
                }
            }
        },
    }
}


def create_app(settings: ServeSettings, backbone=None, token: str | None = None) -> FastAPI:
    """The ASGI app. Loads the backbone (unless given) and indexes the adapters folder before returning."""
    settings.validate()
    if backbone is None:
        backbone = load_backbone(settings.backbone, device=settings.device)
    if token is None:
        token, _ = settings.resolve_token()
    server = Server(settings, backbone, token)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.closing = False
        await server.batcher.start()
        try:
            yield
        finally:
            server.closing = True
            await server.batcher.stop()
            shutil.rmtree(server.tmpdir, ignore_errors=True)

    app = FastAPI(
        title="rlptune serve",
        version=__version__,
        description="One frozen CLIP, many kilobyte-sized task adapters, batched across tasks.",
        lifespan=lifespan,
        docs_url=None,  # served from packaged files below: FastAPI's own page loads its scripts from a CDN
        redoc_url=None,
    )
    add_docs_routes(app)
    app.state.server = server
    app.add_middleware(
        GuardMiddleware,
        limit=settings.max_request_bytes,
        metrics=server.metrics,
        graceful_timeout_s=float(settings.graceful_timeout_s),
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers)

    @app.exception_handler(RlptuneError)
    async def _rlptune_error(request: Request, exc: RlptuneError):
        return _error(400, str(exc))

    @app.exception_handler(TaskConflict)
    async def _task_conflict(request: Request, exc: TaskConflict):
        return _error(409, str(exc))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        return _error(413, f"request body is over the limit of {settings.max_request_bytes} bytes (--max-request-mb)")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method[:40]} {request.url.path[:200]} (see /docs)"
        elif exc.status_code == 405:
            message = f"method {request.method[:40]} is not allowed on {request.url.path[:200]} (see /docs)"
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return _error(422, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unexpected error on %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
        return _error(500, "internal server error (details are in the server log)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz() -> JSONResponse:
        if server.closing:
            return _error(503, "server is shutting down")
        return JSONResponse(
            {
                "status": "ok",
                "backbone": backbone.identity,
                "tasks": len(server.registry),
                "uptime_s": round(time.time() - server.started, 3),
            }
        )

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus text-format metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/tasks", summary="The tasks (adapters) this server answers")
    async def list_tasks() -> JSONResponse:
        return JSONResponse({"backbone": backbone.identity, "tasks": [i.to_json() for i in server.registry.infos()]})

    @app.get("/v1/tasks/{name}", summary="One task")
    async def get_task(name: str) -> JSONResponse:
        info = server.registry.info(_name(name))
        if info is None:
            raise ApiError(404, f"unknown task {name!r}; GET /v1/tasks lists the tasks")
        return JSONResponse(info.to_json())

    @app.put("/v1/tasks/{name}", summary="Add or replace a task (token)", openapi_extra=_UPLOAD_BODY)
    async def put_task(name: str, request: Request) -> JSONResponse:
        server.check_token(request)
        _name(name)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            raise ApiError(
                415,
                "upload an adapter as multipart/form-data with files 'config' (rlptune_adapter.json) and 'model' (rlptune_adapter.safetensors)",
            )
        form = await request.form(max_files=2, max_fields=4)
        parts = {}
        for key in ("config", "model"):
            item = form.get(key)
            if item is None or isinstance(item, str):
                raise ApiError(
                    400,
                    f"form file {key!r} is missing ({'rlptune_adapter.json' if key == 'config' else 'rlptune_adapter.safetensors'})",
                )
            parts[key] = await item.read()
        info, replaced = await run_in_threadpool(server.registry.install, name, parts["config"], parts["model"])
        return JSONResponse({"task": info.to_json(), "replaced": replaced}, status_code=200 if replaced else 201)

    @app.delete("/v1/tasks/{name}", summary="Remove a task and its adapter folder (token)")
    async def delete_task(name: str, request: Request) -> JSONResponse:
        server.check_token(request)
        _name(name)
        try:
            await run_in_threadpool(server.registry.remove, name)
        except KeyError:
            raise ApiError(404, f"unknown task {name!r}; GET /v1/tasks lists the tasks") from None
        return JSONResponse({"deleted": name})

    @app.post("/v1/classify", summary="Top-k labels of one or more images for one task", openapi_extra=_CLASSIFY_BODY)
    async def classify(request: Request) -> JSONResponse:
        task_name, top_k, blobs = await _read_classify(request, server)
        _name(task_name)
        try:
            task = server.registry.cached_task(task_name) or await run_in_threadpool(server.registry.get, task_name)
        except KeyError:
            raise ApiError(404, f"unknown task {task_name!r}; GET /v1/tasks lists the tasks") from None
        except RlptuneError as exc:
            raise ApiError(
                409, f"task {task_name!r} cannot be loaded: {_without_root(str(exc), server.registry.root)}"
            ) from None
        images = await run_in_threadpool(server.decode, blobs)
        try:
            predictions = await server.batcher.submit(task, images, top_k)
        except ServerClosing:
            raise ApiError(503, "server is shutting down") from None
        except RlptuneError as exc:  # the task's adapter, not the request, is at fault
            raise ApiError(409, str(exc)) from None
        names = [label for label, _ in blobs]
        return JSONResponse(
            {
                "task": task_name,
                "method": task.info.method,
                "predictions": [{**p.to_json(), **({"filename": n} if n else {})} for p, n in zip(predictions, names)],
            }
        )

    return app


def _name(name: str) -> str:
    try:
        return check_task_name(name)
    except RlptuneError as exc:
        raise ApiError(400, str(exc)) from None
