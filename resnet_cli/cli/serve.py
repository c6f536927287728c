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
) -> None:
    """Serve one model over HTTP until stopped: a web page, a JSON API and the Open
    Inference Protocol (KServe v2, tritonclient), with dynamic batching.

    GET / is a page to drop photos on; POST /v1/classify takes an image (or a multipart form
    of several) and answers classify's JSON; /v2/models/NAME/infer takes encoded images
    (BYTES) or uint8 pixels; /v2/health/ready says when it is warmed up; /metrics is
    Prometheus text. SIGTERM or Ctrl-C answers every accepted request, then exits 0.

    Example: resnet serve --weights runs/flowers/model.keras --port 8080
    """
    from resnet_cli.extras import require_module
    from resnet_cli.models import ModelOptions
    from resnet_cli.serve.server import serve as run_server
    from resnet_cli.serve.service import ServeOptions, load_served

    with user_errors():
        for module in ("starlette", "uvicorn", "prometheus_client", "python_multipart"):
            require_module(module, extra="serve", purpose="resnet serve")
        options = ServeOptions(host=host, port=port, max_batch_size=max_batch_size,
                               batch_timeout_ms=batch_timeout_ms, max_queue=max_queue,
                               max_body_mb=max_body_mb, name=name, resize=resize,
                               explain=explain)
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
