"""`resnet explain`: Grad-CAM heatmaps showing where the model looked for a class.

Grad-CAM (Selvaraju et al., 2017) weighs the feature map of a convolutional layer by how much
each channel raises the score of a class: the channel weights are the spatial mean of the
score's gradient with respect to the map, and the heatmap is the ReLU of the weighted sum of
the channels, scaled to [0, 1] per image. The score is the class's logit (the pre-softmax
output of the final Dense layer) when the model ends in a Dense layer with a softmax, as every
ResNet classifier and every finetuned model here does; otherwise it is the class's probability.

One Keras model maps the preprocessed input to [the chosen layer's feature map, the input of
the final Dense layer]; the logits are computed from the latter with that layer's weights. For a
finetuned `.keras` model, whose ResNet is a nested model, the model is rebuilt around it: the
backbone's part up to its output and the chosen layer becomes one inner model, and the head
layers after it are applied again to its output, so the gradient flows from the head into the
nested layer. The whole step (preprocessing, forward pass, top classes, gradients, heatmaps)
is one compiled function with a fixed batch shape, and goes through the project's one
inference path (`inference.iter_batches`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnet_cli.backbones import feature_layer
from resnet_cli.errors import ModelFileError, UsageError
from resnet_cli.folding import fold_batch_norm
from resnet_cli.graph import backbone_feed, find_backbone, head_after
from resnet_cli.images import ResizeMode
from resnet_cli.inference import CompiledPredictor, fitted_batch_size, iter_batches
from resnet_cli.labels import ClassLabel, resolve_class
from resnet_cli.loaded import FailureHandler, LoadedModel

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class ClassHeatmap:
    """The Grad-CAM heatmap of one class for one image.

    Attributes:
        rank: 1 for the top prediction (or the class asked for), 2 for the next, ...
        heatmap: float32 (h, w) in [0, 1] at the layer's own resolution, in the coordinates of
            the model's input square; all zeros when nothing in the map raises the score.
    """

    rank: int
    index: int
    label: str
    probability: float
    heatmap: np.ndarray


@dataclass(frozen=True)
class Explanation:
    """The outcome for one input: the heatmaps of its explained classes and its top
    prediction, or the reason it failed."""

    path: str
    classes: tuple[ClassHeatmap, ...] = ()
    top_index: int = -1
    top_label: str = ""
    top_probability: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ExplainSetup:
    """What an explain run computes, resolved and checked before any image is read."""

    layer: str
    map_size: tuple[int, int]  # (h, w) of the layer's output
    class_index: int | None  # the class asked for, or None for the top predictions
    top_k: int
    score: str  # "logit" or "probability": what the gradient is taken of
    resize: ResizeMode  # how images were brought to the model's input square


class GradCamPredictor(CompiledPredictor):
    """A `BatchPredictor` whose rows are Grad-CAM results, packed as float32:

    `[top-1 index, top-1 probability, k class indices, k probabilities, k heatmaps (h*w each)]`

    (class indices are exact in float32 below 2**24). `unpack` splits a row again.
    """

    def __init__(self, loaded: LoadedModel, setup: ExplainSetup, batch_size: int,
                 gradient_model: Any, dense: Any) -> None:
        self.batch_size = batch_size
        self.shares_cpu = "CPU" in loaded.device.upper()
        self.setup = setup
        # Kept on `loaded` like inference.Predictor's: a second run in the same process (a
        # benchmark, the tests) reuses the folded model and the traced function.
        key = ("grad_cam", id(gradient_model), batch_size, setup.top_k, setup.class_index,
               loaded.image_size, loaded.preprocess_mode)
        if key not in loaded.compiled:
            loaded.compiled[key] = _compile_grad_cam(
                fold_batch_norm(gradient_model), dense, setup, batch_size, loaded.image_size,
                loaded.preprocess_mode)
        self._run = loaded.compiled[key]

    def unpack(self, row: np.ndarray) -> tuple[int, float, list[tuple[int, float, np.ndarray]]]:
        """(top index, top probability, [(class index, probability, heatmap (h, w))...])."""
        k, (h, w) = self.setup.top_k, self.setup.map_size
        indices, probs = row[2:2 + k], row[2 + k:2 + 2 * k]
        maps = row[2 + 2 * k:].reshape(k, h, w)
        return int(row[0]), float(row[1]), [(int(indices[i]), float(probs[i]), maps[i])
                                             for i in range(k)]


def explain_images(
    paths: Sequence[str],
    loaded: LoadedModel,
    *,
    target_class: str | None = None,
    top_k: int = 1,
    layer: str | None = None,
    batch_size: int = 32,
    resize: ResizeMode | None = None,
    progress: bool = True,
    on_failure: FailureHandler | None = None,
) -> tuple[ExplainSetup, Iterator[Explanation]]:
    """Grad-CAM heatmaps for each image, in input order, batch by batch.

    Each image gets the heatmap of its top prediction, of `target_class` (a class name, a
    WordNet id or an index), or of each of its `top_k` predictions. The setup is resolved
    (and every argument checked) before this returns; images are read as the iterator runs.
    An input that cannot be read yields an `Explanation` with its `error` (and goes to
    `on_failure`). `resize` defaults to what a finetuned model was trained with, else crop.

    Raises:
        UsageError: no classifier, an unknown class, `top_k` out of range or together with
            `target_class`, or a `layer` that is not an (h, w, C) layer of the backbone.
        ModelFileError: a model whose classifier head cannot be rebuilt around its backbone.
    """
    predictor = grad_cam_predictor(loaded, target_class=target_class, top_k=top_k,
                                   layer=layer, resize=resize,
                                   batch_size=fitted_batch_size(batch_size, len(paths)))
    setup, labels = predictor.setup, loaded.labels or ()  # (labels checked by it)
    return setup, _iter_explanations(paths, loaded, labels, predictor, resize=setup.resize,
                                     progress=progress, on_failure=on_failure)


def grad_cam_predictor(loaded: LoadedModel, *, target_class: str | None = None,
                       top_k: int = 1, layer: str | None = None,
                       resize: ResizeMode | None = None, batch_size: int = 1
                       ) -> GradCamPredictor:
    """The Grad-CAM predictor of `explain_images` (its `setup` resolved and checked), for
    callers that feed it decoded images themselves (`resnet serve`).

    Raises:
        UsageError / ModelFileError: as `explain_images`.
    """
    loaded.keras_model("explain (gradients through its layers)")
    labels = loaded.labels
    if labels is None:
        raise UsageError("explain needs a model with its classifier.")
    if not 1 <= top_k <= len(labels):
        raise UsageError(f"--top-k must be between 1 and {len(labels)}; got {top_k}.")
    class_index = None
    if target_class is not None:
        if top_k != 1:
            raise UsageError("--class and --top-k explain different classes; give one of them.")
        class_index = resolve_class(target_class, labels)
    key = ("grad_cam_model", layer)  # the model the compiled functions are keyed by
    if key not in loaded.compiled:
        loaded.compiled[key] = build_gradient_model(loaded, layer=layer)
    gradient_model, dense, target = loaded.compiled[key]
    h, w = (int(d) for d in gradient_model.outputs[0].shape[1:3])
    setup = ExplainSetup(layer=target.name, map_size=(h, w), class_index=class_index,
                         top_k=top_k, score="logit" if dense is not None else "probability",
                         resize=loaded.resize_or_own(resize))
    return GradCamPredictor(loaded, setup, batch_size, gradient_model, dense)


def _iter_explanations(paths: Sequence[str], loaded: LoadedModel,
                       labels: tuple[ClassLabel, ...], predictor: GradCamPredictor, *,
                       resize: ResizeMode, progress: bool, on_failure: FailureHandler | None
                       ) -> Iterator[Explanation]:
    for batch in iter_batches(paths, predictor, image_size=loaded.image_size, resize=resize,
                              progress=progress, on_failure=on_failure, desc="explain"):
        rows = iter(batch.outputs)
        for position, path in enumerate(batch.paths):
            if position in batch.errors:
                yield Explanation(path=path, error=batch.errors[position].reason)
                continue
            top, top_prob, classes = predictor.unpack(next(rows))
            yield Explanation(
                path=path, top_index=top, top_label=labels[top].name, top_probability=top_prob,
                classes=tuple(ClassHeatmap(rank=rank, index=i, label=labels[i].name,
                                           probability=p, heatmap=heatmap)
                              for rank, (i, p, heatmap) in enumerate(classes, start=1)))


def build_gradient_model(loaded: LoadedModel, *, layer: str | None = None
                         ) -> tuple[Any, Any, Any]:
    """A Keras model from preprocessed images to [feature map of `layer`, scores], sharing
    `loaded`'s weights; returns (model, final Dense layer or None, the feature layer).

    With a final softmax Dense layer, the scores are that layer's *input* (apply its kernel and
    bias for the logits); otherwise they are the model's output (probabilities). `layer`
    defaults to the backbone's last (h, w, C) layer: `conv5_block3_out` for V1 models,
    `post_relu` for V2. For a finetuned model the backbone is nested: the model is rebuilt as
    [layers before it] -> [the backbone up to its output and `layer`] -> the head layers.

    Raises:
        UsageError: `layer` unknown, ambiguous, or without an (h, w, C) output.
        ModelFileError: the layers after a nested backbone are not a simple chain.
    """
    import keras

    outer = loaded.keras_model("explain")
    backbone = find_backbone(outer)
    target = feature_layer(backbone, layer)
    try:
        feature = target.output
    except (AttributeError, ValueError):  # called more than once: no single output
        raise UsageError(f"--layer {target.name} is used more than once in {backbone.name}; "
                         "its output is ambiguous. Choose another layer.") from None
    if len(feature.shape) != 4:
        raise UsageError(f"--layer {target.name} outputs shape {tuple(feature.shape)}, not an "
                         "(h, w, C) map. Choose a convolutional layer, e.g. a stage output.")
    last = outer.layers[-1]
    dense = last if isinstance(last, keras.layers.Dense) and \
        last.activation is keras.activations.softmax else None
    if backbone is outer:
        scores = last.input if dense is not None else outer.outputs[0]
        return keras.Model(outer.inputs[0], [feature, scores], name="grad_cam"), dense, target

    try:
        head = head_after(outer, backbone)
        feed = backbone_feed(outer, backbone)
    except ModelFileError as exc:
        raise ModelFileError(f"Cannot rebuild {outer.name} for Grad-CAM: {exc}") from None
    if dense is not None:
        head = head[:-1]
    # The backbone up to both the chosen layer and its own output, as one inner model.
    ends = [feature] if backbone.outputs[0] is feature else [feature, backbone.outputs[0]]
    inner = keras.Model(backbone.inputs[0], ends, name=f"{backbone.name}_grad_cam")
    image = keras.Input(tuple(outer.inputs[0].shape[1:]), name="image")
    x = image
    if feed is not None:
        # Layers between the outer input and the backbone (resizing and the like) stay in.
        x = keras.Model(outer.inputs[0], feed, name="before_backbone")(x)
    fmap, *rest = inner(x)
    x = rest[0] if rest else fmap
    for head_layer in head:
        x = head_layer(x)
    if len(x.shape) != 2:
        raise ModelFileError(f"Cannot rebuild {outer.name} for Grad-CAM: its output has shape "
                             f"{tuple(x.shape)}, not one score per class.")
    return keras.Model(image, [fmap, x], name="grad_cam"), dense, target


def _compile_grad_cam(model: Any, dense: Any, setup: ExplainSetup, batch_size: int,
                      image_size: int, mode: str) -> Any:
    """The compiled Grad-CAM step: uint8 images -> packed rows (see `GradCamPredictor`)."""
    import tensorflow as tf
    from keras.applications import imagenet_utils

    spec = tf.TensorSpec((batch_size, image_size, image_size, 3), tf.uint8)
    k = setup.top_k
    kernel, bias = (dense.kernel, dense.bias) if dense is not None else (None, None)

    @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]
    def step(images: Any) -> Any:
        x = imagenet_utils.preprocess_input(tf.cast(images, tf.float32), mode=mode)
        with tf.GradientTape(persistent=k > 1) as tape:
            # Gradients are taken w.r.t. the model's own feature map (a cast of it, under
            # mixed precision, would be a new tensor the scores do not depend on).
            raw_fmap, scores = model(x, training=False)
            tape.watch(raw_fmap)
            scores = tf.cast(scores, tf.float32)
            if kernel is not None:
                scores = tf.matmul(scores, tf.cast(kernel, tf.float32))
                if bias is not None:
                    scores = scores + tf.cast(bias, tf.float32)
                probs = tf.nn.softmax(scores)
            else:
                probs = scores
            top = tf.math.top_k(probs, k=k)
            if setup.class_index is not None:
                classes = tf.fill([batch_size, 1], setup.class_index)
                chosen = tf.gather(probs, classes, batch_dims=1)
            else:
                classes, chosen = top.indices, top.values
            picked = [tf.reduce_sum(tf.gather(scores, classes[:, i], batch_dims=1))
                      for i in range(k)]
        fmap = tf.cast(raw_fmap, tf.float32)
        maps = []
        for i in range(k):
            grads = tf.cast(tape.gradient(picked[i], raw_fmap), tf.float32)
            weights = tf.reduce_mean(grads, axis=(1, 2))
            cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", fmap, weights))
            peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
            maps.append(tf.reshape(tf.math.divide_no_nan(cam, peak), [batch_size, -1]))
        del tape
        return tf.concat([
            tf.cast(top.indices[:, :1], tf.float32), top.values[:, :1],
            tf.cast(classes, tf.float32), chosen, *maps], axis=1)

    return step
