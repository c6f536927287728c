"""Folder-per-class datasets: scanning, splitting and the tf.data pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_class_dataset as write_dataset
from PIL import Image

from resnet_cli.datasets import (
    DecodedImages,
    make_dataset,
    scan_class_folders,
    split_stratified,
)
from resnet_cli.errors import DatasetError


def test_classes_mismatch_says_what_was_found(tmp_path):
    data = write_dataset(tmp_path / "data")
    with pytest.raises(DatasetError, match=r"^--classes 4 but .* has 3 class folders: "
                                           r"cat, dog, fox\.$"):
        scan_class_folders(data, classes=4)


def test_validation_folder_must_use_training_classes(tmp_path):
    data = write_dataset(tmp_path / "data")
    val = tmp_path / "val"
    (val / "dog").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(val / "dog" / "a.png")
    found = scan_class_folders(val, known_classes=("cat", "dog", "fox"))
    assert found.labels == (1,) and found.class_names == ("cat", "dog", "fox")
    (val / "zebra").mkdir()
    Image.new("RGB", (8, 8)).save(val / "zebra" / "z.png")
    with pytest.raises(DatasetError, match="class folders the training data lacks: zebra"):
        scan_class_folders(val, known_classes=scan_class_folders(data).class_names)


def test_scan_sorts_classes_and_includes_nested_images_only(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=2)
    (data / "dog" / "more").mkdir()
    Image.new("RGB", (8, 8)).save(data / "dog" / "more" / "deep.jpg")
    (data / "dog" / "readme.txt").write_text("x")
    (data / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(data / ".cache" / "hidden.png")
    found = scan_class_folders(data)
    assert found.class_names == ("cat", "dog", "fox")
    assert found.counts() == [2, 3, 2]
    assert str(data / "dog" / "more" / "deep.jpg") in found.paths


def test_split_is_stratified_and_seeded(tmp_path):
    found = scan_class_folders(write_dataset(tmp_path / "data", per_class=5))
    train, val = split_stratified(found, 0.2, seed=1)
    assert val.counts() == [1, 1, 1] and train.counts() == [4, 4, 4]
    assert split_stratified(found, 0.2, seed=1) == (train, val)
    others = {split_stratified(found, 0.2, seed=s)[1].paths for s in range(2, 8)}
    assert len(others | {val.paths}) > 1
    assert not set(train.paths) & set(val.paths)
    _, nothing = split_stratified(found, 0.0, seed=1)
    assert nothing.paths == ()


def test_training_pipeline_order_depends_on_seed_and_epoch_only():
    count = 10
    images = np.repeat(np.arange(count, dtype=np.uint8), 4 * 4 * 3).reshape(count, 4, 4, 3)
    source = DecodedImages(images, np.arange(count, dtype=np.int32) % 3,
                           [f"{i}.png" for i in range(count)])

    def order(epochs: tuple[int, int], seed: int = 7) -> list[int]:
        dataset = make_dataset(source, num_classes=3, batch_size=4, preprocess_mode="tf",
                               training=True, seed=seed, epochs=epochs)
        # "tf" preprocessing maps v to v / 127.5 - 1: recover each image's index.
        return [round((float(x[i, 0, 0, 0]) + 1) * 127.5)
                for x, _ in dataset for i in range(x.shape[0])]

    both = order((0, 2))
    assert len(both) == 16  # 2 epochs of 10 // 4 = 2 full batches
    assert order((1, 2)) == both[8:]  # a resumed run sees the epoch it would have seen
    assert both[:8] != both[8:]
    assert order((0, 2), seed=8) != both
    evaluation = make_dataset(source, num_classes=3, batch_size=4, preprocess_mode="tf",
                              training=False)
    batches = list(evaluation)
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]  # file order, nothing dropped
    assert batches[0][1].shape == (4, 3)  # one-hot
