"""The model card: what a saved or exported model needs to be used correctly, in one typed,
versioned record.

`resnet finetune` writes it into the run folder's `config.json` (beside `model.keras`, and into
its checkpoints); `resnet export` writes it inside each file (LiteRT metadata, ONNX
`metadata_props`, the SavedModel's assets). `models` and `runtimes` read it back, so every
command feeds a model the input size, preprocessing and resize it was trained with, and names
its classes. A registry variant gets a card too, built from its registry row.

Cards written before this version still load: run folders' `resnet_cli_model` entry (version
0: variant, size, preprocessing, class names, anything else loose) and exported files'
`resnet_cli_export` entry (version 1: the fields below).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from resnet_cli.errors import ModelFileError, UsageError
from resnet_cli.images import ResizeMode
from resnet_cli.registry import ModelSpec, get_spec

CARD_VERSION = 2
CARD_KEY = "resnet_cli_card"  # config.json, LiteRT metadata, ONNX props, OpenVINO rt_info, ...
CONFIG_FILENAME = "config.json"  # a finetune run's configuration, card included
_LEGACY_KEYS = ("resnet_cli_export", "resnet_cli_model")  # versions 1 and 0
CARD_KEYS = (CARD_KEY, *_LEGACY_KEYS)  # where a reader looks, newest first
INPUT_NAME = "images"  # the exported files' input and output tensors
OUTPUT_NAME = "outputs"
FORMATS = ("keras", "saved_model", "litert", "onnx", "openvino")


@dataclass(frozen=True)
class ModelCard:
    """What a model needs to be used correctly.

    Attributes:
        base_model: the registry variant (resnet50, ...).
        image_size: the square input size it was built for.
        preprocess_mode: `imagenet_utils.preprocess_input` mode ("caffe" or "tf"); inside
            exported files it is informative only (their input is raw uint8).
        class_names: the classifier's own classes; empty for ImageNet's (`imagenet_labels`)
            and for a backbone.
        include_top / pooling: a classifier, or a backbone pooled "avg"/"max"/None.
        resize: how images are brought to size, as the model was trained.
        precision: what the file computes in: float32 or int8.
        format: keras, saved_model, litert or onnx.
        source: where it came from (for messages).
        output_shape: one output row, without the batch axis (exported files).
    """

    base_model: str
    image_size: int
    preprocess_mode: str
    class_names: tuple[str, ...] = ()
    imagenet_labels: bool = False
    include_top: bool = True
    pooling: str | None = None
    resize: ResizeMode = ResizeMode.crop
    precision: str = "float32"
    format: str = "keras"
    source: str = ""
    output_shape: tuple[int, ...] = ()

    def spec(self, *, where: str) -> ModelSpec:
        """The registry row of the variant the card names.

        Raises:
            ModelFileError: a variant this release does not know.
        """
        try:
            return get_spec(self.base_model)
        except UsageError as exc:
            raise ModelFileError(f"{where}: its card names an unknown model: {exc}") from exc

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with `changes`."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data (what goes into a file)."""
        data = asdict(self)
        data.update(format_version=CARD_VERSION, class_names=list(self.class_names),
                    resize=self.resize.value, output_shape=list(self.output_shape))
        if self.format != "keras":  # the tensor a serving client feeds and reads
            data["input"] = {"name": INPUT_NAME, "dtype": "uint8", "channels": "RGB",
                             "shape": [None, self.image_size, self.image_size, 3]}
            data["output"] = {"name": OUTPUT_NAME, "dtype": "float32",
                              "shape": [None, *self.output_shape],
                              "meaning": "probabilities" if self.include_top else "features"}
        return data

    def to_json(self) -> str:
        """The card as one JSON object."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> ModelCard:
        """Read a card of any version from `where` (named in errors).

        Raises:
            ModelFileError: not a card, or one written by a newer resnet.
        """
        try:
            version = int(data.get("format_version", 0))
            if version > CARD_VERSION:
                raise ModelFileError(f"{where} was written by a newer resnet (card version "
                                     f"{version}); upgrade resnet to read it.")
            names = data.get("class_names") or ()
            shape = data["output"]["shape"][1:] if version == 1 else data.get("output_shape", ())
            return cls(
                base_model=str(data["base_model"]), image_size=int(data["image_size"]),
                preprocess_mode=str(data["preprocess_mode"]),
                class_names=tuple(str(n) for n in names),
                imagenet_labels=bool(data.get("imagenet_labels", False)),
                include_top=bool(data.get("include_top", True)), pooling=data.get("pooling"),
                resize=ResizeMode(str(data.get("resize") or "crop").lower()),
                precision=str(data.get("precision", "float32")),
                format=str(data.get("format", "keras" if version == 0 else "")),
                source=str(data.get("source", "")),
                output_shape=tuple(int(d) for d in shape),
            )
        except ModelFileError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"{where} has no valid resnet model card: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str) -> ModelCard:
        """`from_dict` of a JSON text.

        Raises:
            ModelFileError: not JSON, or not a card.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelFileError(f"{where} has no valid resnet model card: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelFileError(f"{where} has no valid resnet model card.")
        return cls.from_dict(data, where=where)


def card_entry(card: ModelCard) -> dict[str, Any]:
    """`{CARD_KEY: card}`: the card's entry in a JSON document such as config.json."""
    return {CARD_KEY: card.to_dict()}


def find_card(entries: Mapping[str, Any], *, where: str) -> ModelCard | None:
    """The card among `entries` (a config.json document, a file's metadata map: values are
    dicts or JSON text), under its current key or an older one; None when there is none.

    Raises:
        ModelFileError: an entry that is not a valid card.
    """
    for key in CARD_KEYS:
        if key in entries:
            value = entries[key]
            if isinstance(value, Mapping):
                return ModelCard.from_dict(value, where=where)
            return ModelCard.from_json(value, where=where)
    return None


def read_card_beside(model_path: Path) -> ModelCard | None:
    """The card in the `config.json` beside `model_path`, or None when there is none.

    Raises:
        ModelFileError: a config.json that cannot be read or holds no valid card.
    """
    config = model_path.parent / CONFIG_FILENAME
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{config} is not a valid resnet model card: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{config} is not a valid resnet model card.")
    card = find_card(data, where=str(config))
    if card is not None and card.format == "":
        card = card.replace(format="keras")
    return card


def public_source(source: str) -> str:
    """`source` as it may be shown to others (a served model's clients, an exported file's
    readers): a file's name without its folders. `resnet50 (/srv/models/w.weights.h5)` becomes
    `resnet50 (w.weights.h5)`, `/srv/runs/a/model.keras` becomes `model.keras`."""
    import re

    def name(path: str) -> str:
        return re.split(r"[/\\]", path.rstrip("/\\"))[-1] or path

    variant = re.fullmatch(r"(\S+) \((.*)\)", source)
    if variant is not None and re.search(r"[/\\]", variant.group(2)):
        return f"{variant.group(1)} ({name(variant.group(2))})"
    return name(source) if re.search(r"[/\\]", source) else source
