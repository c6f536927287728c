"""The Keras side of `resnet finetune`: the classifier head on a backbone, what each phase
trains, and the optimizer each phase compiles with.

With pretrained weights, phase 1 trains the new head on a frozen backbone that runs in
inference mode, so its BatchNorm statistics are kept; phase 2 unfreezes the top K residual
blocks (or all of them) at a low learning rate, the BatchNorm layers still frozen. From scratch
the whole network trains, its BatchNorm layers in training mode with momentum 0.9 (Keras'
ResNets use 0.99, whose moving statistics lag behind for several epochs on a small dataset,
so validation stays at chance meanwhile). Every phase uses AdamW (no weight decay on biases
and BatchNorm), a linear learning-rate warmup then cosine decay to zero, and label smoothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from resnet_cli.errors import ModelFileError, first_line
from resnet_cli.registry import ModelSpec
from resnet_cli.training.options import FinetuneOptions, Phase

DROPOUT = 0.2
SCRATCH_BN_MOMENTUM = 0.9
WARMUP_FRACTION = 0.1  # of each phase's steps, at most WARMUP_MAX_EPOCHS epochs
WARMUP_MAX_EPOCHS = 2
NO_DECAY = ("bias", "gamma", "beta")  # variable names AdamW leaves out of weight decay


def build_classifier(spec: ModelSpec, num_classes: int, image_size: int, *, pretrained: bool,
                     dropout: float = DROPOUT) -> tuple[Any, Any]:
    """Input -> backbone (nested, named like the variant) -> average pooling -> dropout ->
    Dense softmax "predictions". Returns (model, backbone).

    With `pretrained`, the backbone is called with training=False: its BatchNorm layers stay
    in inference mode in both phases (Keras' transfer-learning guide). Otherwise it trains as
    a whole, BatchNorm included, with momentum 0.9.
    """
    import keras

    from resnet_cli.models import build_model

    backbone = build_model(spec, include_top=False, image_size=image_size)
    if not pretrained:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = backbone(inputs, training=False) if pretrained else backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_finetuned"), backbone


def block_prefixes(spec: ModelSpec) -> list[str]:
    """Layer-name prefixes of the residual blocks, bottom to top ("conv2_block1_", ...)."""
    return [f"conv{stage}_block{block}_" for stage, count in enumerate(spec.blocks, start=2)
            for block in range(1, count + 1)]


def set_trainable(model: Any, backbone: Any, spec: ModelSpec, what: str) -> None:
    """Freeze or unfreeze: "everything" (from scratch), "head" (backbone frozen), "all"
    (backbone unfrozen) or a number K of residual blocks from the top. In "all" and K, the
    BatchNormalization layers stay frozen: inference mode, statistics and scale kept."""
    import keras

    model.trainable = True
    backbone.trainable = what != "head"
    if what in ("everything", "head"):
        return
    # Keras 3 lets the outer fit's training=True override the training=False the backbone is
    # called with (functional.operation_fn), so only a frozen BatchNormalization layer reliably
    # runs in inference mode: phase 2 leaves every one of them frozen. The backbone itself
    # stays trainable (a frozen model hides all the weights inside it) and its layers are
    # frozen one by one.
    top = tuple(block_prefixes(spec)[-int(what):]) if what != "all" else ("",)
    for layer in backbone.layers:
        layer.trainable = (layer.name.startswith(top) or layer.name == "post_relu") and \
            not isinstance(layer, keras.layers.BatchNormalization)


def batch_norm_trains(phase: Phase) -> bool:
    """Whether BatchNorm layers train (and so update their statistics) in `phase`: only from
    scratch; pretrained phases keep them frozen."""
    return phase.trainable == "everything"


def compile_phase(model: Any, phase: Phase, options: FinetuneOptions, steps_per_epoch: int,
                  *, jit: Any) -> dict[str, Any]:
    """Compile `model` for `phase` (AdamW, warmup then cosine decay, label smoothing);
    returns the phase's entry of config.json."""
    import keras

    total = max(1, (phase.end - phase.first) * steps_per_epoch)
    warmup = min(int(total * WARMUP_FRACTION), WARMUP_MAX_EPOCHS * steps_per_epoch)
    if warmup:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(1, total - warmup), warmup_target=phase.lr,
            warmup_steps=warmup)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(phase.lr, decay_steps=total)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=options.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit,
    )
    return {"phase": phase.number, "epochs": [phase.first + 1, phase.end],
            "trains": phase.trainable,
            "optimizer": "AdamW", "lr": phase.lr, "weight_decay": options.weight_decay,
            "schedule": "linear warmup then cosine decay to 0", "steps": total,
            "warmup_steps": warmup,
            "trainable_weights": int(sum(math.prod(w.shape) for w in model.trainable_weights))}


def restore_phase(model: Any, backbone: Any, spec: ModelSpec, phase: Phase, checkpoint: Path,
                  opts: FinetuneOptions, steps: int, jit: Any) -> dict[str, Any]:
    """Set up `phase` as it was and load the checkpoint's weights and optimizer state.

    Raises:
        ModelFileError: a checkpoint that cannot be loaded.
    """
    set_trainable(model, backbone, spec, phase.trainable)
    info = compile_phase(model, phase, opts, steps, jit=jit)
    model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(str(checkpoint))
    except Exception as exc:
        raise ModelFileError(f"Cannot resume from {checkpoint}: {first_line(exc)}") from exc
    return info


def inference_copy(model: Any) -> Any:
    """The trained model without optimizer state (model.keras is for inference: a third of
    the checkpoint's size), computing in float32 whatever policy it trained under.

    Saved layers keep their dtype policy, so a copy left in mixed_bfloat16 would run in
    bfloat16 wherever it is loaded; in float32 it runs as `--precision` asks (the weights
    are float32 under every policy, so nothing is lost)."""
    import keras

    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    _float32_layers(copy)
    return copy


def _float32_layers(model: Any) -> None:
    model.dtype_policy = "float32"
    for layer in model.layers:
        if hasattr(layer, "layers"):  # the nested backbone
            _float32_layers(layer)
        layer.dtype_policy = "float32"
