"""`resnet serve`'s queue and lifecycle: the batcher on its own, SIGTERM with requests waiting,
the missing extra, and a `--help` that imports no server library."""

from __future__ import annotations

import signal
import subprocess
import sys
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


def test_batcher_pads_to_the_next_size_and_routes_every_row_home() -> None:
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
        assert calls == [(3, 4)]  # waited for company, then ran 3 images at size 4
        assert 0.9 < time.monotonic() - started < 5
        batcher.hurry()  # shutting down: no more waiting; 5 images run as 4 + 1
        np.testing.assert_allclose(batcher.submit(images).result(10), means, rtol=1e-6)
        assert calls[1:] == [(4, 4), (1, 1)]
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
        assert results[0].json()[0]["predictions"] == results[2].json()[0]["predictions"]
        assert waiting.process.wait(30) == 0
        assert time.monotonic() - stopped < 10
        text = "".join(waiting.lines)
        assert "stopping: answering 3 queued images" in text
        assert "stopped: every accepted request was answered" in text
        assert "Traceback" not in text
    finally:
        stop(waiting)


def test_serve_without_its_extra_names_the_install(tmp_path: Path) -> None:
    script = ("import sys; sys.modules['uvicorn'] = None\n"
              "from resnet_cli.cli import app\n"
              "app(['serve', '--weights', 'none'], prog_name='resnet')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: resnet serve needs uvicorn: pip install 'resnet[serve]'"


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
