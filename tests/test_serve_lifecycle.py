"""`resnet serve`'s queue and lifecycle: the batcher on its own, SIGTERM with requests waiting,
the missing extra, and a `--help` that imports no server library."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from serve_process import CHELSEA, COFFEE, start_server, stop


class MeanPredictor:
    """A `BatchPredictor` without a model: each row is its image's mean colour. It pads short
    batches to its size as the compiled predictors do, and records the batch it was given."""

    shares_cpu = True

    def __init__(self, batch_size: int, calls: list[tuple[int, int]]) -> None:
        self.batch_size = batch_size
        self.calls = calls

    def __call__(self, images: np.ndarray) -> np.ndarray:
        assert len(images) <= self.batch_size
        self.calls.append((len(images), self.batch_size))
        return images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32)


def test_batcher_runs_compiled_sizes_unpadded_and_routes_every_row_home() -> None:
    from resnet_cli.serve.batching import Batcher, QueueFullError, batch_sizes

    assert batch_sizes(32) == (1, 2, 4, 8, 16, 32) and batch_sizes(6) == (1, 2, 4, 6)
    calls: list[tuple[int, int]] = []
    batcher = Batcher({size: MeanPredictor(size, calls) for size in batch_sizes(4)},
                      timeout=1.0, max_queue=8)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    means = images.reshape(5, -1, 3).mean(axis=1)
    try:
        started = time.monotonic()
        first, second = batcher.submit(images[:2]), batcher.submit(images[2:3])
        np.testing.assert_allclose(first.result(10), means[:2], rtol=1e-6)
        np.testing.assert_allclose(second.result(10), means[2:3], rtol=1e-6)
        # Waited for company, then ran 3 images as 2 + 1, never padded to 4.
        assert calls == [(2, 2), (1, 1)]
        assert 0.9 < time.monotonic() - started < 5
        batcher.hurry()  # shutting down: no more waiting; 5 images run as 4 + 1
        np.testing.assert_allclose(batcher.submit(images).result(10), means, rtol=1e-6)
        assert calls[2:] == [(4, 4), (1, 1)]
        with batcher.admit(8), pytest.raises(QueueFullError), batcher.admit(1):
            pass
        assert batcher.pending == 0
    finally:
        batcher.stop()


def test_batcher_full_batch_runs_at_once_and_a_model_error_reaches_each_request() -> None:
    from resnet_cli.serve.batching import Batcher

    calls: list[tuple[int, int]] = []
    batcher = Batcher({2: MeanPredictor(2, calls)}, timeout=60.0, max_queue=4)
    try:
        started = time.monotonic()
        pair = np.zeros((2, 4, 4, 3), dtype=np.uint8)
        assert batcher.submit(pair).result(10).shape == (2, 3)  # full: no waiting
        assert time.monotonic() - started < 5
        bad = np.zeros((1, 5, 5, 3), dtype=np.uint8)  # stacked with a 4x4 image: fails
        futures = [batcher.submit(pair[:1]), batcher.submit(bad)]
        for future in futures:
            with pytest.raises(ValueError):
                future.result(10)
    finally:
        batcher.stop()


def test_a_dead_model_thread_fails_every_waiting_request_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from resnet_cli.serve.batching import FAULT_ENV, Batcher, ModelThreadError

    monkeypatch.setenv(FAULT_ENV, "1")  # the loop raises when it takes its second batch
    calls: list[tuple[int, int]] = []
    deaths: list[BaseException] = []
    batcher = Batcher({1: MeanPredictor(1, calls), 2: MeanPredictor(2, calls)}, timeout=0.5,
                      max_queue=8, on_death=deaths.append)
    image = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    try:
        assert batcher.submit(image).result(10).shape == (1, 3)
        futures = [batcher.submit(image) for _ in range(3)]
        started = time.monotonic()
        for future in futures:
            with pytest.raises(ModelThreadError, match="the model thread has stopped"):
                future.result(10)
        assert time.monotonic() - started < 5
        assert not batcher.alive and len(deaths) == 1 and "fault injected" in str(deaths[0])
        with pytest.raises(ModelThreadError):
            batcher.submit(image)
        with pytest.raises(ModelThreadError), batcher.admit(1):
            pass
        assert calls == [(1, 1)]
    finally:
        batcher.stop(10)


# ----- lifecycle --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tiny_classifier_factory) -> Path:  # type: ignore[no-untyped-def]
    return tiny_classifier_factory("resnet50")[0]


def test_sigterm_answers_every_accepted_request_then_exits_0(weights: Path) -> None:
    # Batches of up to 4 that wait 60 s for company, and room for 3 images: the 3 requests
    # below wait in the queue until the signal, the fourth finds it full.
    waiting = start_server(weights, "--max-batch-size", "4", "--batch-timeout-ms", "60000",
                           "--max-queue", "3", "--no-explain")
    try:
        waiting.wait_ready()

        def classify(path: Path) -> requests.Response:
            return requests.post(waiting.url + "/v1/classify", data=path.read_bytes(),
                                 timeout=60)

        with ThreadPoolExecutor(3) as pool:
            answers = [pool.submit(classify, p) for p in (CHELSEA, COFFEE, CHELSEA)]
            deadline = time.monotonic() + 60
            while waiting.metric("resnet_queue_depth") < 3:
                assert time.monotonic() < deadline and not any(a.done() for a in answers)
                time.sleep(0.05)
            full = classify(CHELSEA)
            assert full.status_code == 503 and full.headers["Retry-After"] == "1"
            stopped = time.monotonic()
            waiting.process.send_signal(signal.SIGTERM)
            results = [a.result(60) for a in answers]
        assert [r.status_code for r in results] == [200] * 3
        first, third = (results[i].json()[0]["predictions"] for i in (0, 2))
        assert [p["index"] for p in first] == [p["index"] for p in third]  # the same photo
        np.testing.assert_allclose([p["probability"] for p in first],  # (at batch 2 and 1)
                                   [p["probability"] for p in third], rtol=1e-4)
        assert waiting.process.wait(30) == 0
        assert time.monotonic() - stopped < 10
        text = "".join(waiting.lines)
        assert "stopping: answering 3 queued images" in text
        assert "stopped: every accepted request was answered" in text
        assert "Traceback" not in text
    finally:
        stop(waiting)


def test_sigterm_with_slow_uploads_and_16_clients_answers_every_admitted_request(
        weights: Path) -> None:
    drain = 5.0
    serving = start_server(weights, "--max-batch-size", "4", "--no-explain", "--drain-timeout",
                           str(drain), "--request-timeout", "60")
    photo = CHELSEA.read_bytes()
    try:
        serving.wait_ready()
        host, port = serving.url.removeprefix("http://").split(":")
        uploads = []
        for _ in range(5):  # uploads trickling in: 2 bytes of 100 kB now, more later
            conn = socket.create_connection((host, int(port)), timeout=drain + 30)
            conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"image/jpeg\r\nContent-Length: 100000\r\n\r\n\xff\xd8")
            uploads.append(conn)
        stop_sending = threading.Event()
        statuses: list[int] = []
        errors: list[str] = []

        def client() -> None:
            session = requests.Session()
            while not stop_sending.is_set():
                try:
                    answer = session.post(serving.url + "/v1/classify", data=photo,
                                          headers={"Content-Type": "image/jpeg"}, timeout=60)
                    answer.json()
                    statuses.append(answer.status_code)
                except (requests.RequestException, ValueError) as exc:
                    errors.append(type(exc).__name__)
                    if serving.process.poll() is not None:
                        return
                    time.sleep(0.05)

        clients = [threading.Thread(target=client, daemon=True) for _ in range(16)]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 60
        while statuses.count(200) < 16:
            assert time.monotonic() < deadline and serving.process.poll() is None
            time.sleep(0.05)
        for conn in uploads:
            conn.sendall(b"\0" * 10)  # still arriving
        stopped = time.monotonic()
        serving.process.send_signal(signal.SIGTERM)
        code = serving.process.wait(drain + 30)
        took = time.monotonic() - stopped
        stop_sending.set()
        for thread in clients:
            thread.join(30)
        cut = []
        for conn in uploads:
            with contextlib.suppress(OSError):
                cut.append(conn.recv(200).split(b"\r\n")[0])
            conn.close()
        assert code == 0 and took < drain + 5
        assert cut == [b"HTTP/1.1 503 Service Unavailable"] * 5
        logged = sum(1 for line in serving.lines if '"POST /v1/classify" 200 ' in line)
        assert statuses.count(200) == logged  # every answer the server gave reached its client
        assert set(statuses) <= {200, 503}  # 503: still sending its body when the signal came
        text = "".join(serving.lines)
        assert "stopped: every accepted request was answered" in text
        assert "Traceback" not in text
    finally:
        stop(serving)


def test_a_dead_model_thread_turns_health_503_and_exits_1(weights: Path) -> None:
    from resnet_cli.serve.batching import FAULT_ENV

    dying = start_server(weights, "--max-batch-size", "4", "--batch-timeout-ms", "500",
                         "--no-explain", env={FAULT_ENV: "1"})
    try:
        dying.wait_ready()
        health = requests.Session()  # a connection held open, to ask after the death
        assert health.get(dying.url + "/v2/health/live", timeout=10).status_code == 200
        assert requests.post(dying.url + "/v1/classify", data=CHELSEA.read_bytes(),
                             timeout=60).status_code == 200
        with ThreadPoolExecutor(3) as pool:  # one batch of 3: the one the thread dies on
            started = time.monotonic()
            answers = list(pool.map(lambda _: requests.post(
                dying.url + "/v1/classify", data=COFFEE.read_bytes(), timeout=60), range(3)))
        assert time.monotonic() - started < 20
        assert [a.status_code for a in answers] == [503] * 3
        assert "the model thread has stopped" in answers[0].json()["error"]
        try:  # the process is on its way out: 503 if it still answers
            live = health.get(dying.url + "/v2/health/live", timeout=10).status_code
        except requests.ConnectionError:
            live = None
        assert live in (503, None)
        assert dying.process.wait(30) == 1
        text = "".join(dying.lines)
        assert "the model thread died" in text and "Traceback" not in text
        assert text.strip().splitlines()[-1].startswith("error: the model thread died")
    finally:
        stop(dying)


def test_serve_without_its_extra_names_the_install(tmp_path: Path) -> None:
    script = ("import sys; sys.modules['uvicorn'] = None\n"
              "from resnet_cli.cli import app\n"
              "app(['serve', '--weights', 'none'], prog_name='resnet')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == \
        "error: resnet serve needs uvicorn: pip install 'resnet-cli[serve]'"


def test_serve_help_imports_no_server_library() -> None:
    script = ("import sys\nfrom resnet_cli.cli import app\n"
              "try:\n    app(['serve', '--help'], prog_name='resnet')\n"
              "except SystemExit:\n    pass\n"
              "print([m for m in ('starlette', 'uvicorn', 'prometheus_client', 'tensorflow')"
              " if m in sys.modules])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "--max-batch-size" in done.stdout
