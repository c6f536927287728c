"""What a slow, hostile or vanished client may cost the server: time, connections, memory.

* One clock per request, headers and body (`--request-timeout`): `protocol_class` extends
  uvicorn's HTTP/1.1 protocol (h11) with the header half of it (uvicorn times out idle
  keep-alive connections, never a request still arriving) and hands the deadline to `Guard`
  in the ASGI scope, where reading the body obeys the same deadline. Over it: 408, connection
  closed.
* Open connections: past `--max-connections`, requests get 503 (health probes excepted, so
  that an orchestrator still sees a live server), and the connection is closed.
* Bytes in flight: request bodies while they are read and the images queued for the model are
  counted against one `Budget` (`--max-inflight-mb`); a request that does not fit gets 503 with
  Retry-After before more of it is read.
* Stopping: `Guard.drain` cuts every request whose body is still arriving (503, closed); a
  request whose body has arrived is admitted and will be answered.
* A client that goes away before its answer is logged with status 499, as nginx does.

Refusals are `Refusal` exceptions raised from `receive`, answered by the app's handler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from resnet_cli.serve.metrics import ASGIApp, Message, Receive, Scope, Send

DEADLINE_KEY = "resnet.deadline"  # scope key: the loop time by which the request must be in
GONE_KEY = "resnet.gone"  # scope key: a callable, True once the client has disconnected
HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection first


class Refusal(Exception):
    """A request refused by the guard: `status` with `message`; the connection is closed."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class Budget:
    """Bytes the server holds for requests (bodies being read, queued images), at most
    `limit`. Used from the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        """Hold `size` more bytes.

        Raises:
            Refusal: 503, they do not fit.
        """
        if self.used + size > self.limit:
            raise Refusal(503, f"the server holds {self.used / (1 << 20):.1f} MB for requests "
                               f"already (--max-inflight-mb {self.limit / (1 << 20):g}); try "
                               "again shortly.", retry_after=1)
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size

    @contextmanager
    def holding(self, size: int) -> Iterator[None]:
        """Hold `size` bytes while the block runs (Refusal when they do not fit)."""
        self.take(size)
        try:
            yield
        finally:
            self.give(size)


@dataclass
class _Reading:
    """A request whose body is still arriving."""

    cut: bool = False
    scope: Any = None  # the anyio CancelScope awaiting the next chunk, if any
    held: int = 0


@dataclass
class Guard:
    """ASGI middleware: the request deadline on the body, the connection cap, the byte
    budget on bodies, the drain, and status 499 for clients gone.

    `connections` counts the open connections (uvicorn's server state)."""

    app: ASGIApp
    budget: Budget
    max_connections: int
    connections: Callable[[], int] = lambda: 0
    draining: bool = False
    _states: dict[int, _Reading] = field(default_factory=dict)
    _loop: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._loop is None:
            import asyncio

            self._loop = asyncio.get_running_loop()
        try:
            self.check(scope)
        except Refusal as refusal:
            await refusal_response(refusal)(scope, receive, send)
            return
        state = _Reading()
        key = id(state)
        self._states[key] = state
        try:
            await self.app(scope, self._receiver(scope, receive, state), send)
        finally:
            self._states.pop(key, None)
            self.budget.give(state.held)

    def check(self, scope: Scope) -> None:
        """Refuse at the door: too many connections, or the server stopping.

        Raises:
            Refusal: 503.
        """
        if self.draining:
            raise Refusal(503, "the server is stopping.")
        if scope.get("path") in HEALTH_PATHS:
            return
        if self.connections() > self.max_connections:
            raise Refusal(503, f"{self.connections()} connections are open (--max-connections "
                               f"{self.max_connections}); try again shortly.", retry_after=1)

    def _receiver(self, scope: Scope, receive: Receive, state: _Reading) -> Receive:
        import anyio

        deadline = scope.get(DEADLINE_KEY, math.inf)
        declared = _content_length(scope)
        done = [False]

        async def guarded() -> Message:
            if done[0]:
                return await receive()
            if state.cut or self.draining:
                raise Refusal(503, "the server is stopping: the rest of this upload was not "
                                   "read.")
            if declared is not None and not state.held:
                self.budget.take(declared)
                state.held = declared
            with anyio.CancelScope(deadline=deadline) as cancel:
                state.scope = cancel
                message = await receive()
            state.scope = None
            if cancel.cancelled_caught:
                if state.cut:
                    raise Refusal(503, "the server is stopping: the rest of this upload was "
                                       "not read.")
                raise Refusal(408, "the request did not arrive within --request-timeout.")
            if message["type"] == "http.request":
                if declared is None:
                    size = len(message.get("body", b""))
                    self.budget.take(size)
                    state.held += size
                if not message.get("more_body", False):
                    done[0] = True
            return message

        return guarded

    def drain_soon(self) -> None:
        """`drain`, from any thread (a signal handler, the dying model thread)."""
        if self._loop is None:
            self.draining = True  # no request yet: none to cut
        else:
            self._loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        """Stop: cut every request still arriving. Call on the event loop."""
        self.draining = True
        for state in self._states.values():
            state.cut = True
            if state.scope is not None:
                state.scope.cancel()


def refusal_response(refusal: Refusal) -> Any:
    """The answer to a refusal: `{"error": message}`, the connection closed after it."""
    from starlette.responses import JSONResponse

    headers = {"Connection": "close"}
    if refusal.retry_after is not None:
        headers["Retry-After"] = str(refusal.retry_after)
    return JSONResponse({"error": refusal.message}, status_code=refusal.status,
                        headers=headers)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


_TIMEOUT_BODY = b'{"error":"the request did not arrive within --request-timeout."}'
_TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                   b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
                   % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


def protocol_class(request_timeout: float, *, on_timeout: Callable[[Any], None]) -> type:
    """uvicorn's h11 protocol with a deadline on each request: its headers must arrive within
    `request_timeout` of its first byte (of the connection, for the first request), else 408
    and the connection is closed; the deadline goes into the scope for `Guard` to apply to
    the body. `on_timeout(client)` is called for each header timeout."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        _timer: Any = None
        _deadline = math.inf
        _waiting = True  # for the first byte of a request

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._waiting and self._timer is None:
                self._arm()
            self._waiting = False
            cycle = self.cycle
            super().data_received(data)
            self._adopt(cycle)

        def on_response_complete(self) -> None:
            self._waiting = True
            cycle = self.cycle
            super().on_response_complete()  # may start a pipelined request
            self._adopt(cycle)

        def _adopt(self, previous: Any) -> None:
            cycle = self.cycle
            if cycle is not previous and cycle is not None:
                # A request's headers are in: the app reads its body under the same clock.
                # (The task that runs it has not started yet.)
                scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
                scope[DEADLINE_KEY] = self._deadline
                scope[GONE_KEY] = lambda: cycle.disconnected
                self._waiting = False
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.time() + request_timeout
            self._timer = self.loop.call_at(self._deadline, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            idle = self.cycle is None or self.cycle.response_complete  # no answer under way
            if idle and not self.transport.is_closing():
                on_timeout(self.client)
                self.transport.write(_TIMEOUT_ANSWER)
                self.transport.close()

    return DeadlineH11Protocol
