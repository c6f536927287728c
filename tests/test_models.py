from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from resnet_cli.errors import ModelFileError, UsageError, WeightsError
from resnet_cli.images import ResizeMode
from resnet_cli.models import ModelOptions, load_model, validate_pooling

UNREACHABLE = "http://127.0.0.1:9/"


def test_backbone_with_pooling() -> None:
    loaded = load_model(ModelOptions(weights="none", include_top=False, pooling="max",
                                     image_size=32))
    assert loaded.model.output_shape == (None, 2048)
    assert loaded.labels is None and loaded.preprocess_mode == "caffe"
    assert loaded.image_size == 32


def test_v2_backbone_without_pooling_keeps_the_map() -> None:
    loaded = load_model(ModelOptions(model="resnet50v2", weights="none", include_top=False,
                                     image_size=64))
    assert loaded.model.output_shape == (None, 2, 2, 2048)
    assert loaded.preprocess_mode == "tf"


@pytest.mark.parametrize("pooling,include_top,match", [
    ("mean", False, "Invalid pooling 'mean'"),
    ("avg", True, "--no-include-top"),
])
def test_pooling_is_validated_not_ignored(pooling: str, include_top: bool, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        validate_pooling(pooling, include_top=include_top)
    assert validate_pooling("none", include_top=True) is None


def test_imagenet_classifier_needs_224() -> None:
    with pytest.raises(UsageError, match="takes 224x224 input; got --image-size 96"):
        load_model(ModelOptions(weights="imagenet", image_size=96))


def test_imagenet_offline_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_WEIGHTS_URL", UNREACHABLE)
    with pytest.raises(WeightsError, match="resnet101v2_weights_tf_dim_ordering_tf_kernels_notop"):
        load_model(ModelOptions(model="resnet101v2", include_top=False, image_size=64))


def test_published_h5_layout_loads(tmp_path: Path, tiny_classifier_factory) -> None:
    """The ImageNet files are legacy Keras .h5 weights: the same loader takes them."""
    from keras.src.legacy.saving import legacy_h5_format

    _, reference = tiny_classifier_factory("resnet50")
    path = tmp_path / "published_layout.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, reference)
    loaded = load_model(ModelOptions(weights=str(path), image_size=64))
    for ours, theirs in zip(loaded.model.weights[:5] + loaded.model.weights[-2:],
                            reference.weights[:5] + reference.weights[-2:], strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_weights_for_another_variant_fail_in_one_line(tiny_classifier_factory) -> None:
    path, _ = tiny_classifier_factory("resnet50")
    with pytest.raises(WeightsError, match="does not fit resnet50v2") as info:
        load_model(ModelOptions(model="resnet50v2", weights=str(path), image_size=64))
    assert "\n" not in str(info.value)


def test_missing_weights_file() -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_model(ModelOptions(weights="nowhere/model.keras"))


def _save_tiny_finetuned(folder: Path, classes: list[str] | None) -> Path:
    import keras

    from resnet_cli.models import build_model
    from resnet_cli.registry import get_spec

    backbone = build_model(get_spec("resnet50v2"), include_top=False, image_size=32)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False))
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    folder.mkdir()
    path = folder / "model.keras"
    keras.Model(inputs, outputs).save(path)
    if classes is not None:
        # The card as run folders before card version 2 wrote it: still read.
        card = {"base_model": "resnet50v2", "image_size": 32, "preprocess_mode": "tf",
                "class_names": classes, "epochs": 1, "resize": "squash"}
        (folder / "config.json").write_text(json.dumps({"seed": 1, "resnet_cli_model": card}))
    return path


def test_saved_model_with_card(tmp_path: Path) -> None:
    path = _save_tiny_finetuned(tmp_path / "run", ["cat", "dog", "fox"])
    loaded = load_model(ModelOptions(weights=str(path)))
    assert [label.name for label in loaded.labels] == ["cat", "dog", "fox"]
    assert all(label.wnid is None for label in loaded.labels)
    assert (loaded.spec.name, loaded.image_size, loaded.preprocess_mode) == ("resnet50v2", 32, "tf")
    assert loaded.card.resize is ResizeMode.squash and loaded.card.class_names == (
        "cat", "dog", "fox")


def test_saved_model_without_card_infers_backbone(tmp_path: Path) -> None:
    path = _save_tiny_finetuned(tmp_path / "bare", None)
    loaded = load_model(ModelOptions(weights=str(path)))
    assert loaded.spec.name == "resnet50v2" and loaded.preprocess_mode == "tf"
    assert [label.name for label in loaded.labels] == ["class_0", "class_1", "class_2"]


def test_card_that_disagrees_with_the_model(tmp_path: Path) -> None:
    path = _save_tiny_finetuned(tmp_path / "run", ["only", "two"])
    with pytest.raises(ModelFileError, match=r"3 outputs but its config\.json names 2"):
        load_model(ModelOptions(weights=str(path)))


def test_corrupt_keras_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.keras"
    path.write_bytes(b"PK not really a zip")
    with pytest.raises(ModelFileError, match="Cannot load model"):
        load_model(ModelOptions(weights=str(path)))
