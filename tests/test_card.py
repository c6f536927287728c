"""The model card: one typed, versioned record; cards of earlier versions still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnet_cli.card import CARD_KEY, ModelCard, card_entry, find_card, read_card_beside
from resnet_cli.errors import ModelFileError
from resnet_cli.images import ResizeMode

CARD = ModelCard(base_model="resnet50v2", image_size=96, preprocess_mode="tf",
                 class_names=("cat", "dog"), resize=ResizeMode.squash, format="litert",
                 precision="int8", source="runs/a/model.keras", output_shape=(2,))


def test_round_trip_through_json() -> None:
    text = CARD.to_json()
    assert ModelCard.from_json(text, where="x") == CARD
    data = json.loads(text)
    assert data["format_version"] == 2 and data["resize"] == "squash"
    assert data["input"]["shape"] == [None, 96, 96, 3] and data["output"]["shape"] == [None, 2]


def test_version_1_export_card_still_reads() -> None:
    """What `resnet export` wrote before the cards were one (key resnet_cli_export)."""
    old = {"format_version": 1, "base_model": "resnet50", "image_size": 64,
           "include_top": False, "pooling": "avg", "class_names": None,
           "imagenet_labels": False, "resize": "crop", "precision": "float32",
           "preprocess_mode": "caffe", "source": "w.h5",
           "input": {"name": "images", "dtype": "uint8", "shape": [None, 64, 64, 3]},
           "output": {"name": "outputs", "dtype": "float32", "shape": [None, 2048]}}
    card = find_card({"resnet_cli_export": json.dumps(old)}, where="old.tflite")
    assert card is not None
    assert (card.include_top, card.pooling, card.output_shape) == (False, "avg", (2048,))
    assert card.class_names == () and card.resize is ResizeMode.crop


def test_version_0_run_folder_card_still_reads(tmp_path: Path) -> None:
    """What finetune wrote before (key resnet_cli_model, resize among loose extras)."""
    (tmp_path / "config.json").write_text(json.dumps({"seed": 1, "resnet_cli_model": {
        "base_model": "resnet101", "image_size": 128, "preprocess_mode": "caffe",
        "class_names": ["a", "b", "c"], "resize": "squash", "run_dir": "x"}}))
    card = read_card_beside(tmp_path / "model.keras")
    assert card is not None and card.format == "keras"
    assert (card.base_model, card.image_size, card.class_names) == ("resnet101", 128,
                                                                    ("a", "b", "c"))
    assert card.resize is ResizeMode.squash and card.include_top


def test_current_key_wins_and_bad_cards_are_one_error(tmp_path: Path) -> None:
    assert find_card({**card_entry(CARD), "resnet_cli_model": {"x": 1}}, where="x") == CARD
    assert find_card({"other": 1}, where="x") is None
    newer = {**CARD.to_dict(), "format_version": 99}
    with pytest.raises(ModelFileError, match="newer resnet"):
        find_card({CARD_KEY: newer}, where="f.onnx")
    with pytest.raises(ModelFileError, match=r"f\.onnx has no valid resnet model card"):
        find_card({CARD_KEY: "{not json"}, where="f.onnx")
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="not a valid resnet model card"):
        read_card_beside(tmp_path / "model.keras")
    assert read_card_beside(tmp_path / "sub" / "model.keras") is None
