"""Running the server: the listening socket, uvicorn, warm-up, and the stop signals.

The socket is bound before anything else, so a port in use is one error line. The server
answers `/v2/health/live` at once and `/v2/health/ready` once `ModelService.warm_up` (on a
thread of its own) has compiled and run every batch size. The first SIGTERM or Ctrl-C stops
accepting connections, answers every request already accepted (the queue no longer waits
for company), then the process exits 0; a second signal exits at once.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from resnet_cli.errors import ResnetCliError
from resnet_cli.serve.service import ModelService, ServeOptions, model_facts

Say = Callable[[str], None]


class ServeError(ResnetCliError):
    """The server cannot start (the address is taken, the warm-up failed)."""


def serve(loaded: Any, options: ServeOptions, *, say: Say, log: Say | None,
          network: Any = None) -> None:
    """Serve `loaded` (a LoadedModel; `network`, the Keras network to run, from
    `service.load_served`) until stopped by SIGTERM or Ctrl-C.

    `say` gets the lifecycle lines (listening, ready, stopping); `log` one line per request.

    Raises:
        ServeError: the address cannot be bound, or the warm-up failed.
        UsageError: options that cannot work together.
    """
    from resnet_cli.serve.app import build_app
    from resnet_cli.serve.batching import batch_sizes
    from resnet_cli.serve.metrics import Metrics, RequestLog

    metrics = Metrics(batch_sizes=batch_sizes(options.max_batch_size))
    service = ModelService(loaded, options, metrics, network)
    app = RequestLog(build_app(service, metrics), metrics, log)
    sock = bind(options.host, options.port)
    address = url_of(sock)
    server = _make_server(app, on_stop=lambda: _stopping(service, say))
    failure: list[BaseException] = []

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
            service.close()
    if failure:
        from resnet_cli.errors import first_line

        raise ServeError(f"the warm-up failed: {first_line(failure[0])}") from failure[0]
    say("stopped: every accepted request was answered")


def _stopping(service: ModelService, say: Say) -> None:
    service.hurry()
    say(f"stopping: answering {service.pending} queued images, accepting no more "
        "(a second signal exits at once)")


def _make_server(app: Any, *, on_stop: Callable[[], None]) -> Any:
    """uvicorn's server with resnet serve's signals: the first one stops gracefully (and the
    process exits 0), a second one exits at once."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:
                sys.stderr.write("second signal: exiting now\n")
                sys.stderr.flush()
                os._exit(128 + sig)
            # Not recorded as uvicorn does, which would raise the signal again after shutdown.
            self.should_exit = True
            on_stop()

    return Server(uvicorn.Config(app, lifespan="off", log_config=None, log_level="warning",
                                 access_log=False, server_header=False, timeout_keep_alive=5))


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
