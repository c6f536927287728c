"""Models that take features from the ResNet inside a model.

`build_feature_model` cuts a model from preprocessed images to the features of one of the
backbone's layers (`feature_layer`), as `extract`, `export --no-include-top`, `summary` and
`explain` need; `graph.find_backbone` finds the backbone.

Keras is imported inside functions only, so importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from resnet_cli.devices import import_tensorflow
from resnet_cli.errors import ModelFileError, UsageError
from resnet_cli.graph import backbone_feed, find_backbone
from resnet_cli.loaded import LoadedModel
from resnet_cli.models import load_model, resolve_pooling, validate_pooling

if TYPE_CHECKING:
    from resnet_cli.models import ModelOptions


def build_feature_model(loaded: LoadedModel, *, pooling: str | None = "avg",
                        layer: str | None = None) -> Any:
    """A Keras model from preprocessed images to features, sharing `loaded`'s weights.

    The features are the output of the backbone's last layer with a spatial (h, w, C) output
    (the last conv stage), or of the layer named `layer` inside the backbone, pooled to one
    vector per image ("avg", "max") or left as the map (None). For a finetuned `.keras` model
    the backbone is its nested ResNet; its classifier head is left out.

    Raises:
        UsageError: a bad pooling, a layer name the backbone does not have (the message
            suggests close names), or pooling asked of a layer that has no spatial output.
        ModelFileError: the model has no layer with a spatial output.
    """
    import_tensorflow()
    import keras

    pooling = validate_pooling(pooling, include_top=False)
    outer = loaded.keras_model("features of a chosen layer")
    backbone = find_backbone(outer)
    target = feature_layer(backbone, layer)
    rank = _output_rank(target)
    if rank is None:
        raise UsageError(f"--layer {target.name} is used more than once in {backbone.name}; "
                         "its output is ambiguous. Choose another layer.")
    features = target.output
    if pooling is not None:
        if rank != 4:
            raise UsageError(f"--layer {target.name} outputs shape {tuple(features.shape)}, "
                             "not an (h, w, C) map to pool: add --pooling none.")
        pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" \
            else keras.layers.GlobalMaxPooling2D
        features = pool(name=f"feature_{pooling}_pool")(features)
    model = keras.Model(_single(backbone.inputs), features, name=f"{backbone.name}_features")
    if backbone is not outer:
        # Layers between the outer input and the backbone (augmentation, resizing) stay in.
        feed = backbone_feed(outer, backbone)
        if feed is not None:
            model = keras.Model(_single(outer.inputs), model(feed), name=model.name)
    return model


def _single(inputs: list[Any]) -> Any:
    # A one-input model built from a list expects a list when called, and warns otherwise.
    return inputs[0] if len(inputs) == 1 else inputs


def feature_layer(backbone: Any, layer: str | None = None) -> Any:
    """The layer of `backbone` that features come from: `layer` by name, or by default the
    last one with an (h, w, C) output (the last conv stage, e.g. conv5_block3_out).

    Raises:
        UsageError: no layer of that name (the message suggests close names).
        ModelFileError: no layer has a spatial output.
    """
    if layer is not None:
        return _named_layer(backbone, layer)
    spatial = [lay for lay in backbone.layers if _output_rank(lay) == 4]
    if not spatial:
        raise ModelFileError(f"{backbone.name} has no layer with an (h, w, C) output to take "
                             "features from.")
    return spatial[-1]


def _output_rank(layer: Any) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # never called, or called more than once
        return None


def _named_layer(backbone: Any, name: str) -> Any:
    import difflib

    names = [layer.name for layer in backbone.layers]
    if name in names:
        return backbone.get_layer(name)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if close:
        hint = f"did you mean {', '.join(close)}?"
    else:
        stage_ends: dict[str, str] = {}
        for candidate in names:  # the last block output of each stage, e.g. conv4_block6_out
            if candidate.endswith("_out") and "_block" in candidate:
                stage_ends[candidate.split("_block")[0]] = candidate
        examples = ", ".join(stage_ends.values()) or ", ".join(names[-3:])
        hint = f"stage outputs are {examples}."
    raise UsageError(f"--layer '{name}' is not a layer of {backbone.name}; {hint}")


def load_network(options: ModelOptions, *, progress: bool | None = None
                 ) -> tuple[LoadedModel, Any]:
    """The network a command runs for `options`, as (loaded, network): the classifier, or
    with `include_top=False` the backbone's features pooled by `--pooling`'s rule (avg unless
    asked otherwise), exactly what `resnet extract` computes, for a registry variant and for a
    finetuned `.keras` model alike.

    Raises:
        UsageError: pooling with the classifier, or a model without one when it is asked for.
        WeightsError / ModelFileError: from loading the model.
    """
    pooling = resolve_pooling(options.pooling, include_top=options.include_top)
    if options.include_top:
        loaded = load_model(options, progress=progress)
        if loaded.labels is None:
            raise UsageError(f"{loaded.source} has no classifier; use --no-include-top "
                             "(features).")
        return loaded, loaded.keras_model("this command")
    loaded = load_model(replace(options, include_top=False, pooling=None), progress=progress)
    return loaded, build_feature_model(loaded, pooling=pooling or "none")
