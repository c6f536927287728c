"""`resnet extract` / `resnet merge`: parity with plain Keras, streamed atomic outputs, shards.

Tiny random-weight ResNets at 64 px, built once per module. Tests of the file mechanics take
features from an early layer (conv2_block1_out), which keeps their compiled graphs small.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_image

from resnet_cli.cli import app
from resnet_cli.extract import Shard, parse_shard, write_features
from resnet_cli.images import ResizeMode
from resnet_cli.models import (
    CARD_FILENAME,
    LoadedModel,
    ModelCard,
    ModelOptions,
    build_feature_model,
    load_model,
    model_card_dict,
)
from resnet_cli.registry import get_spec

EARLY = "conv2_block1_out"  # 256 channels, 16x16 at 64 px


def _keras_pixels(paths: list[Path], mode: str, size: int = TINY) -> np.ndarray:
    """What a Keras user would feed the model: load_img's bilinear resize + preprocess_input."""
    import keras
    from keras.applications import imagenet_utils

    pixels = np.stack([keras.utils.img_to_array(keras.utils.load_img(
        p, target_size=(size, size), interpolation="bilinear")) for p in paths])
    return imagenet_utils.preprocess_input(pixels, mode=mode)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Per variant (built once): the notop weights file, the plain Keras model, and the
    same model loaded through the CLI's model layer."""
    cache: dict[str, tuple[Path, object, LoadedModel]] = {}

    def get(variant: str) -> tuple[Path, object, LoadedModel]:
        if variant not in cache:
            import keras

            keras.utils.set_random_seed(11 + len(cache))
            reference = getattr(keras.applications, get_spec(variant).constructor)(
                include_top=False, weights=None, input_shape=(TINY, TINY, 3))
            path = tmp_path_factory.mktemp("notop") / f"{variant}_notop.weights.h5"
            reference.save_weights(path)
            loaded = load_model(ModelOptions(model=variant, weights=str(path),
                                             include_top=False, image_size=TINY))
            cache[variant] = (path, reference, loaded)
        return cache[variant]

    return get


@pytest.fixture
def photos(sample_photos: list[Path], tmp_path: Path) -> list[Path]:
    return [*sample_photos, make_image(tmp_path / "grey.png", (70, 90), mode="L", seed=4)]


# ----- parity with plain Keras -------------------------------------------------------------

@pytest.mark.parametrize("variant", ["resnet50", "resnet50v2"])
def test_features_match_plain_keras(variant: str, backbone, photos: list[Path],  # type: ignore[no-untyped-def]
                                    runner, tmp_path: Path) -> None:
    weights, reference, loaded = backbone(variant)
    spatial = np.asarray(reference(_keras_pixels(photos, get_spec(variant).preprocess_mode),
                                   training=False))
    expected = {"none": spatial, "avg": spatial.mean(axis=(1, 2)), "max": spatial.max(axis=(1, 2))}
    assert spatial.shape == (len(photos), 2, 2, 2048)

    # The command line, paths on stdin: --weights FILE, the spatial map.
    out = tmp_path / "map.npy"
    result = runner.invoke(app, ["extract", "--model", variant, "--weights", str(weights),
                                 "--image-size", str(TINY), "--resize", "squash", "-b", "4",
                                 "--pooling", "none", "-o", str(out)],
                           input="".join(f"{p}\n" for p in photos))
    assert result.exit_code == 0, result.stderr
    assert f"{len(photos)} x (2, 2, 2048) float32" in result.stderr
    got = {"none": np.load(out)}
    assert _lines(tmp_path / "map.paths.txt") == [str(p) for p in photos]

    for pooling in ("avg", "max"):
        summary = write_features([str(p) for p in photos], loaded, tmp_path / f"{pooling}.npy",
                                 pooling=pooling, batch_size=4, resize=ResizeMode.squash,
                                 progress=False)
        assert summary.output.rows == len(photos) and summary.failed == 0
        got[pooling] = np.load(tmp_path / f"{pooling}.npy")

    for pooling, features in got.items():
        assert features.dtype == np.float32
        assert features.shape == expected[pooling].shape, pooling
        assert _cosine_rows(features, expected[pooling]).min() >= 0.9999, pooling
        assert not np.allclose(features[0], features[1])  # real, distinct rows


def test_finetuned_keras_model_gives_its_backbone_features(tmp_path: Path, photos: list[Path],
                                                           runner) -> None:  # type: ignore[no-untyped-def]
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((TINY, TINY, 3))
    base = keras.applications.ResNet50(include_top=False, weights=None,
                                       input_shape=(TINY, TINY, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    x = keras.layers.Dropout(0.3)(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.save(tmp_path / "model.keras")
    card = ModelCard(base_model="resnet50", image_size=TINY, preprocess_mode="caffe",
                     class_names=["a", "b", "c"])
    (tmp_path / CARD_FILENAME).write_text(json.dumps(model_card_dict(card)))

    pixels = _keras_pixels(photos, "caffe")
    pooled = keras.Model(inputs, model.get_layer("global_average_pooling2d").output)
    out = tmp_path / "feats.npz"
    result = runner.invoke(app, ["extract", *map(str, photos), "--weights",
                                 str(tmp_path / "model.keras"), "--resize", "squash",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    with np.load(out, allow_pickle=False) as saved:
        assert saved["features"].shape == (len(photos), 2048)
        assert _cosine_rows(saved["features"], np.asarray(pooled(pixels))).min() >= 0.9999
        assert saved["paths"].tolist() == [str(p) for p in photos]

    # --layer names a layer inside the nested backbone.
    loaded = LoadedModel(model=model, spec=get_spec("resnet50"), image_size=TINY,
                         preprocess_mode="caffe", labels=None, source="model.keras")
    features = build_feature_model(loaded, pooling="max", layer="conv3_block4_out")
    inner = model.get_layer("resnet50")
    stage = keras.Model(inner.input, inner.get_layer("conv3_block4_out").output)
    expected = np.asarray(stage(pixels)).max(axis=(1, 2))
    assert features.output_shape == (None, 512)
    assert _cosine_rows(np.asarray(features(pixels)), expected).min() >= 0.9999


# ----- outputs ------------------------------------------------------------------------------

def test_row_index_matches_rows_when_inputs_fail(backbone, tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    weights, _, loaded = backbone("resnet50")
    good = [make_image(tmp_path / f"img{i}.png", (40 + 9 * i, 50), seed=i) for i in range(5)]
    (tmp_path / "broken.jpg").write_text("not a picture")
    order = [good[0], tmp_path / "broken.jpg", good[1], good[2], tmp_path / "gone.png",
             good[3], good[4]]
    out = tmp_path / "feats.npy"
    result = runner.invoke(app, ["extract", *map(str, order), "--weights", str(weights),
                                 "--image-size", str(TINY), "--layer", EARLY, "-b", "2",
                                 "--l2-normalize", "--dtype", "float16", "-o", str(out)])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "broken.jpg" in errors[0] and "gone.png: no such file" in errors[1]
    assert _lines(tmp_path / "feats.paths.txt") == [str(p) for p in good]
    features = np.load(out)
    assert features.shape == (5, 256) and features.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(features.astype(np.float32), axis=1), 1, atol=2e-3)

    # Row i is image i: the same as extracting each good image on its own.
    for i in (0, 3):
        alone = tmp_path / f"alone{i}.npz"
        write_features([str(good[i])], loaded, alone, layer=EARLY, l2_normalize=True,
                       batch_size=1, progress=False)
        with np.load(alone, allow_pickle=False) as saved:
            np.testing.assert_allclose(features[i], saved["features"][0], atol=2e-3)
            assert saved["paths"].tolist() == [str(good[i])]


def test_npz_round_trips_without_pickle(backbone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, loaded = backbone("resnet50")
    odd = tmp_path / "ünï cödé, spaces.png"
    paths = [str(make_image(odd, seed=1)), str(tmp_path / "missing.jpg"),
             str(make_image(tmp_path / "b.jpg", seed=2))]
    failures: list[tuple[str, str]] = []
    summary = write_features(paths, loaded, tmp_path / "f.npz", layer=EARLY, pooling="none",
                             batch_size=2, progress=False,
                             on_failure=lambda e: failures.append((e.path, e.reason)))
    assert failures == [(paths[1], "no such file")]
    assert (summary.output.rows, summary.output.row_shape, summary.failed) == (2, (16, 16, 256), 1)
    with np.load(tmp_path / "f.npz", allow_pickle=False) as saved:
        assert sorted(saved.files) == ["features", "paths"]
        assert saved["features"].shape == (2, 16, 16, 256)
        assert saved["paths"].dtype.kind == "U"
        assert saved["paths"].tolist() == [paths[0], paths[2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["b.jpg", odd.name, "f.npz"])  # no scratch files left


def test_shards_merge_to_one_run(backbone, tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    _, _, loaded = backbone("resnet50")
    names = ["e", "a", "g", "c", "f", "b", "d"]
    paths = [str(make_image(tmp_path / f"{n}.png", seed=i)) for i, n in enumerate(names)]
    write_features(sorted(paths), loaded, tmp_path / "all.npy", layer=EARLY, progress=False)
    shards = [Shard(k, 3).select(paths) for k in range(3)]
    assert [len(s) for s in shards] == [2, 2, 3] and [p for s in shards for p in s] == sorted(paths)
    parts = [tmp_path / "part0.npy", tmp_path / "part1.npz", tmp_path / "part2.npy"]
    for part, selected in zip(parts, shards, strict=True):
        write_features(selected, loaded, part, layer=EARLY, batch_size=2, progress=False)

    for merged in (tmp_path / "merged.npy", tmp_path / "merged.npz"):
        result = runner.invoke(app, ["merge", *map(str, parts), "-o", str(merged)])
        assert result.exit_code == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "merged.npy"), np.load(tmp_path / "all.npy"))
    assert _lines(tmp_path / "merged.paths.txt") == sorted(paths)
    with np.load(tmp_path / "merged.npz", allow_pickle=False) as saved:
        assert np.array_equal(saved["features"], np.load(tmp_path / "all.npy"))
        assert saved["paths"].tolist() == sorted(paths)

    # Files that do not belong together are refused before anything is written.
    np.save(tmp_path / "other.npy", np.zeros((1, 3), np.float32))
    (tmp_path / "other.paths.txt").write_text("x.jpg\n")
    result = runner.invoke(app, ["merge", str(parts[0]), str(tmp_path / "other.npy"),
                                 "-o", str(tmp_path / "bad.npy")])
    assert result.exit_code == 2 and "same extract options" in result.stderr
    assert not (tmp_path / "bad.npy").exists()


def test_shard_option_is_validated() -> None:
    assert parse_shard("0/4") == Shard(0, 4) and parse_shard(" 3 / 4 ") == Shard(3, 4)
    for bad in ("4/4", "1/0", "-1/4", "1of4", "a/b"):
        with pytest.raises(Exception, match="--shard") as info:
            parse_shard(bad)
        assert info.value.exit_code == 2  # type: ignore[attr-defined]


# ----- errors -------------------------------------------------------------------------------

def test_bad_layer_name_suggests_close_names(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = make_image(tmp_path / "a.png")
    result = runner.invoke(app, ["extract", str(image), "--weights", "none", "--image-size",
                                 "32", "--layer", "conv4_block6_ou", "-o",
                                 str(tmp_path / "f.npy")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "'conv4_block6_ou' is not a layer of resnet50" in result.stderr
    assert "conv4_block6_out" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_existing_output_is_refused_before_loading_the_model(
        runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import resnet_cli.models

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(resnet_cli.models, "load_model", no_model)
    image = make_image(tmp_path / "a.png")
    (tmp_path / "f.npy").write_bytes(b"precious")
    (tmp_path / "g.paths.txt").write_text("precious\n")
    for out in ("f.npy", "g.npy"):  # the array, or just its row index, is already there
        result = runner.invoke(app, ["extract", str(image), "--weights", "none",
                                     "-o", str(tmp_path / out)])
        assert result.exit_code == 1, result.stderr
        assert "already exists; pass --overwrite" in result.stderr
    assert (tmp_path / "f.npy").read_bytes() == b"precious"
    assert not (tmp_path / "g.npy").exists()
    result = runner.invoke(app, ["extract", str(image), "-o", str(tmp_path / "f.csv")])
    assert result.exit_code == 2 and ".npy" in result.stderr


def test_no_readable_image_writes_nothing(backbone, runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    weights, _, _ = backbone("resnet50")
    (tmp_path / "bad.jpg").write_text("nope")
    (tmp_path / "old.npy").write_bytes(b"keep me")
    for out in ("new.npy", "old.npy"):
        result = runner.invoke(app, ["extract", str(tmp_path / "bad.jpg"), "--weights",
                                     str(weights), "--image-size", str(TINY), "--overwrite",
                                     "-o", str(tmp_path / out)])
        assert result.exit_code == 1
        assert "none of the 1 inputs could be read" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jpg", "old.npy"]
    assert (tmp_path / "old.npy").read_bytes() == b"keep me"


# ----- whole processes: interrupt, memory, replicas -------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnet_cli", "extract", *args]


def test_interrupted_run_leaves_no_file(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(300):
        make_image(images / f"{i:03d}.png", (12, 12), seed=i)
    out = tmp_path / "feats.npy"
    proc = subprocess.Popen(_cli(str(images), "--weights", "none", "--image-size", str(TINY),
                                 "-b", "1", "-o", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            partial = list(tmp_path.glob(".feats.*.tmp.npy"))
            if partial and partial[0].stat().st_size > 128 + 3 * 2048 * 4:  # rows are landing
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_memory_stays_flat_as_inputs_grow(tmp_path: Path) -> None:
    """Peak RSS of a run with 5x the images (1 MiB of features each) stays put."""
    runs = {}
    for count in (60, 300):
        folder = tmp_path / f"in{count}"
        folder.mkdir()
        for i in range(count):
            make_image(folder / f"{i:03d}.png", (8, 8), seed=i)
        out = tmp_path / f"f{count}.npy"
        args = _cli(str(folder), "--weights", "none", "--image-size", "128", "--resize",
                    "squash", "--layer", "conv2_block3_out", "--pooling", "none", "-b", "16",
                    "-q", "-o", str(out))
        runs[count] = (subprocess.Popen(args, stderr=subprocess.PIPE), out)
    peaks = {}
    for count, (proc, out) in runs.items():  # both ran side by side
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        assert np.load(out, mmap_mode="r").shape == (count, 32, 32, 256)
        peaks[count] = usage.ru_maxrss / 1024  # MiB
    print(f"peak RSS: 60 images {peaks[60]:.0f} MiB, 300 images {peaks[300]:.0f} MiB")
    # Keeping the features in memory would add 240 MiB to the larger run.
    assert peaks[300] - peaks[60] < 80, peaks


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
        from resnet_cli.models import ModelOptions, build_feature_model, load_model
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


def test_bf16_features_stay_close_to_fp32(backbone, photos: list[Path], tmp_path: Path,  # type: ignore[no-untyped-def]
                                          runner) -> None:
    """--precision bf16 reaches extract (or falls back to fp32 with a notice)."""
    weights, _, _ = backbone("resnet50")
    rows = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.npy"
        result = runner.invoke(app, ["extract", *map(str, photos), "--weights", str(weights),
                                     "--image-size", str(TINY), "--precision", precision,
                                     "-o", str(out), "-q"])
        assert result.exit_code == 0, result.stderr
        rows[precision] = np.load(out)
        assert rows[precision].dtype == np.float32
    assert _cosine_rows(rows["fp32"], rows["bf16"]).min() > 0.98
