"""`resnet serve` against hostile and slow clients: a real server process, raw sockets.

One server with short limits (--request-timeout 2, --max-connections 40, --max-inflight-mb 2,
...) takes every case in turn; a thread probes its health throughout, and the last test checks
what the whole run left: no 5xx but 503, no traceback, health answered within 1 s, memory.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import TINY
from serve_process import CHELSEA, Server, start_server, stop

TIMEOUT = 2.0  # --request-timeout
KEEPALIVE = 1.0
V2 = "/v2/models/tiny/infer"


@pytest.fixture(scope="module")
def weights(tiny_classifier_factory) -> Path:  # type: ignore[no-untyped-def]
    return tiny_classifier_factory("resnet50")[0]


class Probe:
    """Asks /v2/health/live every 0.2 s on a fresh connection; keeps the slowest answer."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.slowest = 0.0
        self.failures: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            started = time.monotonic()
            try:
                status = requests.get(self.server.url + "/v2/health/live", timeout=5).status_code
            except requests.RequestException as exc:
                self.failures.append(type(exc).__name__)
                continue
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.count += 1
            if status != 200:
                self.failures.append(str(status))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def server(weights: Path) -> Iterator[Server]:
    running = start_server(weights, "--name", "tiny", "--no-explain", "--max-batch-size", "4",
                           "--max-queue", "8", "--max-body-mb", "1", "--request-timeout",
                           str(TIMEOUT), "--keepalive-timeout", str(KEEPALIVE),
                           "--max-connections", "40", "--max-inflight-mb", "2",
                           "--max-pixels", "250000", "--drain-timeout", "5")
    try:
        running.wait_ready()
        yield running
    finally:
        stop(running)


@pytest.fixture(scope="module")
def probe(server: Server) -> Iterator[Probe]:
    watching = Probe(server)
    yield watching
    watching.stop()


@pytest.fixture(scope="module")
def rss_ready(server: Server) -> int:
    for _ in range(3):  # warm every path once before the memory is taken as the baseline
        requests.post(server.url + "/v1/classify", data=CHELSEA.read_bytes(), timeout=30)
    return rss_kb(server.process.pid)


def rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def request_bytes(method: str, path: str, body: bytes = b"", *, host: str = "127.0.0.1",
                  headers: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode() + body


def answer_of(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response: (status, headers, body); status 0 if closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return 0, {}, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("content-length", 0)):
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def exchange(server: Server, data: bytes, *, timeout: float = 30) -> tuple[int, dict[str, str],
                                                                            dict]:  # type: ignore[type-arg]
    with socket.create_connection(address(server), timeout=timeout) as conn:
        conn.sendall(data)
        status, headers, body = answer_of(conn)
    if headers.get("content-type") == "application/json":
        return status, headers, json.loads(body)
    return status, headers, {"text": body.decode("utf-8", "replace")}


def post_json(server: Server, value: object) -> tuple[int, str]:
    status, _, body = exchange(server, request_bytes(
        "POST", V2, json.dumps(value).encode(), headers="Content-Type: application/json\r\n"))
    return status, body.get("error", "")


# ----- first, what needs no server (and the exported files, built before the server
# starts: a test process busy exporting would be a slow client of its own) ----------

def test_public_source_keeps_file_names_only() -> None:
    from resnet_cli.card import public_source

    assert public_source("resnet50 (/srv/models/w.weights.h5)") == "resnet50 (w.weights.h5)"
    assert public_source("/srv/runs/a b/model.keras") == "model.keras"
    assert public_source("C:\\models\\m.tflite") == "m.tflite"
    assert public_source("resnet50 (ImageNet weights)") == "resnet50 (ImageNet weights)"


def test_exported_files_carry_no_path(exported: dict[str, Path], export_source) -> None:  # type: ignore[no-untyped-def]
    folder = str(export_source[0].parent).encode()
    name = export_source[0].name.encode()
    for fmt, path in exported.items():
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        contents = b"".join(p.read_bytes() for p in files)
        assert folder not in contents, fmt
        assert name in contents, fmt  # the card still says which weights file it came from


def test_forms_give_each_file_as_a_view_of_the_body() -> None:
    import os

    from urllib3 import encode_multipart_formdata

    from resnet_cli.serve.forms import FormError, parse_form

    # Random bytes hold CR LF and dashes that begin to look like the boundary.
    files = [os.urandom(200_000) + b"\r\n--" + os.urandom(5000) for _ in range(3)]
    fields = [("note", "just text"), *[(f"f{i}", (f"photo{i}.jpg", data, "image/jpeg"))
                                      for i, data in enumerate(files)]]
    body, content_type = encode_multipart_formdata(fields)
    uploads = parse_form(body, content_type, max_parts=8)
    assert [u.name for u in uploads] == ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
    assert [bytes(u.data) for u in uploads] == files
    assert all(isinstance(u.data, memoryview) and u.data.obj is body for u in uploads)
    with pytest.raises(FormError, match="more than 2 parts"):
        parse_form(body, content_type, max_parts=2)
    with pytest.raises(FormError, match="no boundary"):
        parse_form(body, "multipart/form-data", max_parts=8)


# ----- every request bounded before it is decoded ----------------------------------------

def pixels_tensor(data: list, shape: list[int] | None = None) -> dict:  # type: ignore[type-arg]
    return {"name": "images", "datatype": "UINT8", "shape": shape or [1, TINY, TINY, 3],
            "data": data}


def test_v2_requests_are_bounded_before_decoding(server: Server, probe: Probe,
                                                 rss_ready: int) -> None:
    started = time.monotonic()
    status, _, body = exchange(server, request_bytes("POST", V2, b"[" * 50000))
    assert (status, body["error"]) == (400, "the request's JSON is nested too deeply.")
    good = [7] * (TINY * TINY * 3)
    outputs = [{"name": "probabilities"}] * 3000
    status, error = post_json(server, {"inputs": [pixels_tensor(good)], "outputs": outputs})
    assert status == 400 and "at most once" in error
    for bad, reason in ((1.7, "integers"), (True, "integers"), ("7", "integers"),
                        (256, "between 0 and 255"), (-1, "between 0 and 255")):
        status, error = post_json(server, {"inputs": [pixels_tensor([bad, *good[1:]])]})
        assert (status, reason in error) == (400, True), (bad, error)
    status, error = post_json(server, {"inputs": [pixels_tensor([[[[[0]]]]])]})
    assert status == 400 and "nested deeper" in error
    status, error = post_json(server, {"inputs": [pixels_tensor(good)],
                                       "parameters": {"binary_data_output": "yes"}})
    assert (status, error) == (400, 'binary_data_output must be true or false; got "yes".')
    # Counts from the declared shape, checked before any data is read.
    status, error = post_json(server, {"inputs": [pixels_tensor([], [5, TINY, TINY, 3])]})
    assert status == 400 and "at most 4 at once (--max-batch-size)" in error
    status, error = post_json(server, {"inputs": [{
        "name": "image_files", "datatype": "BYTES", "shape": [10**9], "data": ["AAAA"]}]})
    assert status == 400 and "at most 8 (--max-queue)" in error
    header = json.dumps({"inputs": [{"name": "image_files", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 10}}]}).encode()
    two = b"\x01\0\0\0a" * 2  # two elements where the shape says one
    status, _, body = exchange(server, request_bytes(
        "POST", V2, header + two, headers=f"Inference-Header-Content-Length: {len(header)}\r\n"))
    assert status == 400 and "more than 1 elements" in body["error"]
    assert time.monotonic() - started < 30
    status, error = post_json(server, {"inputs": [pixels_tensor(good)]})
    assert status == 200, error


def test_upload_pixels_are_capped(server: Server, probe: Probe, tmp_path: Path) -> None:
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (600, 600), (200, 10, 10)).save(big)  # 360,000 pixels > --max-pixels
    answer = requests.post(server.url + "/v1/classify", files=[
        ("a", ("big.png", big.read_bytes(), "image/png")),
        ("b", ("chelsea.jpg", CHELSEA.read_bytes(), "image/jpeg"))], timeout=30)
    assert answer.status_code == 200
    refused, fine = answer.json()
    assert refused == {"path": "big.png", "error": "too many pixels (600x600; at most 250,000 "
                                                  "are decoded here)"}
    assert len(fine["predictions"]) == 5
    alone = requests.post(server.url + "/v1/classify", data=big.read_bytes(), timeout=30)
    assert alone.status_code == 400 and "too many pixels" in alone.json()["error"]


# ----- slow clients -----------------------------------------------------------------------

def test_slow_clients_get_408_and_are_closed(server: Server, probe: Probe) -> None:
    where = address(server)
    head = b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
    slow = {"headers": [], "body": [], "nothing": []}  # type: ignore[var-annotated]
    for kind, count in (("body", 10), ("nothing", 10), ("headers", 30)):  # body: under the cap
        for _ in range(count):
            conn = socket.create_connection(where, timeout=TIMEOUT + 10)
            if kind == "headers":
                conn.sendall(head)  # and never the blank line
            elif kind == "body":
                conn.sendall(head + b"Content-Length: 50000\r\n\r\n" + b"\xff\xd8")
            slow[kind].append(conn)
        if kind == "body":
            time.sleep(0.5)  # admitted while under the cap, before the others connect
    opened = time.monotonic()
    try:
        time.sleep(0.5)
        # 50 connections are open, over --max-connections 40: work is refused at the door ...
        status, headers, body = exchange(server, request_bytes(
            "POST", "/v1/classify", CHELSEA.read_bytes()))
        assert status == 503 and "--max-connections 40" in body["error"]
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        # ... health probes are not (the probe thread keeps asking, too)
        assert requests.get(server.url + "/v2/health/ready", timeout=1).status_code == 200
        answers = {}
        for kind, conns in slow.items():
            answers[kind] = [answer_of(conn) for conn in conns]
        closed_after = time.monotonic() - opened
    finally:
        for conns in slow.values():
            for conn in conns:
                conn.close()
    assert closed_after < TIMEOUT + 5
    for kind, got in answers.items():
        assert {status for status, _, _ in got} == {408}, kind
    assert b"--request-timeout" in answers["body"][0][2]
    assert answers["body"][0][1]["connection"] == "close"
    # An idle keep-alive connection is closed after --keepalive-timeout.
    with socket.create_connection(where, timeout=KEEPALIVE + 10) as conn:
        conn.sendall(request_bytes("GET", "/v2/health/live"))
        assert answer_of(conn)[0] == 200
        waited = time.monotonic()
        assert conn.recv(10) == b""
        assert time.monotonic() - waited < KEEPALIVE + 4
    answer = requests.post(server.url + "/v1/classify", data=CHELSEA.read_bytes(), timeout=30)
    assert answer.status_code == 200
    assert any(re.search(r'"POST /v1/classify" 408 ', line) for line in server.lines)


def test_bytes_in_flight_past_the_budget_get_503_before_reading(server: Server,
                                                                probe: Probe) -> None:
    where = address(server)
    head = (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 900000\r\n\r\n")
    held = []
    try:
        for _ in range(2):  # 2 x 900 kB of --max-inflight-mb 2 held while they arrive
            conn = socket.create_connection(where, timeout=30)
            conn.sendall(head + b"\xff" * 1000)
            held.append(conn)
            time.sleep(0.3)
        with socket.create_connection(where, timeout=30) as third:
            third.sendall(head)
            status, headers, body = answer_of(third)
        assert status == 503 and headers["retry-after"] == "1"
        assert "--max-inflight-mb 2" in json.loads(body)["error"]
    finally:
        for conn in held:
            conn.close()


def test_a_client_gone_mid_body_is_one_499_line(server: Server, probe: Probe) -> None:
    before = server.metric_or_zero("resnet_requests_total", endpoint="/v1/classify",
                                   status="499")
    with socket.create_connection(address(server), timeout=30) as conn:
        conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"image/jpeg\r\nContent-Length: 100000\r\n\r\n" + b"\xff" * 5000)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while server.metric_or_zero("resnet_requests_total", endpoint="/v1/classify",
                                status="499") < before + 1:
        assert time.monotonic() < deadline, "".join(server.lines[-5:])
        time.sleep(0.1)
    assert any(re.search(r'"POST /v1/classify" 499 ', line) for line in server.lines)


# ----- what clients and files may learn ---------------------------------------------------

def test_loopback_server_refuses_other_host_names(server: Server, probe: Probe) -> None:
    status, _, body = exchange(server, request_bytes("GET", "/v2/models/tiny",
                                                     host="rebind.example.com"))
    assert (status, body) == (400, {"text": "Invalid host header"})  # (Starlette's words)
    port = address(server)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert exchange(server, request_bytes("GET", "/v2/health/ready", host=host))[0] == 200


def test_no_server_path_is_served(server: Server, probe: Probe, weights: Path) -> None:
    meta = requests.get(server.url + "/v2/models/tiny", timeout=10)
    assert meta.json()["card"]["source"] == f"resnet50 ({weights.name})"
    page = requests.get(server.url + "/", timeout=10).text
    ready = next(line for line in server.lines if line.startswith("ready in"))
    for text in (meta.text, page, ready):
        assert str(weights.parent) not in text


# ----- the whole run ----------------------------------------------------------------------

def test_after_all_cases_nothing_failed_and_memory_held(server: Server, probe: Probe,
                                                        rss_ready: int) -> None:
    text = requests.get(server.url + "/metrics", timeout=10).text
    statuses = re.findall(r'^resnet_requests_total\{endpoint="[^"]*",status="(\d+)"\}',
                          text, re.MULTILINE)
    assert {"400", "408", "499", "503"} <= set(statuses)
    assert not [s for s in statuses if s.startswith("5") and s != "503"]
    stderr = "".join(server.lines)
    assert "Traceback" not in stderr and " 500 " not in stderr
    assert probe.count >= 10 and probe.failures == []
    assert probe.slowest < 1.0
    assert rss_kb(server.process.pid) <= 1.3 * rss_ready
