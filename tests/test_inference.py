"""Batching: every image decoded once, in order, and decode threads that give way to the model."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image

from resnet_cli import inference
from resnet_cli.images import load_image
from resnet_cli.inference import iter_batches


def record_decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """Route `iter_batches`' decoding through the real `load_image`, noting for each path the
    thread that decoded it and that thread's nice value."""
    seen: list[tuple[str, str, int]] = []

    def recording(path: str, **kwargs: object) -> np.ndarray:
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen.append((path, threading.current_thread().name, nice))
        return load_image(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inference, "load_image", recording)
    return seen


class MeanColour:
    """A predictor with the `BatchPredictor` interface: one row per image, its mean colour."""

    def __init__(self, batch_size: int, *, shares_cpu: bool = False) -> None:
        self.batch_size = batch_size
        self.shares_cpu = shares_cpu

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert len(batch) <= self.batch_size
        return batch.reshape(len(batch), -1, 3).mean(axis=1)


def mean_colour(batch: np.ndarray) -> np.ndarray:
    return MeanColour(len(batch))(batch)


@pytest.mark.parametrize("yield_cpu", [False, True])
def test_each_image_once_in_order_with_failures_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yield_cpu: bool) -> None:
    paths = [str(make_image(tmp_path / f"{i:02d}.png", (40, 30), seed=i)) for i in range(21)]
    paths[5] = str(tmp_path / "missing.jpg")
    seen = record_decodes(monkeypatch)

    failures: list[str] = []
    batches = list(iter_batches(paths, MeanColour(8, shares_cpu=yield_cpu), image_size=16,
                                progress=False, workers=1,
                                on_failure=lambda error: failures.append(error.path)))

    assert sorted(path for path, _, _ in seen) == sorted(paths)  # none twice, none skipped
    assert [b.paths for b in batches] == [paths[0:8], paths[8:16], paths[16:21]]
    assert list(batches[0].errors) == [5] and "no such file" in batches[0].errors[5].reason
    assert failures == [paths[5]]  # the failure callback hears of each failure once
    rows = [row for b in batches for row in b.outputs]
    good = [p for p in paths if "missing" not in p]
    expected = [mean_colour(load_image(p, size=16)[None])[0] for p in good]
    np.testing.assert_allclose(np.array(rows), np.array(expected))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_decode_threads_yield_and_the_caller_decodes_what_is_late(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Big enough PNGs (no reduced-size decoding) that one worker cannot finish a batch at once.
    paths = [str(make_image(tmp_path / f"{i:02d}.png", (640, 480), seed=i)) for i in range(24)]
    seen = record_decodes(monkeypatch)
    caller = threading.current_thread().name
    own_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    list(iter_batches(paths, MeanColour(12, shares_cpu=True), image_size=16, progress=False,
                      workers=1))

    by_thread = {(name, nice) for _, name, nice in seen}
    workers = {nice for name, nice in by_thread if name != caller}
    assert workers == {19}  # the decode thread runs at the lowest priority ...
    # ... and the first batch, wanted at once, is partly decoded by the caller at its own.
    assert (caller, own_nice) in by_thread
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own_nice


def test_without_yield_the_decode_threads_keep_normal_priority(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [str(make_image(tmp_path / f"{i}.png", (40, 30), seed=i)) for i in range(6)]
    seen = record_decodes(monkeypatch)
    own_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    list(iter_batches(paths, MeanColour(3), image_size=16, progress=False, workers=2))
    assert {nice for _, _, nice in seen} == {own_nice}
