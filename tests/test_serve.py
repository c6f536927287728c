"""`resnet serve`: a real server process on a free loopback port, real HTTP requests.

One server (a tiny ResNet50 at 64 px, weights written by the test) answers the endpoint,
protocol, error, metrics and browser tests. Answers are compared with `resnet classify` on the
same files and the same weights.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import TINY
from serve_process import CHELSEA, COFFEE, Server, start_server, stop
from typer.testing import CliRunner

from resnet_cli.cli import app


@pytest.fixture(scope="module")
def weights(tiny_classifier_factory) -> Path:  # type: ignore[no-untyped-def]
    return tiny_classifier_factory("resnet50")[0]


@pytest.fixture(scope="module")
def server(weights: Path) -> Iterator[Server]:
    running = start_server(weights, "--max-batch-size", "4", "--max-queue", "16",
                           "--max-body-mb", "1", "--name", "tiny")
    try:
        running.wait_ready()
        yield running
    finally:
        stop(running)


@pytest.fixture(scope="module")
def classified(weights: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    """`resnet classify` of chelsea.jpg and coffee.jpg, top 5, by file name."""
    done = CliRunner().invoke(app, ["classify", str(CHELSEA), str(COFFEE), "--weights",
                                    str(weights), "--image-size", str(TINY), "-k", "5",
                                    "-f", "json", "-q"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return {Path(r["path"]).name: r for r in json.loads(done.stdout)}


def assert_same(answer: dict, expected: dict) -> None:  # type: ignore[type-arg]
    got, want = answer["predictions"], expected["predictions"]
    assert [p["index"] for p in got] == [p["index"] for p in want]
    assert [p["label"] for p in got] == [p["label"] for p in want]
    np.testing.assert_allclose([p["probability"] for p in got],
                               [p["probability"] for p in want], rtol=1e-4, atol=1e-6)


def pixels(path: Path) -> np.ndarray:
    from resnet_cli.images import load_image

    return load_image(str(path), size=TINY)


# ----- /v1/classify -------------------------------------------------------------------------

def test_classify_raw_body_matches_resnet_classify(server: Server, classified) -> None:  # type: ignore[no-untyped-def]
    answer = requests.post(server.url + "/v1/classify", data=CHELSEA.read_bytes(),
                           headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert answer.status_code == 200, answer.text
    (record,) = answer.json()
    assert record["path"] == "upload"
    assert_same(record, classified["chelsea.jpg"])


def test_classify_multipart_names_each_upload(server: Server, classified) -> None:  # type: ignore[no-untyped-def]
    files = [("photos", ("chelsea.jpg", CHELSEA.read_bytes(), "image/jpeg")),
             ("other", ("coffee.jpg", COFFEE.read_bytes(), "application/octet-stream")),
             ("notes", ("notes.txt", b"not an image", "text/plain"))]
    answer = requests.post(server.url + "/v1/classify?top_k=3", files=files, timeout=30)
    assert answer.status_code == 200, answer.text
    chelsea, coffee, notes = answer.json()
    assert [chelsea["path"], coffee["path"], notes["path"]] == \
        ["chelsea.jpg", "coffee.jpg", "notes.txt"]
    assert len(chelsea["predictions"]) == 3
    expected = {name: {"predictions": r["predictions"][:3]} for name, r in classified.items()}
    assert_same(chelsea, expected["chelsea.jpg"])
    assert_same(coffee, expected["coffee.jpg"])
    assert notes == {"path": "notes.txt", "error": "not an image Pillow can read"}


# ----- the Open Inference Protocol ----------------------------------------------------------

def test_v2_health_and_metadata(server: Server) -> None:
    assert requests.get(server.url + "/v2/health/live", timeout=10).status_code == 200
    assert requests.get(server.url + "/v2/models/tiny/ready", timeout=10).status_code == 200
    meta = requests.get(server.url + "/v2/models/tiny", timeout=10).json()
    assert meta["name"] == "tiny"
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "images": ("UINT8", [-1, TINY, TINY, 3]), "image_files": ("BYTES", [-1])}
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32",
                                "shape": [-1, 1000]}]
    assert meta["labels"][281] == "tabby"
    assert meta["card"]["batch_sizes"] == [1, 2, 4]
    missing = requests.get(server.url + "/v2/models/resnet50", timeout=10)
    assert missing.status_code == 404 and "tiny" in missing.json()["error"]
    assert requests.get(server.url + "/v2/models/tiny/versions/2/ready",
                        timeout=10).status_code == 404


def test_v2_json_bytes_and_uint8(server: Server, classified) -> None:  # type: ignore[no-untyped-def]
    encoded = base64.b64encode(CHELSEA.read_bytes()).decode()
    files = {"id": "7", "inputs": [{"name": "image_files", "shape": [1], "datatype": "BYTES",
                                     "data": [encoded]}]}
    answer = requests.post(server.url + "/v2/models/tiny/infer", json=files, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "7" and body["model_name"] == "tiny"
    (output,) = body["outputs"]
    assert output["shape"] == [1, 1000] and output["datatype"] == "FP32"
    probs = np.array(output["data"])
    top = [p["index"] for p in classified["chelsea.jpg"]["predictions"]]
    assert list(np.argsort(-probs)[:5]) == top

    px = np.stack([pixels(CHELSEA), pixels(COFFEE)])
    tensor = {"inputs": [{"name": "images", "shape": list(px.shape), "datatype": "UINT8",
                          "data": px.reshape(-1).tolist()}]}
    answer = requests.post(server.url + "/v2/models/tiny/infer", json=tensor, timeout=30)
    assert answer.status_code == 200, answer.text
    rows = np.array(answer.json()["outputs"][0]["data"]).reshape(2, 1000)
    np.testing.assert_allclose(rows[0], probs, rtol=1e-4, atol=1e-6)


def test_tritonclient_binary_infer_matches_resnet_classify(server: Server, classified) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny")
        assert client.get_model_metadata("tiny")["outputs"][0]["name"] == "probabilities"
        files = triton.InferInput("image_files", [2], "BYTES")
        files.set_data_from_numpy(np.array([CHELSEA.read_bytes(), COFFEE.read_bytes()],
                                           dtype=object))  # binary_data=True: the default
        result = client.infer("tiny", [files])
        assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 8000
        probs = result.as_numpy("probabilities")
        assert probs.shape == (2, 1000) and probs.dtype == np.float32
        for row, name in zip(probs, ("chelsea.jpg", "coffee.jpg"), strict=True):
            want = classified[name]["predictions"]
            assert list(np.argsort(-row)[:5]) == [p["index"] for p in want]
            np.testing.assert_allclose(np.sort(row)[::-1][:5], [p["probability"] for p in want],
                                       rtol=1e-4, atol=1e-6)
        px = triton.InferInput("images", [1, TINY, TINY, 3], "UINT8")
        px.set_data_from_numpy(pixels(CHELSEA)[None])
        top = client.infer("tiny", [px], outputs=[
            triton.InferRequestedOutput("probabilities", class_count=2)])
        best = classified["chelsea.jpg"]["predictions"][0]
        score, index, label = top.as_numpy("probabilities")[0][0].decode().split(":")
        assert (int(index), label) == (best["index"], best["label"])
        assert float(score) == pytest.approx(best["probability"], abs=2e-6)
        with pytest.raises(triton.InferenceServerException, match="unknown model"):
            client.infer("nope", [px])
    finally:
        client.close()


# ----- limits and hostile requests ----------------------------------------------------------

def raw(server: Server, request: bytes, *, timeout: float = 30) -> tuple[int, bytes]:
    """Send bytes on a fresh connection; (status, body) of the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        # The server may answer (and close) before the whole body is sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length and (chunk := conn.recv(65536)):
            body += chunk
    return int(head.split()[1]), body


def test_errors_are_json_with_their_status(server: Server, tmp_path: Path) -> None:
    url = server.url
    post = requests.post
    cases = {
        "text": post(url + "/v1/classify", data=b"hello", headers={"Content-Type":
                                                                    "text/plain"}),
        "gzip": post(url + "/v1/classify", data=b"x", headers={"Content-Type": "image/jpeg",
                                                               "Content-Encoding": "gzip"}),
        "empty": post(url + "/v1/classify", data=b"", headers={"Content-Type": "image/png"}),
        "top_k": post(url + "/v1/classify?top_k=1001", data=CHELSEA.read_bytes()),
        "unknown": requests.get(url + "/etc/passwd"),
        "method": requests.get(url + "/v1/classify"),
        "big": post(url + "/v1/classify", data=b"\xff" * (3 << 20),
                    headers={"Content-Type": "image/jpeg"}),
        "bad_json": post(url + "/v2/models/tiny/infer", data=b"{not json"),
        "shape": post(url + "/v2/models/tiny/infer", json={"inputs": [{
            "name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
            "data": [0] * 3072}]}),
        "fp32": post(url + "/v2/models/tiny/infer", json={"inputs": [{
            "name": "images", "shape": [1], "datatype": "FP32", "data": [0.5]}]}),
        "model": post(url + "/v2/models/other/infer", json={"inputs": []}),
    }
    status = {name: (r.status_code, r.json()["error"]) for name, r in cases.items()}
    assert status["text"][0] == 415 and "image/*" in status["text"][1]
    assert status["gzip"][0] == 415
    assert status["empty"] == (400, "the request has no body: send an image file.")
    assert status["top_k"] == (400, "top_k must be between 1 and 1000; got 1001.")
    assert status["unknown"][0] == 404 and status["method"][0] == 405
    assert status["big"] == (413, "the body is larger than 1 MB (--max-body-mb).")
    assert status["bad_json"][0] == 400 and "not valid JSON" in status["bad_json"][1]
    assert status["shape"][0] == 400 and "[N, 64, 64, 3]" in status["shape"][1]
    assert status["fp32"][0] == 400 and status["model"][0] == 404

    truncated = CHELSEA.read_bytes()[:5000]
    answer = post(url + "/v1/classify", data=truncated, headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("upload: cannot decode: image file is truncated")


def hostile_bodies(tmp_path: Path) -> dict[str, bytes]:
    """Files no reader should choke on: a decompression bomb, a PNG that claims 100000 x
    100000 pixels, a truncated JPEG, text, and nothing."""
    import struct
    import zlib

    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("L", (12000, 12000)).save(bomb, optimize=True)  # 144 MP: over Pillow's limit
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    huge = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    return {"bomb": bomb.read_bytes(), "huge_png": huge,
            "truncated": CHELSEA.read_bytes()[:3000], "text": b"GET / HTTP/1.1\r\n" * 20,
            "empty": b""}


def test_hostile_bodies_get_400_and_the_server_goes_on(server: Server, tmp_path: Path,
                                                      classified) -> None:  # type: ignore[no-untyped-def]
    failures_before = server.metric("resnet_decode_failures_total")
    bodies = hostile_bodies(tmp_path)
    for name, body in bodies.items():
        answer = requests.post(server.url + "/v1/classify", data=body, timeout=30,
                               headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 400, name
        assert "\n" not in answer.json()["error"]
    assert "too many pixels" in requests.post(
        server.url + "/v1/classify", data=bodies["bomb"], timeout=30).json()["error"]
    # Declared larger than allowed: refused before the body is read.
    status, body = raw(server, b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                               b"image/jpeg\r\nContent-Length: 999999999\r\n\r\n" + b"x" * 1000)
    assert status == 413 and b"max-body-mb" in body
    # Chunked, no length: counted while it is read.
    chunk = b"%x\r\n" % (256 << 10) + b"\0" * (256 << 10) + b"\r\n"
    status, body = raw(server, b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                               b"image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + chunk * 6 + b"0\r\n\r\n")
    assert status == 413
    # A v2 BYTES tensor whose lengths lie.
    header = json.dumps({"inputs": [{"name": "image_files", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    answer = requests.post(server.url + "/v2/models/tiny/infer", data=header + b"\xff" * 8,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert answer.status_code == 400 and "shorter" in answer.json()["error"]
    # Still serving, and right.
    answer = requests.post(server.url + "/v1/classify", data=CHELSEA.read_bytes(), timeout=30)
    assert_same(answer.json()[0], classified["chelsea.jpg"])
    assert server.metric("resnet_decode_failures_total") >= failures_before + 5


# ----- metrics and batching ---------------------------------------------------------------

def test_metrics_count_requests_batches_and_no_retracing(server: Server) -> None:
    traces = server.metric("resnet_model_traces")
    assert traces == 4  # batch sizes 1, 2, 4 and the Grad-CAM step, once each

    def one(_: int) -> int:
        return requests.post(server.url + "/v1/classify", data=COFFEE.read_bytes(),
                             timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(16))) == {200}
    assert server.metric("resnet_requests_total", endpoint="/v1/classify", status="200") >= 16
    assert server.metric("resnet_requests_total", endpoint="other", status="404") >= 1
    assert server.metric("resnet_batch_size_count") >= 1
    assert server.metric("resnet_request_duration_seconds_count", endpoint="/v1/classify") >= 16
    assert server.metric("resnet_queue_depth") == 0
    assert server.metric("resnet_model_traces") == traces  # nothing traced while serving
    assert any(re.search(r'"POST /v1/classify" 200 [\d.]+ms', line) for line in server.lines)


# ----- the page, in a real browser ---------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_page_has_no_external_assets(server: Server) -> None:
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
    assert '"name": "tiny"' in page.text and '"explain": true' in page.text


@pytest.mark.skipif(not CHROMIUM.exists(), reason="the browser test needs Chromium from the OS "
                    "packages at /usr/bin/chromium (apt-get install chromium)")
def test_page_in_chromium_shows_what_resnet_classify_says(server: Server, classified,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    best = classified["chelsea.jpg"]["predictions"][0]
    elsewhere: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.on("request", lambda r: None if r.url.startswith((server.url, "blob:", "data:"))
                    else elsewhere.append(r.url))
            page.goto(server.url + "/")
            page.set_input_files("#picker", str(CHELSEA))
            card = page.locator("[data-testid=result]").first
            card.locator(".bar").first.wait_for(timeout=60_000)
            assert card.locator(".name").text_content() == "chelsea.jpg"
            assert card.locator(".bar").count() == 5
            label = card.locator(".bar .label").first.text_content()
            shown = card.locator(".bar .prob").first.text_content()
            assert label == best["label"].replace("_", " ")
            assert shown is not None and shown.endswith("%")
            assert float(shown[:-1]) == pytest.approx(best["probability"] * 100, abs=0.051)

            page.locator("#heat").check()
            page.wait_for_selector("[data-testid=result][data-heatmap=shown]", timeout=60_000)
            assert card.locator(".note").text_content() == \
                f"heatmap of {label} ({shown})"
            alpha = page.evaluate("""() => {
                const c = document.querySelector('[data-testid=result] canvas');
                return c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data[3];
            }""")
            assert alpha > 0  # the heatmap is drawn over the middle of the photo
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert elsewhere == []
