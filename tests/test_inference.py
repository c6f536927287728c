"""The inference path: every image decoded once, in order, decode threads that give way to
the model; and the Keras `Predictor`: traced once, folded, split across replicas."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image, randomise_batch_norm

from resnet_cli import inference
from resnet_cli.images import load_image
from resnet_cli.inference import Predictor, iter_batches
from resnet_cli.models import ModelOptions, load_model


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


# ----- Predictor: the Keras model as one compiled function ------------------------------

def test_predictor_traces_once(tmp_path: Path) -> None:
    loaded = load_model(ModelOptions(weights="none", image_size=32))
    predictor = Predictor(loaded, 4)
    rng = np.random.default_rng(0)
    for count in (4, 1, 3, 4):
        out = predictor(rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8))
        assert out.shape == (count, 1000) and out.dtype == np.float32
    assert predictor.trace_count == 1
    # A second predictor for the same model and batch size reuses the compiled function.
    again = Predictor(loaded, 4)
    again(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    assert again.trace_count == 1
    paths = [str(make_image(tmp_path / f"{i}.png", (40, 30), seed=i)) for i in range(5)]
    batches = list(iter_batches(paths, again, image_size=32, progress=False))
    assert [len(b.ok) for b in batches] == [4, 1]
    assert again.trace_count == 1
    other = Predictor(loaded, 2)
    other(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    assert other.trace_count == 1 and len(loaded.compiled) == 2


def test_predictor_runs_the_folded_model() -> None:
    import keras

    loaded = load_model(ModelOptions(weights="none", image_size=32))
    randomise_batch_norm(loaded.model, seed=8)
    images = np.random.default_rng(9).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = loaded.model.predict(
        keras.applications.resnet.preprocess_input(images.astype(np.float32)), verbose=0)
    np.testing.assert_allclose(Predictor(loaded, 4)(images), expected, rtol=1e-4, atol=1e-6)


def test_batches_split_across_replicas_match_one_device(tmp_path: Path) -> None:
    """The multi-GPU path, on two logical CPU devices (no GPUs here)."""
    script = textwrap.dedent("""
        import numpy as np
        from resnet_cli.devices import import_tensorflow
        tf = import_tensorflow()
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from resnet_cli.inference import Predictor
        from resnet_cli.backbones import build_feature_model
        from resnet_cli.models import ModelOptions, load_model
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            loaded = load_model(ModelOptions(weights="none", include_top=False,
                                             image_size=32, device="cpu"))
            model = build_feature_model(loaded, pooling="avg", layer="conv3_block1_out")
        split = Predictor(loaded, 3, model=model, strategy=strategy)
        whole = Predictor(loaded, 4, model=model)
        images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
        a, b = split(images), whole(images)
        assert split.batch_size == 4 and a.shape == b.shape == (3, 512), (a.shape, b.shape)
        assert not np.allclose(a[0], a[1])
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        print("replicas", strategy.num_replicas_in_sync)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "replicas 2" in result.stdout
