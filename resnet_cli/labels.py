"""Class names: the ImageNet index shipped with the package, or a finetuned model's own."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from resnet_cli.errors import UsageError


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


def class_key(name: str) -> str:
    """How class names compare: case-insensitively, with spaces and underscores alike."""
    return name.strip().casefold().replace(" ", "_")


def find_class(text: str, labels: Sequence[ClassLabel]) -> int | None:
    """The index of the class that `text` names (by `class_key`, or by WordNet id), or None.

    This is the one rule every command matches class names by (evaluate's class folders,
    explain's --class)."""
    key = class_key(text)
    for label in labels:
        if class_key(label.name) == key or (label.wnid is not None and label.wnid == text.strip()):
            return label.index
    return None


def close_classes(text: str, labels: Sequence[ClassLabel]) -> list[str]:
    """Up to three class names close to `text`, for a did-you-mean."""
    names = {class_key(label.name): label.name for label in labels}
    return [names[key] for key in difflib.get_close_matches(class_key(text), list(names), n=3,
                                                           cutoff=0.6)]


def resolve_class(text: str, labels: Sequence[ClassLabel], *, option: str = "--class") -> int:
    """The index of the class `text` names: an index, a class name or a WordNet id.

    Raises:
        UsageError: no such class (the message suggests close names).
    """
    value = text.strip()
    if value.lstrip("-").isdecimal():
        index = int(value)
        if not 0 <= index < len(labels):
            raise UsageError(f"{option} {index} is out of range: the model has classes "
                             f"0 to {len(labels) - 1}.")
        return index
    found = find_class(value, labels)
    if found is not None:
        return found
    close = close_classes(value, labels)
    hint = f"did you mean {', '.join(close)}?" if close else \
        f"give a class name or an index from 0 to {len(labels) - 1}."
    raise UsageError(f"{option} '{text}' is not a class of this model; {hint}")
