"""The ResNet inside a model, and models that take features from it.

`find_backbone` finds the ResNet in a plain application model or in a finetuned `.keras`
model (where it is nested under the classifier head); `build_feature_model` cuts a model from
preprocessed images to the features of one of its layers (`feature_layer`), as `extract`,
`export --features` and `explain` need.

Keras is imported inside functions only, so importing this module is cheap.
"""

from __future__ import annotations

from typing import Any

from resnet_cli.devices import import_tensorflow
from resnet_cli.errors import ModelFileError, UsageError
from resnet_cli.models import LoadedModel, validate_pooling


def find_backbone(model: Any) -> Any:
    """The ResNet inside `model`: a nested model named like a variant (finetuned `.keras`
    models), the only nested model, or `model` itself (a plain application model)."""
    import keras

    from resnet_cli.registry import MODELS

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    for layer in nested:
        if layer.name in MODELS:
            return layer
    if nested:
        return max(nested, key=lambda layer: len(layer.layers))
    return model



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
    outer = loaded.model
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
        nodes = getattr(backbone, "_inbound_nodes", [])
        feeds = list(nodes[0].input_tensors) if len(nodes) == 1 else []
        if len(feeds) == 1 and not any(feeds[0] is x for x in outer.inputs):
            model = keras.Model(_single(outer.inputs), model(feeds[0]), name=model.name)
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
