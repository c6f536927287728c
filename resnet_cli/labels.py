"""Class names: the ImageNet index shipped with the package, or a finetuned model's own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class ClassLabel:
    """One output unit of a classifier. `wnid` is the WordNet id for ImageNet, None otherwise."""

    index: int
    wnid: str | None
    name: str


@cache
def load_imagenet_labels() -> tuple[ClassLabel, ...]:
    """The 1000 ImageNet classes in Keras' order, from the packaged `imagenet_class_index.json`.

    The file is byte-identical to the one `keras.applications.imagenet_utils.decode_predictions`
    downloads, so no download is needed.
    """
    text = resources.files("resnet_cli").joinpath("data/imagenet_class_index.json").read_text()
    index: dict[str, list[str]] = json.loads(text)
    return tuple(ClassLabel(int(i), wnid, name) for i, (wnid, name) in
                 sorted(index.items(), key=lambda item: int(item[0])))


def build_labels(names: list[str]) -> tuple[ClassLabel, ...]:
    """Labels for a model trained on our own classes (no WordNet ids)."""
    return tuple(ClassLabel(i, None, name) for i, name in enumerate(names))
