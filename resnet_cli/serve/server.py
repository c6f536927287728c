"""Running the server: the listening socket, uvicorn, warm-up, and the stop signals.

The socket is bound before anything else, so a port in use is one error line. The server
answers `/v2/health/live` at once and `/v2/health/ready` once `ModelService.warm_up` (on a
thread of its own) has compiled and run every batch size. The first SIGTERM or Ctrl-C stops
accepting connections, cuts the uploads still arriving (`guard.Guard.drain`), answers every
request already admitted (the queue no longer waits for company) for at most
`--drain-timeout` seconds, then the process exits 0; a second signal exits at once. If the
model thread dies, the server stops the same way and `serve` raises `ServeError` (exit 1), so
that an orchestrator restarts it.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, cast

from resnet_cli.errors import ResnetCliError
from resnet_cli.serve.options import ServeOptions
from resnet_cli.serve.service import ModelService, model_facts

Say = Callable[[str], None]


class ServeError(ResnetCliError):
    """The server cannot start (the address is taken, the warm-up failed) or its model thread
    died."""


def serve(loaded: Any, options: ServeOptions, *, say: Say, log: Say | None,
          network: Any = None) -> None:
    """Serve `loaded` (a LoadedModel; `network`, the Keras network to run, from
    `service.load_served`) until stopped by SIGTERM or Ctrl-C.

    `say` gets the lifecycle lines (listening, ready, stopping); `log` one line per request.

    Raises:
        ServeError: the address cannot be bound, the warm-up failed, or the model thread
            died.
        UsageError: options that cannot work together.
    """
    from resnet_cli.serve.app import build_app
    from resnet_cli.serve.batching import batch_sizes
    from resnet_cli.serve.guard import Budget, Guard
    from resnet_cli.serve.metrics import Metrics, RequestLog

    metrics = Metrics(batch_sizes=batch_sizes(options.max_batch_size))
    service = ModelService(loaded, options, metrics, network)
    budget = Budget(int(options.max_inflight_mb * (1 << 20)))
    guard = Guard(build_app(service, metrics, budget), budget, options.max_connections)
    sock = bind(options.host, options.port)
    address = url_of(sock)
    server = _make_server(RequestLog(guard, metrics, log), options, metrics, log,
                          on_stop=lambda: _stopping(service, guard, say))
    guard.connections = lambda: len(server.server_state.connections)
    failure: list[BaseException] = []
    died: list[BaseException] = []

    def on_death(exc: BaseException) -> None:
        died.append(exc)
        say(f"the model thread died ({exc!r}): stopping, exit code 1")
        server.should_exit = True
        _stopping(service, guard, say)

    service.on_death = on_death

    def warm_up() -> None:
        try:
            seconds = service.warm_up()
        except Exception as exc:
            failure.append(exc)
            server.should_exit = True
            return
        say(ready_line(service, address, seconds))

    say(f"listening on {address}; warming up {service.name} "
        f"(batch sizes {', '.join(map(str, service.sizes))})")
    warming = threading.Thread(target=warm_up, name="warm-up", daemon=True)
    warming.start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        warming.join()  # stopped while warming up: let TensorFlow finish before exiting
        if service.ready.is_set():
            service.close(timeout=options.drain_timeout)
    _report_end(failure, died, len(server.server_state.tasks), options, say)


def _report_end(failure: list[BaseException], died: list[BaseException], left: int,
                options: ServeOptions, say: Say) -> None:
    """The last line of a server that stopped, or the error of one that failed."""
    if failure:
        from resnet_cli.errors import first_line

        raise ServeError(f"the warm-up failed: {first_line(failure[0])}") from failure[0]
    if died:
        raise ServeError(f"the model thread died: {died[0]!r}")
    say("stopped: every accepted request was answered" if not left else
        f"stopped: {left} requests were cut at --drain-timeout {options.drain_timeout:g} s")


def _stopping(service: ModelService, guard: Any, say: Say) -> None:
    """The first stop signal (or a dead model thread): no more waiting for company in the
    queue, uploads still arriving cut (on the event loop, from wherever this is called)."""
    service.hurry()
    guard.drain_soon()
    say(f"stopping: answering {service.pending} queued images, accepting no more "
        "(a second signal exits at once)")


def _make_server(app: Any, options: ServeOptions, metrics: Any, log: Say | None, *,
                 on_stop: Callable[[], None]) -> Any:
    """uvicorn's server with resnet serve's signals (the first one stops gracefully and the
    process exits 0, a second one exits at once), the request deadline of `guard`, the idle
    keep-alive limit and the drain deadline."""
    import uvicorn

    from resnet_cli.serve.guard import protocol_class

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:
                sys.stderr.write("second signal: exiting now\n")
                sys.stderr.flush()
                os._exit(128 + sig)
            # Not recorded as uvicorn does, which would raise the signal again after shutdown.
            self.should_exit = True
            on_stop()

    def timed_out(client: Any) -> None:
        metrics.requests.labels("other", "408").inc()
        if log is not None:
            where = f"{client[0]}:{client[1]}" if client else "-:0"
            log(f'{where} "- -" 408 {options.request_timeout * 1000:.1f}ms (headers not '
                "received in time)")

    return Server(uvicorn.Config(
        app, lifespan="off", log_config=None, log_level="warning", access_log=False,
        server_header=False, http=protocol_class(options.request_timeout, on_timeout=timed_out),
        # (typed int in uvicorn; both go to asyncio, which takes float seconds)
        timeout_keep_alive=cast(int, options.keepalive_timeout),
        timeout_graceful_shutdown=cast(int, options.drain_timeout)))


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), listening; port 0 takes a free one.

    Raises:
        ServeError: the address cannot be resolved or bound.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """`http://host:port` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ready_line(service: ModelService, address: str, seconds: float) -> str:
    """The line printed once the model is ready: address, model and its card."""
    facts = model_facts(service)
    what = (f"{facts['classes']} classes" if facts["classes"] is not None else
            f"features {tuple(facts['output_shape'])}")
    return (f"ready in {seconds:.1f} s at {address}/ : {service.name} = {facts['source']} "
            f"[card: {facts['base_model']}, {facts['image_size']}x{facts['image_size']} "
            f"{facts['resize']}, {facts['preprocess_mode']} preprocessing, {what}] "
            f"{facts['runtime']} {facts['precision']} on {facts['device']}; "
            f"POST /v1/classify or /v2/models/{service.name}/infer")
