"""What `resnet finetune` is asked to do: the options, their checks and the phase plan.

Everything here is plain Python: resolving the options imports no TensorFlow, so a bad
command line fails at once.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from resnet_cli.devices import parse_precision
from resnet_cli.errors import UsageError
from resnet_cli.images import ResizeMode
from resnet_cli.registry import DEFAULT_MODEL, ModelSpec, get_spec
from resnet_cli.tracking import resolve_experiment

E = TypeVar("E", bound=Enum)

PRETRAINED_EPOCHS = 10  # phase 1 on a frozen pretrained backbone
SCRATCH_EPOCHS = 20  # the whole network from random weights needs more
SCRATCH_PATIENCE = 5  # from scratch, stop when validation stalls and keep the best epoch


class Strategy(str, Enum):
    """`--strategy`: how training is spread over devices."""

    auto = "auto"
    mirrored = "mirrored"
    multiworker = "multiworker"


class ClassWeight(str, Enum):
    """`--class-weight`: none, or auto (balanced: rare classes weigh more in the loss)."""

    none = "none"
    auto = "auto"


@dataclass(frozen=True)
class FinetuneOptions:
    """What `resnet finetune` was asked to do. None means "resolved at run time".

    Attributes:
        weights: "imagenet", "none", a Keras weights file (.h5, .weights.h5) of the variant
            with or without its classifier, or a `.keras` model from an earlier run.
        epochs: phase-1 epochs; None: 10 with pretrained weights, 20 from scratch.
        fine_tune_epochs: phase-2 epochs; None: half of `epochs` with pretrained weights,
            0 with `weights="none"`.
        patience: stop a phase after this many epochs without a better validation accuracy,
            and keep the best epoch's weights; 0: never; None: 5 from scratch, 0 with
            pretrained weights.
        unfreeze: "all", or the number of residual blocks (from the top) phase 2 trains.
        precision: "fp32", or "bf16": train under Keras mixed precision where the hardware
            has it (`devices.precision_policy`, the rule of every command's `--precision`).
        memory_budget: bytes of decoded pixels kept in memory (None: 4 GiB, at most a quarter
            of the RAM); larger datasets are decoded on the fly.
        mlflow: also log the run to MLflow (`tracking`); giving `mlflow_experiment` turns it
            on. `mlflow_experiment` None: MLFLOW_EXPERIMENT_NAME, else resnet-finetune.
    """

    data_dir: str
    classes: int
    run_dir: str | None = None
    model: str = DEFAULT_MODEL
    weights: str = "imagenet"
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    val_split: float = 0.2
    val_dir: str | None = None
    augment: bool = True
    flip: bool = True
    fine_tune_epochs: int | None = None
    patience: int | None = None
    fine_tune_lr: float = 1e-5
    unfreeze: str = "all"
    label_smoothing: float = 0.1
    class_weight: ClassWeight = ClassWeight.none
    weight_decay: float = 0.05
    seed: int = 0
    resize: ResizeMode = ResizeMode.crop
    keep_checkpoints: int = 1
    resume: bool = False
    overwrite: bool = False
    precision: str = "fp32"
    strategy: Strategy = Strategy.auto
    device: str = "auto"
    memory_budget: int | None = None
    mlflow: bool = False
    mlflow_experiment: str | None = None

    @property
    def pretrained(self) -> bool:
        """Whether the backbone starts from weights (anything but `weights="none"`)."""
        return self.weights.strip().lower() != "none"


DEFAULTS = FinetuneOptions(data_dir="", classes=0)  # every option's default, for the CLI


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one optimizer: epochs `first + 1` to `end`."""

    number: int
    first: int
    end: int
    lr: float
    trainable: str  # "everything", "head", "all", or a block count


def plain(value: Any) -> Any:
    """An Enum member's value, anything else as it is (for JSON and messages)."""
    return value.value if isinstance(value, Enum) else value


def resolve_options(options: FinetuneOptions) -> FinetuneOptions:
    """Check every option and fill in the run-time defaults (no TensorFlow import).

    Raises:
        UsageError: a value or combination that cannot work.
    """
    from resnet_cli.models import resolve_image_size

    spec = get_spec(options.model)
    weights = options.weights.strip()
    _check_weights(weights, spec)
    size = resolve_image_size(spec, options.image_size)
    options = _resolve_epochs(options)
    _check_numbers(options)
    class_weight = _as_member(ClassWeight, options.class_weight,
                           "--class-weight must be none or auto")
    strategy = _as_member(Strategy, options.strategy,
                       "--strategy must be auto, mirrored or multiworker")
    resize = _as_member(ResizeMode, options.resize, "--resize must be crop or squash")
    precision = parse_precision(options.precision)
    fine_tune = _fine_tune_epochs(options)
    unfreeze = parse_unfreeze(options.unfreeze, spec)
    _check_run(options, strategy)
    run_dir = options.run_dir or default_run_dir(options.data_dir, spec.name)
    mlflow = options.mlflow or bool(options.mlflow_experiment)
    return dataclasses.replace(
        options, model=spec.name, weights=weights, image_size=size, fine_tune_epochs=fine_tune,
        unfreeze=unfreeze, run_dir=run_dir, class_weight=class_weight, strategy=strategy,
        resize=resize, precision=precision, mlflow=mlflow,
        mlflow_experiment=resolve_experiment(options.mlflow_experiment) if mlflow else None)


def _check_weights(weights: str, spec: ModelSpec) -> None:
    """imagenet, none, a weights file, or a `.keras` model finetuned from `spec`."""
    from resnet_cli.card import read_card_beside
    from resnet_cli.models import existing_weights_file

    if weights.lower() in ("none", "imagenet"):
        return
    path = existing_weights_file(weights)
    if not path.name.endswith((".keras", ".h5", ".hdf5")):
        raise UsageError(f"--weights {weights}: expected a .keras model, or a Keras "
                         ".weights.h5/.h5 weights file.")
    if path.name.endswith(".keras"):
        card = read_card_beside(path)
        if card is not None and card.base_model != spec.name:
            raise UsageError(f"--weights {weights} was finetuned from {card.base_model}; "
                             f"add --model {card.base_model}.")


def _check_numbers(options: FinetuneOptions) -> None:
    checks = [
        (options.classes >= 2, f"--classes must be at least 2; got {options.classes}."),
        (int(options.epochs or 0) >= 1, f"--epochs must be at least 1; got {options.epochs}."),
        (int(options.patience or 0) >= 0,
         f"--patience must be 0 (never stop early) or more; got {options.patience}."),
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
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def _as_member(kind: type[E], value: Any, message: str) -> E:
    """`value` (a member, or its value as text) as a member of `kind`."""
    try:
        return kind(plain(value))
    except ValueError:
        raise UsageError(f"{message}; got {plain(value)}.") from None


def _resolve_epochs(options: FinetuneOptions) -> FinetuneOptions:
    """Fill in `epochs` and `patience`: longer and with early stopping from scratch."""
    epochs = options.epochs
    if epochs is None:
        epochs = PRETRAINED_EPOCHS if options.pretrained else SCRATCH_EPOCHS
    patience = options.patience
    if patience is None:
        patience = 0 if options.pretrained else SCRATCH_PATIENCE
    return dataclasses.replace(options, epochs=epochs, patience=patience)


def _fine_tune_epochs(options: FinetuneOptions) -> int:
    fine_tune = options.fine_tune_epochs
    if fine_tune is None:
        return max(1, int(options.epochs or 0) // 2) if options.pretrained else 0
    if fine_tune < 0:
        raise UsageError(f"--fine-tune-epochs must be 0 or more; got {fine_tune}.")
    if fine_tune > 0 and not options.pretrained:
        raise UsageError("--fine-tune-epochs needs pretrained weights: with --weights none the "
                         "whole network trains for --epochs from the start. Drop it, or add "
                         "those epochs to --epochs.")
    return fine_tune


def _check_run(options: FinetuneOptions, strategy: Strategy) -> None:
    if strategy is Strategy.multiworker and not os.environ.get("TF_CONFIG"):
        raise UsageError("--strategy multiworker reads the cluster from the TF_CONFIG "
                         "environment variable, which is not set (see `resnet finetune --help`).")
    if options.resume and options.overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: pick one.")
    if options.resume and not options.run_dir:
        raise UsageError("--resume needs the run to continue: add -o RUN_DIR.")


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
    epochs = int(options.epochs or 0)
    if not options.pretrained:
        return [Phase(1, 0, epochs, options.lr, "everything")]
    phases = [Phase(1, 0, epochs, options.lr, "head")]
    if options.fine_tune_epochs:
        phases.append(Phase(2, epochs, epochs + options.fine_tune_epochs,
                            options.fine_tune_lr, options.unfreeze))
    return phases
