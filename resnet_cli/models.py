"""The one model-loading layer: every command gets its Keras model from `load_model`.

A model is either a registry variant (ImageNet weights, random weights or a weights file) or a
whole `.keras` model written by `resnet finetune`, which carries a model card (`config.json`
beside it, see `cards`) with its base variant, input size, preprocessing and class names.
Saved models take *preprocessed* float input, exactly like the Keras application they were
built from; `inference.Predictor` applies the preprocessing named in the card. Models that
output features instead of classes are cut from a loaded one in `backbones`.

Keras and TensorFlow are imported inside functions only, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from resnet_cli.card import CONFIG_FILENAME, ModelCard, read_card_beside
from resnet_cli.devices import (
    DeviceRequest,
    apply_device,
    import_tensorflow,
    parse_device,
    parse_precision,
    precision_policy,
)
from resnet_cli.errors import ModelFileError, UsageError, WeightsError, first_line
from resnet_cli.labels import ClassLabel, build_labels, load_imagenet_labels
from resnet_cli.loaded import LoadedModel
from resnet_cli.registry import DEFAULT_MODEL, ModelSpec, get_spec, imagenet_weights_file
from resnet_cli.runtimes import exported_runtime, load_exported
from resnet_cli.weights import load_imagenet_weights

log = logging.getLogger(__name__)

POOLING_CHOICES = ("avg", "max")


class Pooling(str, Enum):
    """How a backbone's feature map becomes its output (`--pooling`)."""

    avg = "avg"
    max = "max"
    none = "none"  # the (h, w, C) map itself

    def __str__(self) -> str:  # the value in messages and JSON, as a plain str would be
        return str(self.value)


@dataclass(frozen=True)
class ModelOptions:
    """What the command line asked for. `None` means "the model's default".

    Attributes:
        weights: "imagenet", "none", or the path of a weights file or `.keras` model.
        pooling: "avg", "max" or None; only with `include_top=False`.
    """

    model: str = DEFAULT_MODEL
    weights: str = "imagenet"
    include_top: bool = True
    pooling: str | None = None
    image_size: int | None = None
    device: str = "auto"
    precision: str = "fp32"  # "fp32" or "bf16" (mixed precision where the hardware has it)


def load_model(options: ModelOptions, *, progress: bool | None = None) -> LoadedModel:
    """Build or load the model described by `options`, on the requested device.

    Raises:
        UsageError: an option combination that cannot work (bad pooling, wrong image size).
        WeightsError / ModelFileError: weights or a model file that cannot be used.
        DeviceError: the requested device is not available.
    """
    request = parse_device(options.device)
    parse_precision(options.precision)
    weights = options.weights.strip()
    if exported_runtime(weights) is not None:
        loaded = _load_exported(weights, options, request)
    elif weights.lower().endswith(".keras"):
        loaded = _load_saved_on_device(existing_weights_file(weights), request,
                                       options.precision)
    else:
        return _load_variant(options, weights, request, progress=progress)
    if options.image_size is not None and options.image_size != loaded.image_size:
        raise UsageError(f"{loaded.source} takes {loaded.image_size}x{loaded.image_size} "
                         f"input; got --image-size {options.image_size}. Its model card "
                         "fixes the size: drop --image-size.")
    return loaded


def _load_variant(options: ModelOptions, weights: str, request: DeviceRequest, *,
                  progress: bool | None) -> LoadedModel:
    """A registry variant with ImageNet weights, random weights or a weights file."""
    spec = get_spec(options.model)
    pooling = validate_pooling(options.pooling, include_top=options.include_top)
    size = resolve_image_size(spec, options.image_size)
    if weights.lower() == "imagenet" and options.include_top and size != spec.default_size:
        raise UsageError(
            f"The ImageNet classifier of {spec.name} takes {spec.default_size}x"
            f"{spec.default_size} input; got --image-size {size}. Use --image-size "
            f"{spec.default_size}, or --no-include-top for features at other sizes."
        )
    weights_path, source = _weights_source(spec, weights, include_top=options.include_top,
                                           progress=progress)
    device = apply_device(request)
    policy = precision_policy(options.precision, device)
    with dtype_policy(policy):
        model = build_model(spec, include_top=options.include_top, pooling=pooling,
                            image_size=size)
    if policy != "float32":
        _keep_classifier_float32(model)
    if weights_path is not None:
        _load_weights(model, weights_path, spec)
    card = ModelCard(base_model=spec.name, image_size=size,
                     preprocess_mode=spec.preprocess_mode, imagenet_labels=options.include_top,
                     include_top=options.include_top, pooling=pooling, source=source)
    return LoadedModel(spec=spec, card=card, model=model, source=source, device=device,
                       labels=load_imagenet_labels() if options.include_top else None,
                       policy=policy)


def _load_saved_on_device(path: Path, request: DeviceRequest, precision: str) -> LoadedModel:
    """A whole `.keras` model (`load_saved_model`) on the requested device and precision."""
    device = apply_device(request)
    policy = precision_policy(precision, device)
    loaded = load_saved_model(path)
    loaded.device = device
    # A saved model stores each layer's dtype policy (a checkpoint of a bf16 finetune run
    # keeps mixed_bfloat16), so the global policy would not reach it: switch its layers in
    # place, to float32 too (variables stay float32).
    _set_layer_policies(loaded.model, policy)
    if policy != "float32":
        _keep_classifier_float32(loaded.model)
    loaded.policy = policy
    return loaded


def _weights_source(spec: ModelSpec, weights: str, *, include_top: bool,
                    progress: bool | None) -> tuple[Path | None, str]:
    """The weights file to load into a registry variant (None: random weights, ImageNet's
    fetched when missing), and how messages name the model."""
    kind = weights.lower()
    if kind == "imagenet":
        path = load_imagenet_weights(imagenet_weights_file(spec, include_top=include_top),
                                     progress=progress)
        return path, f"{spec.name} (ImageNet weights)"
    if kind in ("none", ""):
        return None, f"{spec.name} (random weights)"
    path = existing_weights_file(weights)
    return path, f"{spec.name} ({path})"


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Build layers under Keras' global dtype `policy`, then restore the previous one.

    Layers keep the policy they were built with, so nothing leaks into later models.
    """
    import_tensorflow()
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _set_layer_policies(model: Any, policy: str) -> None:
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a nested model, e.g. a finetuned model's backbone
            _set_layer_policies(layer, policy)
        layer.dtype_policy = policy


def _keep_classifier_float32(model: Any) -> None:
    """Run the trailing classifier (Dense + softmax) in float32, as Keras' mixed precision
    guide advises: bfloat16 probabilities carry only 2-3 significant digits."""
    import keras

    for layer in reversed(model.layers):
        if not isinstance(layer, (keras.layers.Dense, keras.layers.Activation,
                                  keras.layers.Softmax, keras.layers.Dropout)):
            break
        layer.dtype_policy = "float32"


def validate_pooling(pooling: str | None, *, include_top: bool) -> str | None:
    """Check `pooling` (Keras ignores unknown values silently; this does not)."""
    if pooling is None or pooling.lower() == "none":
        return None
    value = pooling.lower()
    if value not in POOLING_CHOICES:
        raise UsageError(f"Invalid pooling '{pooling}': use avg, max or none.")
    if include_top:
        raise UsageError("--pooling only applies without the classifier: add --no-include-top.")
    return value


def resolve_pooling(pooling: str | None, *, include_top: bool) -> str | None:
    """`--pooling`'s one rule: none with the classifier; without it `avg` unless given
    (`none` keeps the (h, w, C) map), as in every command that takes it.

    Raises:
        UsageError: an unknown value, or pooling asked of the classifier.
    """
    if pooling is None:
        return None if include_top else "avg"
    return validate_pooling(pooling, include_top=include_top)


def build_model(
    spec: ModelSpec,
    *,
    include_top: bool = True,
    pooling: str | None = None,
    image_size: int | None = None,
    classes: int | None = None,
) -> Any:
    """Build the Keras application for `spec` with random weights (no I/O)."""
    import_tensorflow()
    import keras

    size = image_size or spec.default_size
    constructor = getattr(keras.applications, spec.constructor)
    kwargs: dict[str, Any] = {"weights": None, "include_top": include_top,
                              "input_shape": (size, size, 3), "pooling": pooling}
    if include_top:
        kwargs["classes"] = classes or spec.num_classes
    return constructor(**kwargs)


def _load_weights(model: Any, path: Path, spec: ModelSpec) -> None:
    if not (path.name.endswith(".h5") or path.name.endswith(".hdf5")):
        raise WeightsError(
            f"{path}: unsupported weights file; expected a Keras .weights.h5 or .h5 file, "
            "or a .keras model."
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            model.load_weights(str(path))
        # Keras only warns when parts of a file match nothing and keeps their random
        # initialisation: for us that is a file for another model, not a success.
        skipped = [w for w in caught if issubclass(w.category, UserWarning)]
        if skipped:
            raise ValueError(str(skipped[0].message))
    except Exception as exc:  # Keras raises ValueError, OSError, KeyError... for a bad file
        raise WeightsError(
            f"{path} does not fit {spec.name} "
            f"(include_top={any(layer.name == 'predictions' for layer in model.layers)}): "
            f"{first_line(exc)}"
        ) from exc


def _load_exported(weights: str, options: ModelOptions, request: DeviceRequest
                   ) -> LoadedModel:
    """A file from `resnet export` (.tflite, .onnx, .xml): it runs on its own runtime, on the
    CPU, and computes what it was exported for (the commands check it is what they need).

    Raises:
        UsageError: --device gpu, or --precision bf16 on a file whose runtime cannot honour
            it (only OpenVINO chooses its inference precision at load time).
    """
    path = existing_weights_file(weights)
    runtime = exported_runtime(weights)
    if request.kind == "gpu":
        raise UsageError(f"{path} runs on the CPU ({runtime}); "
                         "drop --device gpu, or use the Keras model it was exported from.")
    if options.precision != "fp32" and runtime != "openvino":
        raise UsageError(f"{path} runs at the precision it was exported with; drop --precision.")
    return load_exported(path, precision=options.precision)


def existing_weights_file(weights: str) -> Path:
    """The file `--weights` names (a weights file or a `.keras` model).

    Raises:
        UsageError: no such file.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UsageError(
            f"--weights: no such file '{weights}'. Use imagenet, none, or a weights/.keras file."
        )
    return path


def resolve_image_size(spec: ModelSpec, image_size: int | None) -> int:
    """`image_size`, or the variant's default when None.

    Raises:
        UsageError: smaller than the variant's minimum.
    """
    size = image_size or spec.default_size
    if size < spec.min_size:
        raise UsageError(f"--image-size must be at least {spec.min_size}; got {size}.")
    return size


def load_saved_model(path: Path) -> LoadedModel:
    """Load a whole `.keras` model in Keras' safe mode, with its card when one is beside it."""
    import_tensorflow()
    import keras

    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:
        raise ModelFileError(f"Cannot load model {path}: {first_line(exc)}") from exc
    card = read_card_beside(path)
    if card is not None:
        spec = card.spec(where=str(path))
    else:
        spec = _infer_spec(model)
        size = model.input_shape[1]
        card = ModelCard(base_model=spec.name, image_size=int(size or spec.default_size),
                         preprocess_mode=spec.preprocess_mode)
        log.warning("%s has no %s beside it: assuming %s preprocessing", path,
                    CONFIG_FILENAME, spec.name)
    names = list(card.class_names)
    outputs = model.output_shape
    labels: tuple[ClassLabel, ...] | None = None
    if len(outputs) == 2 and outputs[-1] is not None:
        count = int(outputs[-1])
        if names and len(names) != count:
            raise ModelFileError(
                f"{path} has {count} outputs but its {CONFIG_FILENAME} names {len(names)} "
                "classes.")
        if names:
            labels = build_labels(names)
        elif count == spec.num_classes:
            labels = load_imagenet_labels()
        else:
            labels = build_labels([f"class_{i}" for i in range(count)])
    card = card.replace(include_top=labels is not None, imagenet_labels=labels is not None
                        and not names and len(labels) == spec.num_classes,
                        format="keras", source=str(path))
    return LoadedModel(spec=spec, card=card, model=model, labels=labels, source=str(path))


def _infer_spec(model: Any) -> ModelSpec:
    from resnet_cli.registry import MODELS

    names = {model.name, *(layer.name for layer in model.layers)}
    for name in sorted(MODELS, key=len, reverse=True):  # "resnet50v2" before "resnet50"
        if name in names:
            return MODELS[name]
    return MODELS[DEFAULT_MODEL]


def load_backbone_weights(backbone: Any, spec: ModelSpec, weights: str, *,
                          progress: bool | None = None) -> str:
    """Load ImageNet weights, a weights file (of the variant, with or without its classifier)
    or the backbone of an earlier finetuned `.keras` model into `backbone` (built without
    top); returns a description of what was loaded.

    Raises:
        UsageError: no such file.
        WeightsError / ModelFileError: weights that cannot be found or do not fit.
    """
    if weights.lower() == "imagenet":
        path = load_imagenet_weights(imagenet_weights_file(spec, include_top=False),
                                     progress=progress)
        _load_weights(backbone, path, spec)
        return f"imagenet ({path.name})"
    path = existing_weights_file(weights)
    if path.name.endswith(".keras"):
        from resnet_cli.graph import find_backbone

        source = load_saved_model(path).model
        copied = _copy_by_name(find_backbone(source), backbone)
        if not copied:
            raise ModelFileError(f"{path} has no layer of {spec.name}'s backbone to start from.")
        return f"{path} ({copied} layers)"
    try:
        _load_weights(backbone, path, spec)
        return str(path)
    except WeightsError:
        log.debug("%s is not a backbone-only weights file; trying with the classifier", path)
    full = build_model(spec, include_top=True, image_size=backbone.input_shape[1])
    try:
        _load_weights(full, path, spec)
    except WeightsError as exc:
        reason = first_line(exc.__cause__ or exc)
        raise WeightsError(f"{path} does not fit {spec.name} (with or without its "
                           f"classifier): {reason}") from exc
    return f"{path} ({_copy_by_name(full, backbone)} layers)"


def _copy_by_name(source: Any, target: Any) -> int:
    """Copy weights between layers of the same name and shapes; returns how many layers."""
    by_name = {layer.name: layer for layer in source.layers}
    copied = 0
    for layer in target.layers:
        src = by_name.get(layer.name)
        if src is None or not layer.weights:
            continue
        values = src.get_weights()
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            continue
        layer.set_weights(values)
        copied += 1
    return copied
