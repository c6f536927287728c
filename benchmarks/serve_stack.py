"""Which HTTP stack `resnet serve` is built on, by measurement: Starlette on uvicorn against
aiohttp's web server and the standard library's ThreadingHTTPServer.

    python benchmarks/serve_stack.py [--requests 2000] [--clients 16]

Each stack serves, in a process of its own, `POST /` that reads the whole body (a 400 kB
photo-sized upload) and answers a small JSON, and `GET /health`. The same client threads time
both. The model costs 100 ms or more per image on a CPU, so the stack matters for what it
costs per request and for what it gives: streaming bodies with a size limit, multipart
parsing, graceful shutdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

BODY = os.urandom(400_000)


def starlette_app(port: int, http: str = "h11") -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def post(request):  # type: ignore[no-untyped-def]
        return JSONResponse({"bytes": len(await request.body())})

    async def health(request):  # type: ignore[no-untyped-def]
        return JSONResponse({"live": True})

    app = Starlette(routes=[Route("/", post, methods=["POST"]), Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                http=http)


def aiohttp_app(port: int) -> None:
    from aiohttp import web

    async def post(request):  # type: ignore[no-untyped-def]
        return web.json_response({"bytes": len(await request.read())})

    async def health(request):  # type: ignore[no-untyped-def]
        return web.json_response({"live": True})

    app = web.Application(client_max_size=64 << 20)
    app.add_routes([web.post("/", post), web.get("/health", health)])
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def stdlib_app(port: int) -> None:
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, payload: dict[str, object]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.answer({"bytes": len(self.rfile.read(int(self.headers["Content-Length"])))})

        def do_GET(self) -> None:
            self.answer({"live": True})

        def log_message(self, *args: object) -> None:
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


STACKS = {"starlette+uvicorn (h11)": starlette_app,
          "starlette+uvicorn (httptools)": lambda port: starlette_app(port, "httptools"),
          "aiohttp": aiohttp_app,
          "stdlib ThreadingHTTPServer": stdlib_app}


def measure(port: int, requests_count: int, clients: int, *, post: bool) -> dict[str, float]:
    local = threading.local()
    latencies: list[float] = []

    def one(_: int) -> None:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        started = time.perf_counter()
        if post:
            answer = local.s.post(f"http://127.0.0.1:{port}/", data=BODY, timeout=30)
        else:
            answer = local.s.get(f"http://127.0.0.1:{port}/health", timeout=30)
        answer.raise_for_status()
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests_count)))
    seconds = time.perf_counter() - started
    return {"requests_per_s": round(requests_count / seconds, 1),
            "median_ms": round(1000 * statistics.median(latencies), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    report: dict[str, object] = {"load_average": os.getloadavg()}
    for n, name in enumerate(STACKS):
        port = 19100 + n
        server = subprocess.Popen([sys.executable, __file__, "serve", name, str(port)])
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, name
                    time.sleep(0.1)
            report[name] = {
                "GET small": measure(port, args.requests, args.clients, post=False),
                "POST 400 kB": measure(port, args.requests // 4, args.clients, post=True)}
        finally:
            server.terminate()
            server.wait()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        STACKS[sys.argv[2]](int(sys.argv[3]))
    else:
        main()
