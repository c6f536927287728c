"""`resnet summary`: what a model is made of, read from its layers without running it.

Parameters come from the built Keras layers (the totals equal `model.count_params()`), and
multiply-accumulates are computed from each layer's kernel and output shape, so a summary costs
no more than building the model: nothing is traced, compiled or run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from resnet_cli.errors import UsageError
from resnet_cli.loaded import LoadedModel
from resnet_cli.models import ModelOptions

Shape = tuple[int | None, ...]

PREPROCESSING = {
    "caffe": "caffe: RGB to BGR, minus the ImageNet mean (103.939, 116.779, 123.68), no scaling",
    "tf": "tf: scaled to -1..1 (x / 127.5 - 1)",
    "torch": "torch: scaled to 0..1, minus the ImageNet mean, divided by its std",
}
STEM, HEAD = "stem", "head"
_STAGE_RE = re.compile(r"^conv([2-5])_block(\d+)_")
MACS_NOTE = ("convolutions and dense layers (kernel x output positions); batch norm, "
             "activations, pooling and additions are not multiply-accumulates and not counted")


@dataclass(frozen=True)
class LayerInfo:
    """One layer: `name` is what `extract --layer` takes."""

    name: str
    type: str
    output_shape: Shape | None  # None when Keras cannot tell (a shared layer)
    params: int
    macs: int | None  # None when its spatial size is unknown
    stage: str


@dataclass(frozen=True)
class StageInfo:
    """A group of layers: the stem, one stage of residual blocks (conv2_x..conv5_x), the head."""

    name: str
    blocks: int
    output_shape: Shape | None
    params: int
    macs: int | None


@dataclass(frozen=True)
class ModelSummary:
    """Everything `resnet summary` shows."""

    model: str  # registry variant (a finetuned model's base)
    source: str
    include_top: bool
    image_size: int
    input_shape: Shape
    output_shape: Shape
    preprocess_mode: str
    total_params: int
    trainable_params: int
    non_trainable_params: int
    macs: int | None
    weight_bytes: int
    top1: float  # published ImageNet accuracy of the variant (Keras documentation)
    top5: float
    stages: tuple[StageInfo, ...]
    layers: tuple[LayerInfo, ...] | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None  # a finetuned model's own classes
    backbone: str | None = None  # nested backbone model inside a finetuned model
    finetuned: bool = False

    @property
    def preprocessing(self) -> str:
        return PREPROCESSING.get(self.preprocess_mode, self.preprocess_mode)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        data: dict[str, Any] = {
            "model": self.model, "source": self.source, "finetuned": self.finetuned,
            "include_top": self.include_top, "image_size": self.image_size,
            "input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
            "preprocess_mode": self.preprocess_mode, "preprocessing": self.preprocessing,
            "params": {"total": self.total_params, "trainable": self.trainable_params,
                       "non_trainable": self.non_trainable_params},
            "macs": self.macs, "macs_counted": MACS_NOTE, "weight_bytes": self.weight_bytes,
            "published_imagenet": {"top1": self.top1, "top5": self.top5,
                                   "source": f"Keras documentation, {self.model} with "
                                             "ImageNet weights"},
            "num_classes": self.num_classes,
            "stages": [{"name": s.name, "blocks": s.blocks, "output_shape": _list(s.output_shape),
                        "params": s.params, "macs": s.macs} for s in self.stages],
        }
        if self.finetuned:
            data["backbone"] = self.backbone
            data["class_names"] = list(self.class_names or ())
        if self.layers is not None:
            data["layers"] = [{"name": x.name, "type": x.type, "stage": x.stage,
                               "output_shape": _list(x.output_shape), "params": x.params,
                               "macs": x.macs} for x in self.layers]
        return data


def _list(shape: Shape | None) -> list[int | None] | None:
    return None if shape is None else list(shape)


def summarize(options: ModelOptions, *, layers: bool = False, progress: bool = True
              ) -> ModelSummary:
    """Build (or load) the model described by `options` and summarize it.

    With `weights="none"` nothing is read or downloaded: the architecture needs no weights.
    With `include_top=False` it is the pooled backbone that `resnet extract` runs
    (`backbones.load_network`), for a finetuned `.keras` model too.

    Raises:
        UsageError / WeightsError / ModelFileError: from `models.load_model`.
    """
    from resnet_cli.backbones import load_network
    from resnet_cli.runtimes import exported_runtime

    if exported_runtime(options.weights) is not None:
        raise UsageError(f"summary needs a Keras model; {options.weights} is an exported "
                         "file. Use the model it was exported from.")
    loaded, network = load_network(options, progress=progress)
    return summarize_loaded(loaded, network=network, layers=layers)


def summarize_loaded(loaded: LoadedModel, *, network: Any = None, layers: bool = False
                     ) -> ModelSummary:
    """Summarize an already loaded model, or `network` built from it (its backbone).

    Raises:
        UsageError: an exported .tflite/.onnx file (it has no Keras layers to list).
    """
    model = network if network is not None else loaded.keras_model("summary")
    flat, backbone = _flatten(model)
    infos = _layer_infos(flat)
    stages = _stages(infos)
    macs_each = [info.macs for info in infos]
    total_macs = None if any(m is None for m in macs_each) else sum(m or 0 for m in macs_each)
    trainable = sum(_size(w) for w in model.trainable_weights)
    non_trainable = sum(_size(w) for w in model.non_trainable_weights)
    labels = loaded.labels if model is loaded.model else None
    own_names = (tuple(label.name for label in labels)
                 if labels is not None and labels and labels[0].wnid is None else None)
    spec = loaded.spec
    return ModelSummary(
        model=spec.name, source=loaded.source, include_top=labels is not None,
        image_size=loaded.image_size, input_shape=_shape(model.input_shape),
        output_shape=_shape(model.output_shape), preprocess_mode=loaded.preprocess_mode,
        total_params=int(model.count_params()), trainable_params=trainable,
        non_trainable_params=non_trainable, macs=total_macs,
        weight_bytes=sum(_size(w) * _itemsize(w.dtype) for w in model.weights),
        top1=spec.top1, top5=spec.top5, stages=stages,
        layers=tuple(infos) if layers else None,
        num_classes=len(labels) if labels is not None else None,
        class_names=own_names, backbone=backbone, finetuned=loaded.source.endswith(".keras"),
    )


def _flatten(model: Any) -> tuple[list[Any], str | None]:
    """The model's layers with nested models (a finetuned model's backbone) expanded."""
    flat: list[Any] = []
    backbone = None
    for layer in model.layers:
        if hasattr(layer, "layers"):
            inner, _ = _flatten(layer)
            flat.extend(inner)
            backbone = backbone or layer.name
        else:
            flat.append(layer)
    return flat, backbone


def _layer_infos(layers: list[Any]) -> list[LayerInfo]:
    """Each layer with its stage: layers named convN_blockM_* set the stage; unnamed layers
    inside a stage (V2's shortcut pooling) belong to it; everything after the last is the head."""
    matches = [_STAGE_RE.match(layer.name) for layer in layers]
    last = max((i for i, m in enumerate(matches) if m), default=-1)
    infos = []
    stage = STEM
    for index, (layer, match) in enumerate(zip(layers, matches, strict=True)):
        if match:
            stage = f"conv{match.group(1)}_x"
        elif index > last >= 0:
            stage = HEAD
        shape = _output_shape(layer)
        infos.append(LayerInfo(name=layer.name, type=type(layer).__name__, output_shape=shape,
                               params=_params(layer), macs=layer_macs(layer, shape),
                               stage=stage))
    return infos


def _params(layer: Any) -> int:
    try:
        return int(layer.count_params())
    except ValueError:  # a layer that was never built has no weights yet
        return 0


def _stages(infos: list[LayerInfo]) -> tuple[StageInfo, ...]:
    order: list[str] = []
    members: dict[str, list[LayerInfo]] = {}
    for info in infos:
        if info.stage not in members:
            order.append(info.stage)
            members[info.stage] = []
        members[info.stage].append(info)
    stages = []
    for name in order:
        group = members[name]
        blocks = {m.group(2) for info in group if (m := _STAGE_RE.match(info.name))}
        macs = [info.macs for info in group]
        stages.append(StageInfo(
            name=name, blocks=len(blocks), output_shape=group[-1].output_shape,
            params=sum(info.params for info in group),
            macs=None if any(m is None for m in macs) else sum(m or 0 for m in macs)))
    return tuple(stages)


def layer_macs(layer: Any, output_shape: Shape | None) -> int | None:
    """Multiply-accumulates of one layer for one image: kernel size x output positions.

    Conv (any rank, grouped too): kh*kw*(cin/groups)*cout per output position; depthwise:
    kh*kw*cin*multiplier per position; separable: both; transposed conv: kernel x input
    positions; dense: in*out per position. Every other layer counts 0.
    """
    import keras

    layers = keras.layers
    positions: int | None = None
    if output_shape is not None and None not in output_shape[1:-1]:
        positions = math.prod(d for d in output_shape[1:-1] if d is not None)
    transpose = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
    if isinstance(layer, transpose):
        in_shape = _shape(layer.input.shape)
        if None in in_shape[1:-1]:
            return None
        return int(math.prod(layer.kernel.shape)) * math.prod(d or 1 for d in in_shape[1:-1])
    if isinstance(layer, (layers.SeparableConv1D, layers.SeparableConv2D)):
        if positions is None:
            return None
        return int(math.prod(layer.depthwise_kernel.shape)
                   + math.prod(layer.pointwise_kernel.shape)) * positions
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return None if positions is None else int(math.prod(layer.kernel.shape)) * positions
    if isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Dense)):
        if getattr(layer, "kernel", None) is None:
            return 0
        if positions is None:
            return None
        return int(math.prod(layer.kernel.shape)) * positions
    return 0


def _output_shape(layer: Any) -> Shape | None:
    try:
        output = layer.output
    except (AttributeError, ValueError):  # used at several places: no single output
        return None
    if isinstance(output, (list, tuple)):
        return None
    return _shape(output.shape)


def _shape(shape: Any) -> Shape:
    if shape and isinstance(shape[0], (list, tuple)):  # several inputs: show the first
        shape = shape[0]
    return tuple(None if d is None else int(d) for d in shape)


def _size(weight: Any) -> int:
    return math.prod(int(d) for d in weight.shape)


def _itemsize(dtype: Any) -> int:
    import numpy as np

    return int(np.dtype(str(dtype)).itemsize)
