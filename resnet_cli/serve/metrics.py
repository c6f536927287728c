"""What the server counts (Prometheus text at `GET /metrics`) and its access log.

`prometheus-client` is imported here only, when a server is built. Every request passes
through `RequestLog`, an ASGI middleware that counts it by endpoint and status, times it,
and writes one access-log line; a client that went away before its answer counts as 499.
Endpoints are labelled by their route, never by the raw path, so that hostile paths cannot
grow the number of series.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_V2_MODEL = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?(/ready|/infer)?$")
_FIXED = frozenset({"/", "/metrics", "/v1/classify", "/v1/explain", "/v2", "/v2/health/live",
                    "/v2/health/ready"})


def endpoint_of(path: str) -> str:
    """The route a request path belongs to (`/v2/models/{name}/infer`), or `other`."""
    if path in _FIXED:
        return path
    match = _V2_MODEL.match(path)
    if match:
        return "/v2/models/{name}" + (match.group(1) or "")
    return "other"


class Metrics:
    """The server's Prometheus series, in a registry of its own."""

    def __init__(self, *, batch_sizes: tuple[int, ...]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("resnet_requests", "HTTP requests by endpoint and status.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("resnet_request_duration_seconds",
                                 "Time from request to the end of the response.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("resnet_batch_size", "Images per model run (before padding).",
                                    buckets=batch_sizes, registry=self.registry)
        self.padding = Counter("resnet_padding_images",
                               "Black images added to fill compiled batch sizes.",
                               registry=self.registry)
        self.images = Counter("resnet_images", "Images through the model.",
                              registry=self.registry)
        self.decode_failures = Counter("resnet_decode_failures",
                                       "Uploaded images that could not be read.",
                                       registry=self.registry)
        self.queue_depth = Gauge("resnet_queue_depth",
                                 "Images accepted and not yet answered.", registry=self.registry)
        self.traces = Gauge("resnet_model_traces",
                            "Traces of the compiled model functions (constant once ready).",
                            registry=self.registry)
        self.ready = Gauge("resnet_ready", "1 once the model is loaded and warmed up.",
                           registry=self.registry)

    def watch(self, *, queue_depth: Callable[[], float], traces: Callable[[], float]) -> None:
        """Read the queue depth and the trace count from the server when scraped."""
        self.queue_depth.set_function(queue_depth)
        self.traces.set_function(traces)

    def batch_done(self, images: int, padded_to: int) -> None:
        """Count one model run of `images` images, padded to `padded_to`."""
        self.batch_size.observe(images)
        self.images.inc(images)
        self.padding.inc(padded_to - images)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestLog:
    """ASGI middleware: counts and times every HTTP request, and writes one access-log line
    (`client "METHOD /path" status ms`) to `log` unless it is None."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log: Callable[[str], None] | None
                 ) -> None:
        self.app = app
        self.metrics = metrics
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]  # what the client sees if the app fails before it answers

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            gone = scope.get("resnet.gone")  # (guard.GONE_KEY) the client left first: 499
            if gone is not None and gone():
                status[0] = 499
            seconds = time.perf_counter() - started
            endpoint = endpoint_of(scope.get("path", ""))
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            if self.log is not None:
                self.log(access_line(scope, status[0], seconds))


def access_line(scope: Scope, status: int, seconds: float) -> str:
    """One access-log line; the path is shown as sent, with anything unprintable escaped."""
    client = scope.get("client") or ("-", 0)
    raw = scope.get("raw_path") or scope.get("path", "").encode()
    query = scope.get("query_string") or b""
    target = (raw + (b"?" + query if query else b"")).decode("ascii", "backslashreplace")
    target = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in target)[:300]
    return (f'{client[0]}:{client[1]} "{scope.get("method", "-")} {target}" {status} '
            f"{seconds * 1000:.1f}ms")
