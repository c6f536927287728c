"""How `resnet serve` serves a model: its options and their defaults, written once here (the
command line reads its defaults from this class), importing nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass

from resnet_cli.images import ResizeMode


@dataclass(frozen=True)
class ServeOptions:
    """How `resnet serve` serves a model.

    Attributes:
        batch_timeout_ms: how long a batch waits for company after its first image.
        max_queue: images accepted and not yet answered; more get 503.
        max_body_mb: larger request bodies get 413.
        name: the model's name in the v2 endpoints; default its variant (`resnet50`).
        resize: default what a finetuned model was trained with, else crop.
        explain: compile Grad-CAM for the page's heatmap switch (Keras classifiers only).
        request_timeout: seconds for a whole request to arrive, headers and body (408).
        keepalive_timeout: seconds an idle keep-alive connection stays open.
        max_connections: open connections past which requests get 503.
        drain_timeout: seconds a stop waits for admitted requests before it cuts them.
        max_inflight_mb: request bodies being read plus queued images, at most (503).
        max_pixels: width x height of an upload, at most (400).
        allowed_hosts: Host header values accepted (`*.example.com` patterns); None: the
            loopback names when bound to a loopback address, else any.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_size: int = 32
    batch_timeout_ms: float = 5.0
    max_queue: int = 256
    max_body_mb: float = 20.0
    name: str | None = None
    resize: ResizeMode | None = None
    explain: bool = True
    request_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    max_connections: int = 256
    drain_timeout: float = 20.0
    max_inflight_mb: float = 256.0
    max_pixels: int = 40_000_000
    allowed_hosts: tuple[str, ...] | None = None
