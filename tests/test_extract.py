"""`resnet extract`: parity with plain Keras, rows in input order, shards, errors, precision.

Tiny random-weight ResNets at 64 px, built once per session (`tiny_backbone`). Tests of the
row mechanics take features from an early layer (conv2_block1_out), which keeps their compiled
graphs small. The feature files themselves (npz, merge, atomic and streamed writing) are
tested in test_features.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_image

from resnet_cli.backbones import build_feature_model
from resnet_cli.card import CONFIG_FILENAME, ModelCard, card_entry
from resnet_cli.cli import app
from resnet_cli.extract import Shard, parse_shard, write_features
from resnet_cli.images import ResizeMode
from resnet_cli.loaded import LoadedModel
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


@pytest.fixture
def photos(sample_photos: list[Path], tmp_path: Path) -> list[Path]:
    return [*sample_photos, make_image(tmp_path / "grey.png", (70, 90), mode="L", seed=4)]


# ----- parity with plain Keras -------------------------------------------------------------

@pytest.mark.parametrize("variant", ["resnet50", "resnet50v2"])
def test_features_match_plain_keras(variant: str, tiny_backbone, photos: list[Path],  # type: ignore[no-untyped-def]
                                    runner, tmp_path: Path) -> None:
    weights, reference, loaded = tiny_backbone(variant)
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
    pooling = keras.layers.GlobalAveragePooling2D()
    x = pooling(base(inputs))
    x = keras.layers.Dropout(0.3)(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.save(tmp_path / "model.keras")
    card = ModelCard(base_model="resnet50", image_size=TINY, preprocess_mode="caffe",
                     class_names=("a", "b", "c"), resize=ResizeMode.squash)
    (tmp_path / CONFIG_FILENAME).write_text(json.dumps(card_entry(card)))

    pixels = _keras_pixels(photos, "caffe")
    pooled = keras.Model(inputs, pooling.output)  # not by name: Keras numbers auto names
    out = tmp_path / "feats.npz"
    result = runner.invoke(app, ["extract", *map(str, photos), "--weights",
                                 str(tmp_path / "model.keras"), "-o", str(out)])  # squash: card
    assert result.exit_code == 0, result.stderr
    with np.load(out, allow_pickle=False) as saved:
        assert saved["features"].shape == (len(photos), 2048)
        assert _cosine_rows(saved["features"], np.asarray(pooled(pixels))).min() >= 0.9999
        assert saved["paths"].tolist() == [str(p) for p in photos]

    # --layer names a layer inside the nested backbone.
    loaded = LoadedModel(model=model, spec=get_spec("resnet50"), card=card, labels=None,
                         source="model.keras")
    features = build_feature_model(loaded, pooling="max", layer="conv3_block4_out")
    inner = model.get_layer("resnet50")
    stage = keras.Model(inner.input, inner.get_layer("conv3_block4_out").output)
    expected = np.asarray(stage(pixels)).max(axis=(1, 2))
    assert features.output_shape == (None, 512)
    assert _cosine_rows(np.asarray(features(pixels)), expected).min() >= 0.9999


# ----- outputs ------------------------------------------------------------------------------

def test_row_index_matches_rows_when_inputs_fail(tiny_backbone, tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    weights, _, loaded = tiny_backbone("resnet50")
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


def test_no_readable_image_writes_nothing(tiny_backbone, runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    weights, _, _ = tiny_backbone("resnet50")
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


# ----- precision ----------------------------------------------------------------------------

def test_bf16_features_stay_close_to_fp32(tiny_backbone, photos: list[Path], tmp_path: Path,  # type: ignore[no-untyped-def]
                                          runner) -> None:
    """--precision bf16 reaches extract (or falls back to fp32 with a notice)."""
    weights, _, _ = tiny_backbone("resnet50")
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
