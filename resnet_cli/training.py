"""`resnet finetune`: train a ResNet classifier on a folder-per-class dataset.

The recipe is the one of Keras' transfer-learning guide. With pretrained weights, phase 1
trains a new head (global average pooling, dropout, dense softmax) on a frozen backbone that
runs in inference mode, so its BatchNorm statistics are kept; phase 2 unfreezes the top K
residual blocks (or all of them) at a low learning rate, the BatchNorm layers still frozen and
so in inference mode.
With `--weights none` the whole network trains from the start in one phase, its BatchNorm
layers in training mode with momentum 0.9 (Keras' ResNets use 0.99, whose moving statistics
lag behind for several epochs on a small dataset, so validation stays at chance meanwhile).
Every phase uses AdamW (no weight decay on biases and BatchNorm), a linear learning-rate warmup
then cosine decay to zero, and label smoothing.

A run folder holds `model.keras` (the whole model, taking preprocessed input like the Keras
applications), `config.json` (every resolved option, package versions and the model card that
`classify`, `extract`, `summary` and `evaluate` read), `labels.txt`, `history.csv`,
`metrics.json` and `checkpoints/` (the last epoch's model with its optimizer state, for
`--resume`). Every file is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from resnet_cli.datasets import (
    ClassFolders,
    DecodedImages,
    ImageSource,
    StreamedImages,
    decode_all,
    fits_in_memory,
    make_augmenter,
    make_dataset,
    scan_class_folders,
    source_labels,
    source_size,
    split_stratified,
)
from resnet_cli.errors import (
    DatasetError,
    ImageError,
    ModelFileError,
    OutputError,
    ResnetCliError,
    UsageError,
    WeightsError,
    first_line,
)
from resnet_cli.evaluate import Evaluation, evaluate_files
from resnet_cli.images import ResizeMode
from resnet_cli.models import (
    CARD_FILENAME,
    ModelCard,
    dtype_policy,
    find_backbone,
    model_card_dict,
)
from resnet_cli.outputs import atomic_open, atomic_path
from resnet_cli.registry import DEFAULT_MODEL, ModelSpec, get_spec

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "mirrored", "multiworker")
CLASS_WEIGHTS = ("none", "auto")
DROPOUT = 0.2
SCRATCH_BN_MOMENTUM = 0.9
WARMUP_FRACTION = 0.1  # of each phase's steps, at most WARMUP_MAX_EPOCHS epochs
WARMUP_MAX_EPOCHS = 2
NO_DECAY = ("bias", "gamma", "beta")  # variable names AdamW leaves out of weight decay
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
RUN_FILES = ("model.keras", "labels.txt", "history.csv", "metrics.json", CARD_FILENAME)
HISTORY_FIELDS = ("epoch", "phase", "lr", "loss", "accuracy", "val_loss", "val_accuracy",
                  "seconds")
# Options that define a run: --resume refuses a command line that changes one of them.
RUN_DEFINING = ("classes", "model", "weights", "image_size", "epochs", "batch_size", "lr",
                "val_split", "val_dir", "augment", "flip", "fine_tune_epochs", "fine_tune_lr",
                "unfreeze", "label_smoothing", "class_weight", "weight_decay", "seed", "resize",
                "mixed_precision")


class Strategy(str, Enum):
    """`--strategy`: how training is spread over devices."""

    auto = "auto"
    mirrored = "mirrored"
    multiworker = "multiworker"


class ClassWeight(str, Enum):
    """`--class-weight`: none, or auto (balanced: rare classes weigh more in the loss)."""

    none = "none"
    auto = "auto"


class TrainingInterrupted(ResnetCliError):
    """Ctrl-C during training; the last completed epoch's checkpoint is kept."""

    exit_code = 130


@dataclass(frozen=True)
class FinetuneOptions:
    """What `resnet finetune` was asked to do. None means "resolved at run time".

    Attributes:
        weights: "imagenet", "none", a Keras weights file (.h5, .weights.h5) of the variant
            with or without its classifier, or a `.keras` model from an earlier run.
        fine_tune_epochs: phase-2 epochs; None: half of `epochs` with pretrained weights,
            0 with `weights="none"`.
        unfreeze: "all", or the number of residual blocks (from the top) phase 2 trains.
        memory_budget: bytes of decoded pixels kept in memory (None: 4 GiB, at most a quarter
            of the RAM); larger datasets are decoded on the fly.
    """

    data_dir: str
    classes: int
    run_dir: str | None = None
    model: str = DEFAULT_MODEL
    weights: str = "imagenet"
    image_size: int | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    val_split: float = 0.2
    val_dir: str | None = None
    augment: bool = True
    flip: bool = True
    fine_tune_epochs: int | None = None
    fine_tune_lr: float = 1e-5
    unfreeze: str = "all"
    label_smoothing: float = 0.1
    class_weight: str = "none"
    weight_decay: float = 0.05
    seed: int = 0
    resize: str = "crop"
    keep_checkpoints: int = 1
    resume: bool = False
    overwrite: bool = False
    mixed_precision: bool = False
    strategy: str = "auto"
    device: str = "auto"
    memory_budget: int | None = None


@dataclass(frozen=True)
class EpochRecord:
    """One row of history.csv. `epoch` counts from 1 over both phases."""

    epoch: int
    phase: int
    lr: float
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float


@dataclass(frozen=True)
class FinetuneResult:
    """A finished run: where it is, what it trained on, how it went."""

    run_dir: str
    model_path: str
    class_names: tuple[str, ...]
    train_images: int
    val_images: int
    skipped: tuple[ImageError, ...]
    history: tuple[EpochRecord, ...]
    metrics: Evaluation | None
    seconds: float  # training time of this invocation (fit calls, checkpoints included)
    resumed_from: int | None = None
    total_epochs: int = 0


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one optimizer: epochs `first + 1` to `end`."""

    number: int
    first: int
    end: int
    lr: float
    trainable: str  # "everything", "head", "all", or a block count


# ----- options ----------------------------------------------------------------------------

def resolve_options(options: FinetuneOptions) -> FinetuneOptions:
    """Check every option and fill in the run-time defaults (no TensorFlow import).

    Raises:
        UsageError: a value or combination that cannot work.
    """
    spec = get_spec(options.model)
    weights = options.weights.strip()
    scratch = weights.lower() == "none"
    if not scratch and weights.lower() != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"--weights: no such file '{weights}'. Use imagenet, none, or a "
                             "weights/.keras file.")
        if not path.name.endswith((".keras", ".h5", ".hdf5")):
            raise UsageError(f"--weights {weights}: expected a .keras model, or a Keras "
                             ".weights.h5/.h5 weights file.")
        if path.name.endswith(".keras"):
            from resnet_cli.models import read_model_card

            card = read_model_card(path)
            if card is not None and card.base_model != spec.name:
                raise UsageError(f"--weights {weights} was finetuned from {card.base_model}; "
                                 f"add --model {card.base_model}.")
    size = options.image_size or spec.default_size
    if size < spec.min_size:
        raise UsageError(f"--image-size must be at least {spec.min_size}; got {size}.")
    checks = [
        (options.classes >= 2, f"--classes must be at least 2; got {options.classes}."),
        (options.epochs >= 1, f"--epochs must be at least 1; got {options.epochs}."),
        (options.batch_size >= 1, f"--batch-size must be at least 1; got {options.batch_size}."),
        (options.lr > 0, f"--lr must be positive; got {options.lr}."),
        (options.fine_tune_lr > 0, f"--fine-tune-lr must be positive; got {options.fine_tune_lr}."),
        (0 <= options.val_split < 1, f"--val-split must be in [0, 1); got {options.val_split}."),
        (0 <= options.label_smoothing < 1,
         f"--label-smoothing must be in [0, 1); got {options.label_smoothing}."),
        (options.weight_decay >= 0,
         f"--weight-decay must be 0 or more; got {options.weight_decay}."),
        (options.keep_checkpoints >= 0,
         f"--keep-checkpoints must be 0 (all) or more; got {options.keep_checkpoints}."),
        (options.class_weight in CLASS_WEIGHTS,
         f"--class-weight must be none or auto; got {options.class_weight}."),
        (options.strategy in STRATEGIES,
         f"--strategy must be auto, mirrored or multiworker; got {options.strategy}."),
        (options.resize in tuple(m.value for m in ResizeMode),
         f"--resize must be crop or squash; got {options.resize}."),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    fine_tune = options.fine_tune_epochs
    if fine_tune is None:
        fine_tune = 0 if scratch else max(1, options.epochs // 2)
    elif fine_tune < 0:
        raise UsageError(f"--fine-tune-epochs must be 0 or more; got {fine_tune}.")
    elif fine_tune > 0 and scratch:
        raise UsageError("--fine-tune-epochs needs pretrained weights: with --weights none the "
                         "whole network trains for --epochs from the start. Drop it, or add "
                         "those epochs to --epochs.")
    unfreeze = parse_unfreeze(options.unfreeze, spec)
    if options.strategy == "multiworker" and not os.environ.get("TF_CONFIG"):
        raise UsageError("--strategy multiworker reads the cluster from the TF_CONFIG "
                         "environment variable, which is not set (see `resnet finetune --help`).")
    if options.resume and options.overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: pick one.")
    if options.resume and not options.run_dir:
        raise UsageError("--resume needs the run to continue: add -o RUN_DIR.")
    run_dir = options.run_dir or default_run_dir(options.data_dir, spec.name)
    return dataclasses.replace(options, model=spec.name, weights=weights, image_size=size,
                               fine_tune_epochs=fine_tune, unfreeze=unfreeze, run_dir=run_dir)


def parse_unfreeze(value: str, spec: ModelSpec) -> str:
    """`all`, or a number of residual blocks between 1 and the variant's total."""
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    total = sum(spec.blocks)
    if not text.isdigit() or not 1 <= int(text) <= total:
        raise UsageError(f"--unfreeze must be all or a number of blocks from 1 to {total} "
                         f"({spec.name}); got {value}.")
    return str(int(text))


def default_run_dir(data_dir: str, model: str) -> str:
    """runs/<dataset>-<model>-<YYYYmmdd-HHMMSS>."""
    name = Path(data_dir).expanduser().resolve().name or "data"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{name}-{model}-{stamp}")


def phase_plan(options: FinetuneOptions) -> list[Phase]:
    """The phases of a resolved run."""
    if options.weights.lower() == "none":
        return [Phase(1, 0, options.epochs, options.lr, "everything")]
    phases = [Phase(1, 0, options.epochs, options.lr, "head")]
    if options.fine_tune_epochs:
        phases.append(Phase(2, options.epochs, options.epochs + options.fine_tune_epochs,
                            options.fine_tune_lr, options.unfreeze))
    return phases


# ----- run folder -------------------------------------------------------------------------

def _prepare_run_dir(options: FinetuneOptions, explicit: frozenset[str]
                     ) -> tuple[FinetuneOptions, dict[str, Any] | None]:
    """Check the run folder; for --resume, return the stored options and checkpoint state."""
    run_dir = Path(str(options.run_dir))
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"-o {run_dir} is a file; give a folder for the run.")
    if options.resume:
        config_path = run_dir / CARD_FILENAME
        state_path = run_dir / CHECKPOINT_DIR / STATE_FILE
        if not config_path.is_file() or not state_path.is_file():
            raise OutputError(f"Nothing to resume in {run_dir}: no completed epoch "
                              f"({CHECKPOINT_DIR}/{STATE_FILE} is missing). Start it again "
                              "with --overwrite.")
        try:
            stored = json.loads(config_path.read_text())["options"]
            state = json.loads(state_path.read_text())
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputError(f"Cannot resume {run_dir}: {exc}") from exc
        changed = [f"--{key.replace('_', '-')} {getattr(options, key)} (the run has "
                   f"{stored.get(key)})" for key in RUN_DEFINING
                   if key in explicit and _differs(getattr(options, key), stored.get(key))]
        if changed:
            raise UsageError(f"--resume continues {run_dir} with its own options; "
                             f"{'; '.join(changed)}. Drop them or start a new run.")
        known = {f.name for f in dataclasses.fields(FinetuneOptions)}
        merged = {k: v for k, v in stored.items() if k in known and k in RUN_DEFINING}
        return dataclasses.replace(options, **merged), state
    if not is_chief():
        return options, None  # only the chief writes RUN_DIR (other workers use scratch)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not options.overwrite:
            raise OutputError(f"{run_dir} already exists and is not empty; pass --resume to "
                              "continue its run, --overwrite to replace it, or another -o.")
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    return options, None


def _differs(given: Any, stored: Any) -> bool:
    if isinstance(given, float) or isinstance(stored, float):
        try:
            return not math.isclose(float(given), float(stored), rel_tol=1e-9)
        except (TypeError, ValueError):
            return True
    return str(given) != str(stored)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("resnet", "tensorflow", "keras", "numpy", "pillow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def _write_history(path: Path, history: list[EpochRecord]) -> None:
    with atomic_open(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HISTORY_FIELDS)
        for row in history:
            writer.writerow([row.epoch, row.phase, f"{row.lr:.6g}", f"{row.loss:.6f}",
                             f"{row.accuracy:.6f}",
                             "" if row.val_loss is None else f"{row.val_loss:.6f}",
                             "" if row.val_accuracy is None else f"{row.val_accuracy:.6f}",
                             f"{row.seconds:.2f}"])


def read_history(path: Path) -> list[EpochRecord]:
    """The rows of a history.csv written by a finetune run."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows.append(EpochRecord(
                epoch=int(row["epoch"]), phase=int(row["phase"]), lr=float(row["lr"]),
                loss=float(row["loss"]), accuracy=float(row["accuracy"]),
                val_loss=float(row["val_loss"]) if row["val_loss"] else None,
                val_accuracy=float(row["val_accuracy"]) if row["val_accuracy"] else None,
                seconds=float(row["seconds"])))
    return rows


# ----- model ------------------------------------------------------------------------------

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


def load_pretrained(backbone: Any, spec: ModelSpec, weights: str, *, progress: bool) -> str:
    """Load ImageNet weights, a weights file or an earlier run's `.keras` model into
    `backbone`; returns a description for config.json.

    Raises:
        WeightsError / ModelFileError: weights that cannot be found or do not fit.
    """
    from resnet_cli.registry import imagenet_weights_file
    from resnet_cli.weights import load_imagenet_weights

    if weights.lower() == "imagenet":
        path = load_imagenet_weights(imagenet_weights_file(spec, include_top=False),
                                     progress=progress)
        backbone.load_weights(str(path))
        return f"imagenet ({path.name})"
    path = Path(weights).expanduser()
    if path.name.endswith(".keras"):
        from resnet_cli.models import load_saved_model

        source = load_saved_model(path).model
        copied = _copy_by_name(find_backbone(source), backbone)
        if not copied:
            raise ModelFileError(f"{path} has no layer of {spec.name}'s backbone to start from.")
        return f"{path} ({copied} layers)"
    try:
        backbone.load_weights(str(path))
        return str(path)
    except Exception:
        log.debug("%s is not a backbone-only weights file; trying with the classifier", path)
    from resnet_cli.models import build_model

    full = build_model(spec, include_top=True, image_size=backbone.input_shape[1])
    try:
        full.load_weights(str(path))
    except Exception as exc:
        raise WeightsError(f"{path} does not fit {spec.name} (with or without its "
                           f"classifier): {first_line(exc)}") from exc
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


def _compile(model: Any, phase: Phase, options: FinetuneOptions, steps_per_epoch: int,
             *, jit: Any) -> dict[str, Any]:
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


# ----- distribution -----------------------------------------------------------------------

def make_strategy(name: str) -> Any:
    """auto: MirroredStrategy over all visible GPUs when there are several, else the default
    (one device); mirrored: MirroredStrategy; multiworker: MultiWorkerMirroredStrategy from
    TF_CONFIG."""
    import tensorflow as tf

    from resnet_cli.devices import multi_gpu_strategy

    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return multi_gpu_strategy() or tf.distribute.get_strategy()


def is_chief() -> bool:
    """Whether this process writes the run folder (always, unless TF_CONFIG names another
    worker as chief)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    task = config.get("task") or {}
    kind, index = task.get("type"), int(task.get("index", 0))
    return kind in (None, "chief") or (
        kind == "worker" and index == 0 and "chief" not in (config.get("cluster") or {}))


# ----- the Keras callback -----------------------------------------------------------------

def _epoch_callback(run: _Run, phase: Phase, steps: int, *, progress: bool) -> Any:
    """A Keras callback: a tqdm bar per epoch (Keras' own logging stays off), then the
    checkpoint, history and `on_epoch` through `run.epoch_done`."""
    import keras

    from resnet_cli.render import progress_bar

    class EpochCallback(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._stack = ExitStack()
            self._bar: Any = None
            self._started = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._started = time.perf_counter()
            self._bar = self._stack.enter_context(progress_bar(
                total=steps, desc=f"epoch {epoch + 1}/{run.total_epochs}",
                enabled=progress, unit="step"))

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if self._bar is None or self._bar.disable:
                return
            self._bar.update(1)
            if logs:
                self._bar.set_postfix(loss=f"{float(logs['loss']):.4f}",
                                      acc=f"{float(logs['accuracy']):.4f}", refresh=False)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self._stack.close()
            logs = logs or {}
            record = EpochRecord(
                epoch=epoch + 1, phase=phase.number,
                lr=float(self.model.optimizer.learning_rate),
                loss=float(logs.get("loss", math.nan)),
                accuracy=float(logs.get("accuracy", math.nan)),
                val_loss=float(logs["val_loss"]) if "val_loss" in logs else None,
                val_accuracy=float(logs["val_accuracy"]) if "val_accuracy" in logs else None,
                seconds=time.perf_counter() - self._started)
            run.epoch_done(self.model, record)

        def on_train_end(self, logs: Any = None) -> None:
            self._stack.close()

    return EpochCallback()


@dataclass
class _Run:
    """Run-folder bookkeeping shared by the epoch callback."""

    run_dir: Path
    write_dir: Path  # run_dir, or a scratch folder on non-chief workers
    total_epochs: int
    keep: int
    history: list[EpochRecord]
    on_epoch: Callable[[EpochRecord, int], None] | None

    @property
    def checkpoints(self) -> Path:
        return self.write_dir / CHECKPOINT_DIR

    def epoch_done(self, model: Any, record: EpochRecord) -> None:
        name = f"epoch-{record.epoch:03d}.keras"
        with atomic_path(self.checkpoints / name) as tmp:
            model.save(tmp)
        self.history = [row for row in self.history if row.epoch < record.epoch] + [record]
        _write_history(self.write_dir / "history.csv", self.history)
        _write_json(self.checkpoints / STATE_FILE, {
            "epoch": record.epoch, "phase": record.phase, "checkpoint": name,
            "saved": _now()})
        if self.keep:
            old = sorted(self.checkpoints.glob("epoch-*.keras"))[:-self.keep]
            for path in old:
                path.unlink(missing_ok=True)
        if self.on_epoch is not None:
            self.on_epoch(record, self.total_epochs)

    def last_checkpoint(self) -> str:
        try:
            state = json.loads((self.checkpoints / STATE_FILE).read_text())
            return str(self.run_dir / CHECKPOINT_DIR / state["checkpoint"])
        except (OSError, ValueError, KeyError):
            return ""


# ----- the command ------------------------------------------------------------------------

def finetune(
    options: FinetuneOptions,
    *,
    explicit: frozenset[str] = frozenset(),
    progress: bool = True,
    on_epoch: Callable[[EpochRecord, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Train a classifier on a folder-per-class dataset and write a run folder.

    Args:
        explicit: option names given on the command line; with `resume`, those that define
            the run must match the stored run.
        on_epoch: called with (record, total epochs) after each epoch, once its checkpoint
            is saved.
        on_warning: receives warnings (skipped images, ...); default: the logging module.

    Raises:
        UsageError, DatasetError, OutputError, WeightsError, ModelFileError, DeviceError: see
            their messages; TrainingInterrupted on Ctrl-C.
    """
    warn = on_warning or log.warning
    opts = resolve_options(options)
    opts, state = _prepare_run_dir(opts, explicit)
    if state is not None:
        opts = resolve_options(dataclasses.replace(opts, resume=True))
    spec = get_spec(opts.model)
    size = int(opts.image_size or spec.default_size)
    resize = ResizeMode(opts.resize)
    pretrained = opts.weights.lower() != "none"

    data = scan_class_folders(opts.data_dir, classes=opts.classes)
    if opts.val_dir:
        train_set = data
        val_set = scan_class_folders(opts.val_dir, known_classes=data.class_names)
        val_source = opts.val_dir
    else:
        train_set, val_set = split_stratified(data, opts.val_split, opts.seed)
        val_source = f"{opts.val_split:g} of {opts.data_dir} (stratified, seed {opts.seed})"
    if state is not None:
        _check_same_dataset(Path(str(opts.run_dir)), data, warn)

    from resnet_cli.devices import apply_device, import_tensorflow, parse_device

    import_tensorflow()
    import keras

    device = apply_device(parse_device(opts.device))
    strategy = make_strategy(opts.strategy)
    keras.utils.set_random_seed(opts.seed)

    skipped: list[ImageError] = []

    def skip(error: ImageError) -> None:
        skipped.append(error)
        warn(f"skipping {error.path}: {error.reason}")

    train_src = _load_source(train_set, size, resize, opts, progress, skip, "decoding train")
    val_src = (_load_source(val_set, size, resize, opts, progress, skip, "decoding val")
               if val_set.paths else None)
    train_count = source_size(train_src)
    if isinstance(train_src, DecodedImages):
        missing = [name for i, name in enumerate(data.class_names)
                   if i not in set(source_labels(train_src))]
        if missing:
            raise DatasetError(f"No readable training image left for class "
                               f"{', '.join(missing)} after skipping unreadable files.")
    batch = opts.batch_size
    if train_count < batch:
        warn(f"only {train_count} training images: using batches of {train_count} instead "
             f"of {batch}")
        batch = train_count
    steps = max(1, train_count // batch)
    class_weights = _class_weights(source_labels(train_src), len(data.class_names)) \
        if opts.class_weight == "auto" else None

    run_dir = Path(str(opts.run_dir))
    chief = is_chief()
    write_dir = run_dir if chief else Path(tempfile.mkdtemp(prefix="resnet-worker-"))
    (write_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    phases = phase_plan(opts)
    total_epochs = phases[-1].end
    card = ModelCard(base_model=spec.name, image_size=size, preprocess_mode=spec.preprocess_mode,
                     class_names=list(data.class_names),
                     extra={"resize": resize.value, "run_dir": str(run_dir)})
    on_gpu = device.upper().startswith("/GPU")
    jit: Any = "auto" if on_gpu else False  # XLA on CPU only adds minutes of compile time

    done = int(state["epoch"]) if state is not None else 0
    history = read_history(run_dir / "history.csv")[:done] if state is not None else []
    run = _Run(run_dir, write_dir, total_epochs, opts.keep_checkpoints, history, on_epoch)
    config = _run_config(opts, card, data, {
        "files": len(data.paths), "train_images": train_count,
        "val_images": source_size(val_src) if val_src else 0,
        "validation": val_source if val_set.paths else None,
        "in_memory": isinstance(train_src, DecodedImages)}, {
        "batch_size": batch, "steps_per_epoch": steps, "dropout": DROPOUT,
        "batchnorm": "frozen, inference mode (pretrained)" if pretrained else
        f"training mode, momentum {SCRATCH_BN_MOMENTUM}",
        "label_smoothing": opts.label_smoothing, "class_weights": class_weights,
        "strategy": type(strategy).__name__, "replicas": int(strategy.num_replicas_in_sync),
        "device": device, "jit_compile": jit, "phases": []})
    if state is not None:
        previous = json.loads((run_dir / CARD_FILENAME).read_text())
        config["started"] = previous.get("started", config["started"])
        config["resumed"] = [*previous.get("resumed", []), {"from_epoch": done, "at": _now()}]
    if chief:
        with atomic_open(write_dir / "labels.txt") as handle:
            handle.write("".join(f"{name}\n" for name in data.class_names))
        _write_json(write_dir / CHECKPOINT_DIR / CARD_FILENAME, model_card_dict(card))

    train_aug = make_augmenter(opts.seed, flip=opts.flip) if opts.augment else None
    val_ds = (make_dataset(val_src, num_classes=len(data.class_names), batch_size=batch,
                           preprocess_mode=spec.preprocess_mode, training=False)
              if val_src is not None else None)

    started = time.perf_counter()
    try:
        policy = "mixed_float16" if opts.mixed_precision and on_gpu else "float32"
        if opts.mixed_precision and not on_gpu:
            # CPUs without native bfloat16 emulate half precision slower than float32.
            warn("--mixed-precision needs a GPU; training in float32 on the CPU")
        with dtype_policy(policy):
            config["training"]["policy"] = policy
            with strategy.scope():
                model, backbone = build_classifier(spec, len(data.class_names), size,
                                                   pretrained=pretrained)
                if state is not None:
                    current = next(p for p in phases if p.number == int(state["phase"]))
                    checkpoint = run_dir / CHECKPOINT_DIR / str(state["checkpoint"])
                    config["training"]["phases"].append(_restore(
                        model, backbone, spec, current, checkpoint, opts, steps, jit))
                    config["weights_loaded"] = str(checkpoint)
                    resumed_phase = current.number
                else:
                    resumed_phase = 0
                    config["weights_loaded"] = (
                        load_pretrained(backbone, spec, opts.weights, progress=progress)
                        if pretrained else "none (random initialisation)")
            if chief:
                _write_json(write_dir / CARD_FILENAME, config)
            for phase in phases:
                if phase.end <= done:
                    continue
                with strategy.scope():
                    if phase.number != resumed_phase:
                        set_trainable(model, backbone, spec, phase.trainable)
                        info = _compile(model, phase, opts, steps, jit=jit)
                        config["training"]["phases"].append(info)
                    first = max(done, phase.first)
                train_ds = make_dataset(
                    train_src, num_classes=len(data.class_names), batch_size=batch,
                    preprocess_mode=spec.preprocess_mode, training=True, seed=opts.seed,
                    epochs=(first, phase.end), augment=train_aug, class_weights=class_weights)
                callback = _epoch_callback(run, phase, steps, progress=progress)
                model.fit(train_ds, epochs=phase.end, initial_epoch=first, steps_per_epoch=steps,
                          validation_data=val_ds, callbacks=[callback], shuffle=False,
                          verbose=0)
                done = phase.end
            training_seconds = time.perf_counter() - started
            final = _inference_copy(model)
    except KeyboardInterrupt:
        last = run.last_checkpoint()
        where = f"{last} holds the last completed epoch" if last else "no epoch was completed"
        raise TrainingInterrupted(
            f"Interrupted: {where}. Continue with: resnet finetune {opts.data_dir} --classes "
            f"{opts.classes} -o {run_dir} --resume") from None

    model_path = run_dir / "model.keras"
    metrics = None
    if val_set.paths:
        from resnet_cli.labels import build_labels
        from resnet_cli.models import LoadedModel

        loaded = LoadedModel(model=final, spec=spec, image_size=size,
                             preprocess_mode=spec.preprocess_mode,
                             labels=build_labels(list(data.class_names)), source=str(model_path),
                             device=device, card=card)
        metrics = evaluate_files(val_set, loaded, batch_size=batch, resize=resize,
                                 progress=progress)
    if chief:
        with atomic_path(write_dir / "model.keras") as tmp:
            final.save(tmp)
        _write_json(write_dir / "metrics.json", {
            "val_accuracy": metrics.top1 if metrics else None,
            "val_top5_accuracy": metrics.top5 if metrics else None,
            **(metrics.as_dict() if metrics else {"note": "no validation images"})})
        # Streamed images are only found unreadable during training.
        config["dataset"]["skipped"] = [{"path": e.path, "error": e.reason} for e in skipped]
        config["finished"] = _now()
        config["training_seconds"] = round(training_seconds, 2)
        _write_json(write_dir / CARD_FILENAME, config)
    else:
        shutil.rmtree(write_dir, ignore_errors=True)
    return FinetuneResult(
        run_dir=str(run_dir), model_path=str(model_path), class_names=data.class_names,
        train_images=train_count, val_images=source_size(val_src) if val_src else 0,
        skipped=tuple(skipped), history=tuple(run.history),
        metrics=metrics, seconds=training_seconds,
        resumed_from=int(state["epoch"]) if state is not None else None,
        total_epochs=total_epochs)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run_config(opts: FinetuneOptions, card: ModelCard, data: ClassFolders,
                dataset: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """config.json: the model card, every resolved option, the data, the training set-up and
    package versions."""
    return {
        **model_card_dict(card),
        "command": "finetune",
        "options": {k: v for k, v in dataclasses.asdict(opts).items()
                    if k not in ("resume", "overwrite", "memory_budget")},
        "dataset": {"data_dir": opts.data_dir, "classes": list(data.class_names), **dataset,
                    "skipped": []},
        "training": training,
        "versions": _versions(),
        "started": _now(),
        "finished": None,
    }


def _restore(model: Any, backbone: Any, spec: ModelSpec, phase: Phase, checkpoint: Path,
             opts: FinetuneOptions, steps: int, jit: Any) -> dict[str, Any]:
    """Set up `phase` as it was and load the checkpoint's weights and optimizer state."""
    set_trainable(model, backbone, spec, phase.trainable)
    info = _compile(model, phase, opts, steps, jit=jit)
    model.optimizer.build(model.trainable_variables)
    try:
        model.load_weights(str(checkpoint))
    except Exception as exc:
        raise ModelFileError(f"Cannot resume from {checkpoint}: {first_line(exc)}") from exc
    return info


def _load_source(data: ClassFolders, size: int, resize: ResizeMode, opts: FinetuneOptions,
                 progress: bool, skip: Callable[[ImageError], None], desc: str) -> ImageSource:
    if fits_in_memory(len(data.paths), size, opts.memory_budget):
        decoded = decode_all(data, size=size, resize=resize, progress=progress, desc=desc,
                             on_failure=skip)
        if not decoded.paths:
            raise DatasetError(f"None of the {len(data.paths)} images in {data.root} could be "
                               "read.")
        return decoded
    log.info("%d images do not fit the memory budget: decoding them on the fly",
             len(data.paths))
    return StreamedImages(data, size, resize, on_failure=skip)


def _class_weights(labels: list[int], classes: int) -> list[float]:
    """Balanced weights: n / (classes * n_c), so every class weighs the same in the loss."""
    counts = [0] * classes
    for label in labels:
        counts[label] += 1
    return [len(labels) / (classes * c) if c else 0.0 for c in counts]


def _check_same_dataset(run_dir: Path, data: ClassFolders, warn: Callable[[str], None]) -> None:
    stored = json.loads((run_dir / CARD_FILENAME).read_text()).get("dataset", {})
    classes = stored.get("classes")
    if classes is not None and list(classes) != list(data.class_names):
        raise DatasetError(f"--resume: {data.root} has classes {', '.join(data.class_names)}, "
                           f"but {run_dir} was trained on {', '.join(classes)}.")
    if stored.get("files") not in (None, len(data.paths)):
        warn(f"{data.root} now holds {len(data.paths)} images, {stored['files']} when the run "
             "started: the split and the epochs to come differ from an uninterrupted run")


def _inference_copy(model: Any) -> Any:
    """The trained model without optimizer state (model.keras is for inference: a third of
    the checkpoint's size)."""
    import keras

    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def history_table_rows(history: tuple[EpochRecord, ...]) -> list[list[str]]:
    """History rows as text for a table."""
    return [[str(r.epoch), str(r.phase), f"{r.lr:.2e}", f"{r.loss:.4f}", f"{r.accuracy:.4f}",
             "-" if r.val_loss is None else f"{r.val_loss:.4f}",
             "-" if r.val_accuracy is None else f"{r.val_accuracy:.4f}", f"{r.seconds:.1f}"]
            for r in history]

