"""SavedModel: a directory that TensorFlow Serving serves as it is.

Its `serving_default` signature takes `images` (uint8, `(batch, size, size, 3)`, RGB) and
returns `outputs` (float32 probabilities, or features for a backbone). The card is the file
`assets/resnet_cli_card.json` in the SavedModel's assets folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet_cli.card import CARD_KEY, CARD_KEYS, INPUT_NAME, OUTPUT_NAME, ModelCard, find_card

CARD_ASSET = f"{CARD_KEY}.json"


def write_saved_model(served: Any, card: ModelCard, path: Path) -> None:
    """Write `served` (uint8 images in) as a SavedModel directory at `path`, with `card`."""
    import keras
    import tensorflow as tf

    size = card.image_size
    archive = keras.export.ExportArchive()
    archive.track(served)
    archive.add_endpoint(
        "serve", lambda images: {OUTPUT_NAME: served(images, training=False)},
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8, name=INPUT_NAME)])
    archive.write_out(str(path), verbose=False)
    # Beside the graph, in the SavedModel's own assets folder: TF Serving ignores it, and it
    # moves with the directory.
    assets = path / "assets"
    assets.mkdir(exist_ok=True)
    (assets / CARD_ASSET).write_text(card.to_json(), encoding="utf-8")


def read_saved_model_card(path: Path) -> ModelCard | None:
    """The card of the SavedModel directory `path`, or None when it has none."""
    assets = path / "assets"
    entries = {file.stem: file.read_text(encoding="utf-8")
               for file in (assets / f"{key}.json" for key in CARD_KEYS) if file.is_file()}
    return find_card(entries, where=str(path))
