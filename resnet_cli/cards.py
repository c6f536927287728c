"""The model card: the facts a saved model needs to be used correctly, stored beside it.

`resnet finetune` writes the card into the run folder's `config.json` (under the key
`resnet_cli_model`, with the rest of the run's configuration) and into its checkpoints;
`models.load_saved_model` reads it back so that `classify`, `extract`, `summary` and
`evaluate` use the model's own input size, preprocessing and class names. `resnet export`
carries it inside the exported files (see `runtimes`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_cli.errors import ModelFileError

CARD_FILENAME = "config.json"  # model card beside a saved model.keras
CARD_KEY = "resnet_cli_model"
_CARD_FIELDS = ("base_model", "image_size", "preprocess_mode", "class_names")


@dataclass(frozen=True)
class ModelCard:
    """Facts a saved model needs to be used correctly, stored beside it as `config.json`."""

    base_model: str
    image_size: int
    preprocess_mode: str
    class_names: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def read_model_card(model_path: Path) -> ModelCard | None:
    """The card stored beside `model_path` (`config.json` with a `resnet_cli_model` entry)."""
    card_path = model_path.parent / CARD_FILENAME
    if not card_path.is_file():
        return None
    try:
        data = json.loads(card_path.read_text())[CARD_KEY]
        return ModelCard(
            base_model=str(data["base_model"]),
            image_size=int(data["image_size"]),
            preprocess_mode=str(data["preprocess_mode"]),
            class_names=[str(n) for n in data["class_names"]],
            extra={k: v for k, v in data.items() if k not in _CARD_FIELDS},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{card_path} is not a valid resnet model card: {exc}") from exc


def model_card_dict(card: ModelCard) -> dict[str, Any]:
    """The JSON form of `card`, under the key `read_model_card` looks for."""
    return {CARD_KEY: {"base_model": card.base_model, "image_size": card.image_size,
                       "preprocess_mode": card.preprocess_mode,
                       "class_names": list(card.class_names), **card.extra}}
