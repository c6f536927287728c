"""The HTTP routes (Starlette): the page, `/v1/classify`, `/v1/explain`, the Open Inference
Protocol under `/v2` (see `v2`), and `/metrics`.

Handlers only read requests and write answers; `service.ModelService` does the work, and
requests are parsed and answers encoded on its protocol threads, never on the event loop.
Every error is a JSON object `{"error": "..."}` with its status: 400 unreadable image or
malformed request, 404 unknown route or model, 408 a request that did not arrive in time
(`guard`), 413 body over `--max-body-mb` (counted while it is read, never buffered first), 415
wrong content type or encoding, 503 queue full, bytes in flight over budget, too many
connections, stopping, the model thread dead, or not ready yet (with `Retry-After`). A client
that went away is logged as 499. Nothing a client sends names a file of the server, and
nothing it is told names one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import ImageError, UsageError
from resnet_cli.render.classify import classify_record
from resnet_cli.serve import v2
from resnet_cli.serve.batching import ModelThreadError, QueueFullError
from resnet_cli.serve.forms import FormError, parse_form
from resnet_cli.serve.guard import CLIENT_CLOSED, Budget, Refusal, refusal_response
from resnet_cli.serve.service import ModelService, Upload, model_facts

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from resnet_cli.serve.metrics import Metrics

RAW_TYPES = ("", "application/octet-stream")
DRAIN_BYTES = 64 << 20  # read (and drop) this much of a too-large body so the client hears 413
DRAIN_SECONDS = 5.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_FORM_FILES = 256
# The page loads nothing from anywhere: its script and style are inline, photos are blob: URLs.
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "img-src blob: data:; connect-src 'self'")


class Problem(Exception):
    """An HTTP error answer: `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.extra = extra or {}


def build_app(service: ModelService, metrics: Metrics, budget: Budget) -> Any:
    """The Starlette application serving `service` (without the guard and the access log
    middleware); queued images are held in `budget`, and only the Host names of
    `allowed_hosts` (see `ServeOptions`) are answered."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import ClientDisconnect
    from starlette.routing import Route

    routes = _Routes(service, metrics, budget)
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    table = [
        Route("/", routes.page), Route("/metrics", routes.metrics_text),
        Route("/v1/classify", routes.classify, methods=["POST"]),
        Route("/v1/explain", routes.explain, methods=["POST"]),
        Route("/v2", routes.server_metadata),
        Route("/v2/health/live", routes.live), Route("/v2/health/ready", routes.ready),
        *[Route(base, routes.model_metadata) for base in (model, versioned)],
        *[Route(base + "/ready", routes.model_ready) for base in (model, versioned)],
        *[Route(base + "/infer", routes.infer, methods=["POST"]) for base in (model, versioned)],
    ]
    hosts = allowed_hosts(service.options.host, service.options.allowed_hosts)
    return Starlette(
        routes=table,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts),
                               www_redirect=False)],
        exception_handlers={Problem: _problem_response, HTTPException: _http_error,
                            Refusal: _refused, ClientDisconnect: _client_gone,
                            ModelThreadError: _model_dead, Exception: _internal_error})


def allowed_hosts(host: str, given: tuple[str, ...] | None) -> tuple[str, ...]:
    """The Host names answered: `given`, else the loopback names when listening on a
    loopback address (a web page elsewhere cannot then reach the server by DNS rebinding),
    else any (`*`)."""
    if given is not None:
        return given
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return LOOPBACK_HOSTS if loopback else ("*",)


def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refusal)
    return refusal_response(exc)  # type: ignore[no-any-return]


def _client_gone(request: Request, exc: Exception) -> Response:
    from starlette.responses import Response

    return Response(status_code=CLIENT_CLOSED)  # nobody reads it; the log shows 499


def _model_dead(request: Request, exc: Exception) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": str(exc)}, status_code=503)


def _problem_response(request: Request, exc: Exception) -> Response:
    from starlette.responses import JSONResponse

    assert isinstance(exc, Problem)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status,
                        headers=headers)


def _http_error(request: Request, exc: Exception) -> Response:
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                        headers=exc.headers)


def _internal_error(request: Request, exc: Exception) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


class _Routes:
    def __init__(self, service: ModelService, metrics: Metrics, budget: Budget) -> None:
        self.service = service
        self.metrics = metrics
        self.budget = budget
        self.limit = int(service.options.max_body_mb * (1 << 20))
        self._page: bytes | None = None

    # ----- the page and the JSON API -------------------------------------------------------

    async def page(self, request: Request) -> Response:
        from starlette.responses import HTMLResponse

        self._check_ready()  # (the page shows facts known once warmed up)
        if self._page is None:
            html = resources.files("resnet_cli.serve").joinpath("page.html").read_text("utf-8")
            facts = json.dumps(model_facts(self.service)).replace("<", "\\u003c")
            self._page = html.replace("/*MODEL*/null", facts).encode("utf-8")
        return HTMLResponse(self._page, headers={"Cache-Control": "no-store",
                                                 "Content-Security-Policy": PAGE_POLICY})

    async def classify(self, request: Request) -> Response:
        self._check_ready()
        top_k = _int_param(request, "top_k")
        uploads = await self._uploads(request)
        with self._admitted(len(uploads)):
            try:
                results = await self.service.classify(uploads, top_k)
            except UsageError as exc:
                raise Problem(400, str(exc)) from None
        records = [classify_record(result) for result in results]
        if not any(result.ok for result in results):
            first = results[0]
            raise Problem(400, f"{first.path}: {first.error}", extra={"results": records})
        return await self._json(records)

    async def explain(self, request: Request) -> Response:
        self._check_ready()
        if not self.service.can_explain:
            raise Problem(404, "heatmaps need a Keras classifier served with --explain.")
        uploads = await self._uploads(request)
        if len(uploads) != 1:
            raise Problem(400, f"send one image to explain; got {len(uploads)}.")
        with self._admitted(1, explain=True):
            try:
                heatmap = await self.service.explain(uploads[0])
            except ImageError as exc:
                raise Problem(400, f"{exc.path}: {exc.reason}") from None
        return await self._json({**asdict(heatmap), "resize": self.service.resize.value})

    async def metrics_text(self, request: Request) -> Response:
        from starlette.responses import Response

        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    # ----- the Open Inference Protocol ----------------------------------------------------

    async def server_metadata(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        from resnet_cli import __version__

        return JSONResponse({"name": "resnet", "version": __version__,
                             "extensions": ["binary_tensor_data", "classification"]})

    async def live(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        alive = self.service.alive
        return JSONResponse({"live": alive}, status_code=200 if alive else 503)

    async def ready(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        ready = self.service.ready.is_set() and self.service.alive
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": "1"})

    async def model_metadata(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        self._model(request)
        self._check_ready()
        return JSONResponse(v2.model_metadata(model_facts(self.service),
                                              labels=self.service.labels))

    async def model_ready(self, request: Request) -> Response:
        self._model(request)
        return await self.ready(request)

    async def infer(self, request: Request) -> Response:
        from starlette.responses import Response

        self._model(request)
        self._check_ready()
        _check_type(request, ("", "application/json", "application/octet-stream"))
        body = await read_body(request, self.limit)
        service = self.service
        try:
            parsed = await service.offload(partial(
                v2.parse_infer_request, body, request.headers.get(v2.HEADER_LENGTH),
                image_size=service.loaded.image_size, output_name=v2.output_name(service.labels),
                max_images=service.options.max_batch_size, max_files=service.options.max_queue))
        except v2.ProtocolError as exc:
            raise Problem(400, str(exc)) from None
        del body
        with self._admitted(parsed.count):
            if parsed.files is not None:
                pixels = await self._decoded(parsed.input_name or v2.FILES_INPUT, parsed.files)
            else:
                pixels = parsed.pixels
            rows = await service.predict(pixels)
        try:
            content, headers = await service.offload(
                lambda: v2.encode_infer_response(parsed, rows, model_name=service.name,
                                                 labels=service.labels))
        except v2.ProtocolError as exc:
            raise Problem(400, str(exc)) from None
        return Response(content, headers=headers)

    async def _json(self, content: Any) -> Response:
        from starlette.responses import Response

        body = await self.service.offload(
            lambda: json.dumps(content, ensure_ascii=False, allow_nan=False,
                               separators=(",", ":")).encode("utf-8"))
        return Response(body, media_type="application/json")

    async def _decoded(self, name: str, files: Sequence[bytes]) -> Any:
        import numpy as np

        decoded = await self.service.decode([Upload(f"{name}[{i}]", data)
                                             for i, data in enumerate(files)])
        arrays = []
        for image in decoded:
            if isinstance(image, ImageError):
                raise Problem(400, f"{image.path}: {image.reason}")
            arrays.append(image)
        return np.stack(arrays)

    # ----- shared checks ------------------------------------------------------------------

    def _check_ready(self) -> None:
        if not self.service.alive:
            raise Problem(503, "the model thread has stopped; the server is exiting.")
        if not self.service.ready.is_set():
            raise Problem(503, "the model is still warming up.", retry_after=1)

    def _model(self, request: Request) -> None:
        name = request.path_params["name"]
        version = request.path_params.get("version", v2.MODEL_VERSION)
        if name != self.service.name or version != v2.MODEL_VERSION:
            raise Problem(404, f"unknown model {name!r} version {version!r}; this server has "
                               f"{self.service.name!r} version {v2.MODEL_VERSION!r}.")

    @contextmanager
    def _admitted(self, count: int, *, explain: bool = False) -> Iterator[None]:
        if count > self.service.options.max_queue:
            raise Problem(413, f"{count} images in one request; this server takes at most "
                               f"{self.service.options.max_queue} (--max-queue).")
        size = self.service.loaded.image_size
        with ExitStack() as stack:
            stack.enter_context(self.budget.holding(count * size * size * 3))
            try:
                stack.enter_context(self.service.admit(count, explain=explain))
            except QueueFullError:
                raise Problem(503, "the queue is full; try again shortly.",
                              retry_after=1) from None
            yield

    async def _uploads(self, request: Request) -> list[Upload]:
        mime = _check_type(request, (*RAW_TYPES, "multipart/form-data"), images=True)
        body = await read_body(request, self.limit)
        if mime != "multipart/form-data":
            if not body:
                raise Problem(400, "the request has no body: send an image file.")
            return [Upload(_disposition_name(request) or "upload", body)]
        try:
            uploads = await self.service.offload(
                lambda: parse_form(body, request.headers["content-type"],
                                   max_parts=MAX_FORM_FILES))
        except FormError as exc:
            raise Problem(400, str(exc)) from None
        if not uploads:
            raise Problem(400, "the form has no file: send one or more images.")
        return uploads


def _check_type(request: Request, allowed: tuple[str, ...], *, images: bool = False) -> str:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Problem(415, f"Content-Encoding {encoding!r} is not supported; send the body "
                           "uncompressed.")
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime in allowed or (images and mime.startswith("image/")):
        return mime
    takes = ", ".join(t for t in allowed if t) + (", image/*" if images else "")
    raise Problem(415, f"Content-Type {mime!r} is not accepted here; send {takes}.")


def _int_param(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise Problem(400, f"{name} must be an integer; got {text!r}.") from None


def _disposition_name(request: Request) -> str | None:
    from python_multipart.multipart import parse_options_header

    header = request.headers.get("content-disposition")
    if not header:
        return None
    _, options = parse_options_header(header)
    name = options.get(b"filename")
    return name.decode("utf-8", "replace") if name else None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes
    (declared, or counted while reading). The rest of a too-large body is read and dropped
    (up to `DRAIN_BYTES`) so that the client, still sending, gets the answer."""
    declared = request.headers.get("content-length")
    too_large = Problem(413, f"the body is larger than {limit / (1 << 20):g} MB "
                             "(--max-body-mb).")
    if declared is not None:
        if not declared.isdigit():
            raise Problem(400, "Content-Length must be a number.")
        if int(declared) > limit:
            if int(declared) <= limit + DRAIN_BYTES:
                await _drain(request.stream())
            raise too_large
    chunks: list[bytes] = []
    size = 0
    stream = request.stream()
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            chunks.clear()
            await _drain(stream)
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(stream: AsyncIterator[bytes]) -> None:
    from starlette.requests import ClientDisconnect

    async def drop() -> None:
        dropped = 0
        async for chunk in stream:
            dropped += len(chunk)
            if dropped > DRAIN_BYTES:
                return

    with suppress(asyncio.TimeoutError, OSError, ClientDisconnect, Refusal):
        await asyncio.wait_for(drop(), DRAIN_SECONDS)  # the 413 is the answer all the same
