"""Inputs where they live: a real HTTP server and a real S3 API (moto in server mode) on
127.0.0.1, read with the same clients a user has (fsspec: aiohttp, s3fs/botocore), give the
same rows as the same files on disk; a missing or unreachable URL is one error line."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_image

from resnet_cli.cli import app
from resnet_cli.errors import ImageError
from resnet_cli.images import IMAGE_EXTENSIONS, collect_inputs, load_image
from resnet_cli.remote import HTTP_ATTEMPTS, expand_url, is_url, read_url, redact_urls

BUCKET = "photos"


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("served")
    make_image(folder / "a.jpg", (96, 64), seed=1)
    make_image(folder / "b.png", (50, 70), seed=2)
    make_image(folder / "c.jpg", (120, 80), seed=3)
    (folder / "notes.txt").write_text("not an image")
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(photo_dir: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving `photo_dir`."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(photo_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def s3_env(photo_dir: Path) -> Iterator[dict[str, str]]:
    """moto's S3 API in server mode on 127.0.0.1, the photos uploaded with boto3; the
    environment a user would set for an S3-compatible store (AWS_ENDPOINT_URL)."""
    import os

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    for name in ("a.jpg", "b.png", "c.jpg", "notes.txt"):
        client.upload_file(str(photo_dir / name), BUCKET, f"in/{name}")
    client.upload_file(str(photo_dir / "a.jpg"), BUCKET, "in/deeper/d.jpg")
    try:
        yield env
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_is_url_tells_urls_from_paths() -> None:
    assert is_url("s3://b/k.jpg") and is_url("gs://b/") and is_url("https://h/x.png")
    assert not is_url("photos/a.jpg") and not is_url("/abs/a.jpg") and not is_url("C:\\a.jpg")


def test_s3_prefixes_and_patterns_expand_like_folders(s3_env: dict[str, str]) -> None:
    flat = [f"s3://{BUCKET}/in/{n}" for n in ("a.jpg", "b.png", "c.jpg")]
    assert collect_inputs([f"s3://{BUCKET}/in/"]) == flat
    assert collect_inputs([f"s3://{BUCKET}/in"]) == flat  # a prefix without its slash
    assert collect_inputs([f"s3://{BUCKET}/in"], recursive=True) == [
        *flat, f"s3://{BUCKET}/in/deeper/d.jpg"]
    assert collect_inputs([f"s3://{BUCKET}/in/*.jpg"]) == [flat[0], flat[2]]
    assert expand_url(f"s3://{BUCKET}/in/a.jpg", recursive=False,
                      extensions=IMAGE_EXTENSIONS) is None  # one object: read as it is
    empty: list[str] = []
    assert collect_inputs([f"s3://{BUCKET}/in/*.gif", flat[0]], on_empty=empty.append) \
        == [flat[0]] and empty == [f"s3://{BUCKET}/in/*.gif"]


def test_remote_reads_decode_like_local_files(photo_dir: Path, http_root: str,
                                              s3_env: dict[str, str]) -> None:
    for name in ("a.jpg", "b.png"):
        local = load_image(str(photo_dir / name), size=TINY)
        assert np.array_equal(load_image(http_root + name, size=TINY), local)
        assert np.array_equal(load_image(f"s3://{BUCKET}/in/{name}", size=TINY), local)


def test_remote_errors_are_image_errors(http_root: str, s3_env: dict[str, str]) -> None:
    cases = {
        http_root + "missing.jpg": "no such object",
        f"s3://{BUCKET}/in/missing.jpg": "no such object",
        f"http://127.0.0.1:{_closed_port()}/a.jpg": "cannot read: Cannot connect",
        http_root + "notes.txt": "not an image",
    }
    for url, reason in cases.items():
        with pytest.raises(ImageError) as caught:
            load_image(url, size=TINY)
        assert caught.value.path == url and reason in caught.value.reason
    for url in (http_root + "c.jpg", f"s3://{BUCKET}/in/c.jpg"):  # the per-object cap
        with pytest.raises(ImageError, match="too large"):
            read_url(url, limit=1000)
        assert len(read_url(url, limit=10**6)) > 1000


def test_classify_urls_gives_the_rows_of_local_files(runner, tiny_classifier_factory,
                                                     photo_dir: Path, http_root: str,
                                                     s3_env: dict[str, str]) -> None:
    weights, _ = tiny_classifier_factory("resnet50")
    args = ["--weights", str(weights), "--image-size", str(TINY), "-f", "json", "-k", "3",
            "-b", "2", "-q"]
    names = ["a.jpg", "b.png", "c.jpg"]
    local = runner.invoke(app, ["classify", *(str(photo_dir / n) for n in names), *args],
                          catch_exceptions=False)
    assert local.exit_code == 0, local.stderr
    expected = [r["predictions"] for r in json.loads(local.stdout)]
    missing, dead = http_root + "gone.jpg", f"http://127.0.0.1:{_closed_port()}/a.jpg"
    remote = runner.invoke(app, ["classify", http_root + "a.jpg", missing, dead,
                                 f"s3://{BUCKET}/in/b.png", http_root + "c.jpg", *args])
    assert remote.exit_code == 1
    records = json.loads(remote.stdout)
    assert [r["path"] for r in records] == [http_root + "a.jpg", missing, dead,
                                            f"s3://{BUCKET}/in/b.png", http_root + "c.jpg"]
    got = [records[i]["predictions"] for i in (0, 3, 4)]
    for row, want in zip(got, expected, strict=True):
        assert [p["index"] for p in row] == [p["index"] for p in want]
        assert np.allclose([p["probability"] for p in row],
                           [p["probability"] for p in want], atol=1e-6)
    errors = [line for line in remote.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {missing}: no such object",
                      errors[1]] and errors[1].startswith(f"error: {dead}: cannot read:")


def test_extract_from_an_s3_prefix_equals_the_folder(runner, tiny_backbone, photo_dir: Path,
                                                     s3_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    weights, _, _ = tiny_backbone("resnet50")
    args = ["--weights", str(weights), "--image-size", str(TINY), "-b", "2", "-q"]
    local, remote = tmp_path / "local.npz", tmp_path / "remote.npz"
    done = runner.invoke(app, ["extract", str(photo_dir), *args, "-o", str(local)],
                         catch_exceptions=False)
    assert done.exit_code == 0, done.stderr
    done = runner.invoke(app, ["extract", f"s3://{BUCKET}/in/", *args, "-o", str(remote)],
                         catch_exceptions=False)
    assert done.exit_code == 0, done.stderr
    with np.load(local) as want, np.load(remote) as got:
        assert [Path(p).name for p in got["paths"]] == [Path(p).name for p in want["paths"]]
        assert got["paths"][0] == f"s3://{BUCKET}/in/a.jpg"
        assert np.abs(got["features"] - want["features"]).max() <= 1e-5


# ----- a server that misbehaves on purpose: trickled bodies, failures, cut-short bodies -----

class _HostileHandler(http.server.BaseHTTPRequestHandler):
    """Serves the files of `root` under routes that misbehave:
    /trickle/NAME  the body in 3 parts with pauses (one read() gets only the first part);
    /flaky/NAME    503 for the first 2 requests of each NAME, then the file;
    /reset/NAME    the first request's connection closed without an answer, then the file;
    /always/NAME   500 every time;
    /short/NAME    a Content-Length of the whole file, half of it sent, then closed.
    Each request is counted in `hits` by path."""

    root: Path
    hits: dict[str, int]
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.lock:
            self.hits[path] = count = self.hits.get(path, 0) + 1
        route, _, name = path.strip("/").partition("/")
        data = (self.root / name).read_bytes()
        if route == "always" or (route == "flaky" and count <= 2):
            self.send_error(500 if route == "always" else 503)
            return
        if route == "reset" and count == 1:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if route == "short":
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        parts = [data[:len(data) // 3], data[len(data) // 3:2 * len(data) // 3],
                 data[2 * len(data) // 3:]] if route == "trickle" else [data]
        for part in parts:
            self.wfile.write(part)
            self.wfile.flush()
            if route == "trickle":
                time.sleep(0.05)


@pytest.fixture(scope="module")
def hostile(photo_dir: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """The misbehaving server on 127.0.0.1 (one for the module): (base URL, request counts)."""
    make_image(photo_dir / "big.png", (400, 300), seed=9)  # ~360 kB: many TCP segments
    hits: dict[str, int] = {}
    handler = type("Handler", (_HostileHandler,), {"root": photo_dir, "hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", hits
    server.shutdown()
    server.server_close()


def test_a_url_is_read_to_the_end_of_its_body(hostile, photo_dir: Path) -> None:
    base, _ = hostile
    want = (photo_dir / "big.png").read_bytes()
    assert read_url(base + "trickle/big.png") == want
    names = ["big.png", "a.jpg", "b.png", "c.jpg"] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:  # 8 readers at once, as --ray's tasks
        got = list(pool.map(lambda n: read_url(base + "trickle/" + n), names))
    assert got == [(photo_dir / n).read_bytes() for n in names]


def test_transient_http_failures_are_retried(hostile, photo_dir: Path) -> None:
    base, hits = hostile
    want = (photo_dir / "a.jpg").read_bytes()
    assert read_url(base + "flaky/a.jpg") == want
    assert hits["/flaky/a.jpg"] == 3  # two 503s, then the file
    assert read_url(base + "reset/a.jpg") == want
    assert hits["/reset/a.jpg"] == 2
    started = time.monotonic()
    with pytest.raises(ImageError) as caught:
        read_url(base + "always/a.jpg")
    assert time.monotonic() - started < 15  # bounded: 3 backoffs of at most 1 s each
    assert hits["/always/a.jpg"] == HTTP_ATTEMPTS
    assert caught.value.reason.startswith("HTTP 500") and "tried 4 times" in caught.value.reason


def test_a_body_cut_short_fails_that_input(hostile, photo_dir: Path) -> None:
    base, hits = hostile
    size = (photo_dir / "big.png").stat().st_size
    with pytest.raises(ImageError) as caught:
        read_url(base + "short/big.png")
    assert hits["/short/big.png"] == HTTP_ATTEMPTS  # retried, like a dropped connection
    assert "tried 4 times" in caught.value.reason
    assert caught.value.reason == f"cut short: got {size // 2:,} of {size:,} bytes (tried 4 times)"


def test_credentials_in_urls_never_reach_error_or_log_lines(runner, hostile,
                                                           tiny_classifier_factory) -> None:
    base, _ = hostile
    weights, _ = tiny_classifier_factory("resnet50")
    secret = base.replace("http://", "http://alice:hunter2@") + \
        "always/a.jpg?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef42"
    result = runner.invoke(app, ["-v", "classify", secret, base + "flaky/b.png", "--weights",
                                 str(weights), "--image-size", str(TINY), "-f", "json", "-q"])
    assert result.exit_code == 1
    for leaked in ("alice", "hunter2", "AKIAEXAMPLE", "deadbeef42"):
        assert leaked not in result.stderr
    masked = base.replace("http://", "http://***@") + \
        "always/a.jpg?X-Amz-Credential=***&X-Amz-Signature=***"
    assert f"error: {masked}: HTTP 500" in result.stderr
    assert "retrying in" in result.stderr  # the retries were logged (-v), masked too
    assert redact_urls("gs://b/k.jpg: no such object") == "gs://b/k.jpg: no such object"
