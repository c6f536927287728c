"""`resnet serve`."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from resnet_cli.cli.messages import user_errors
from resnet_cli.cli.options import (
    DeviceOpt,
    ImageSizeOpt,
    IncludeTopOpt,
    ModelOpt,
    PoolingOpt,
    PrecisionOpt,
    ResizeOpt,
    WeightsOpt,
)
from resnet_cli.devices import Precision
from resnet_cli.registry import DEFAULT_MODEL
from resnet_cli.serve.options import ServeOptions

_D = ServeOptions  # the defaults, written once there

RequestTimeoutOpt = Annotated[float, typer.Option(
    "--request-timeout", min=0.1, metavar="S",
    help="Seconds for a whole request to arrive, headers and body; slower ones get 408 and "
         "are closed.")]
KeepaliveTimeoutOpt = Annotated[float, typer.Option(
    "--keepalive-timeout", min=0.1, metavar="S",
    help="Seconds an idle keep-alive connection stays open.")]
MaxConnectionsOpt = Annotated[int, typer.Option(
    "--max-connections", min=1, metavar="N",
    help="Open connections past which requests get 503 (health probes excepted).")]
DrainTimeoutOpt = Annotated[float, typer.Option(
    "--drain-timeout", min=0, metavar="S",
    help="On SIGTERM, seconds to answer the requests already received before exiting "
         "(keep it below the pod's grace period, 30 s by default in Kubernetes).")]
MaxInflightOpt = Annotated[float, typer.Option(
    "--max-inflight-mb", min=1, metavar="MB",
    help="Request bodies being read plus queued images, at most; past it, 503 with "
         "Retry-After before more is read.")]
MaxPixelsOpt = Annotated[int, typer.Option(
    "--max-pixels", min=1, metavar="N",
    help="Width x height of an uploaded image, at most; larger ones are refused (400) "
         "before they are decoded.")]
AllowedHostsOpt = Annotated[str | None, typer.Option(
    "--allowed-hosts", metavar="HOST,...",
    help="Host header values to answer (*.example.com patterns, or *); others get 400. "
         "[default: the loopback names when listening on a loopback address (against DNS "
         "rebinding), else any]")]


def _hosts(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    hosts = tuple(h.strip().lower() for h in text.split(",") if h.strip())
    if not hosts:
        raise typer.BadParameter("name at least one host, or *.", param_hint="--allowed-hosts")
    return hosts


def _line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def serve(
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = "imagenet",
    image_size: ImageSizeOpt = None,
    include_top: IncludeTopOpt = True,
    pooling: PoolingOpt = None,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port", "-p", min=0, max=65535, help="Port (0: any free one, shown at start).")
    ] = 8080,
    max_batch_size: Annotated[int, typer.Option(
        "--max-batch-size", min=1, max=1024, metavar="N",
        help="Largest batch; the model is compiled for the powers of two below it and "
             "itself.")] = 32,
    batch_timeout_ms: Annotated[float, typer.Option(
        "--batch-timeout-ms", min=0, metavar="MS",
        help="How long a batch waits for more images after its first one.")] = 5.0,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", min=1, metavar="N",
        help="Images accepted and not yet answered; more get 503 with Retry-After.")] = 256,
    max_body_mb: Annotated[float, typer.Option(
        "--max-body-mb", min=0.001, metavar="MB", help="Larger request bodies get 413.")
    ] = 20.0,
    name: Annotated[str | None, typer.Option(
        "--name", metavar="NAME",
        help="The model's name in the v2 endpoints. [default: the variant, e.g. resnet50]")
    ] = None,
    resize: ResizeOpt = None,
    explain: Annotated[bool, typer.Option(
        "--explain/--no-explain",
        help="Compile Grad-CAM for the page's heatmap switch (Keras classifiers).")] = True,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No access log and no progress bar.")] = False,
    request_timeout: RequestTimeoutOpt = _D.request_timeout,
    keepalive_timeout: KeepaliveTimeoutOpt = _D.keepalive_timeout,
    max_connections: MaxConnectionsOpt = _D.max_connections,
    drain_timeout: DrainTimeoutOpt = _D.drain_timeout,
    max_inflight_mb: MaxInflightOpt = _D.max_inflight_mb,
    max_pixels: MaxPixelsOpt = _D.max_pixels,
    allowed_hosts: AllowedHostsOpt = None,
) -> None:
    """Serve one model over HTTP until stopped: a web page, a JSON API and the Open
    Inference Protocol (KServe v2, tritonclient), with dynamic batching.

    GET / is a page to drop photos on; POST /v1/classify takes an image (or a multipart form
    of several) and answers classify's JSON; /v2/models/NAME/infer takes encoded images
    (BYTES) or uint8 pixels; /v2/health/ready says when it is warmed up; /metrics is
    Prometheus text. Slow, oversized and hostile requests are refused with their status
    (408, 413, 400, 503). SIGTERM or Ctrl-C answers every request already received (for at
    most --drain-timeout seconds), then exits 0; if the model thread dies, the server exits 1.

    Example: resnet serve --weights runs/flowers/model.keras --port 8080
    """
    from resnet_cli.extras import require_module
    from resnet_cli.models import ModelOptions
    from resnet_cli.serve.server import serve as run_server
    from resnet_cli.serve.service import load_served

    with user_errors():
        for module in ("starlette", "uvicorn", "prometheus_client", "python_multipart"):
            require_module(module, extra="serve", purpose="resnet serve")
        options = ServeOptions(host=host, port=port, max_batch_size=max_batch_size,
                               batch_timeout_ms=batch_timeout_ms, max_queue=max_queue,
                               max_body_mb=max_body_mb, name=name, resize=resize,
                               explain=explain, request_timeout=request_timeout,
                               keepalive_timeout=keepalive_timeout,
                               max_connections=max_connections, drain_timeout=drain_timeout,
                               max_inflight_mb=max_inflight_mb, max_pixels=max_pixels,
                               allowed_hosts=_hosts(allowed_hosts))
        loaded, network = load_served(ModelOptions(
            model=model, weights=weights, image_size=image_size, include_top=include_top,
            pooling=pooling, device=device,
            precision=precision.value), progress=not quiet)
        run_server(loaded, options, say=_line, log=None if quiet else _line, network=network)
    # Every accepted request is answered and nothing is left to write: skip the seconds that
    # TensorFlow takes to tear itself down at interpreter exit (a stopping pod's grace period).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
