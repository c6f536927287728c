"""`finetune()`: load the data, build or restore the model, train each phase, write the run.

The steps are named functions over one `_Run` record: `scan_splits` and
`load_training_data` (the data, in `training.data`), `_start_runtime` (device and strategy),
`_open_run` (the run folder and config.json), `_train` (build or restore, then `_fit_phase`
for each phase), `_evaluate` and `_write_results`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_cli.card import CONFIG_FILENAME, ModelCard, card_entry
from resnet_cli.datasets import make_augmenter, make_dataset, source_size
from resnet_cli.errors import OutputError, ResnetCliError
from resnet_cli.evaluate import evaluate_files
from resnet_cli.models import dtype_policy, load_backbone_weights
from resnet_cli.outputs import atomic_path, output_errors
from resnet_cli.registry import ModelSpec, get_spec
from resnet_cli.results import EpochRecord, Evaluation, FinetuneResult
from resnet_cli.tracking import MlflowRun
from resnet_cli.training.data import (
    TrainingData,
    dataset_info,
    load_training_data,
    scan_splits,
)
from resnet_cli.training.distribute import is_chief, make_strategy
from resnet_cli.training.engine import PRECISE_BN_BATCHES, Engine
from resnet_cli.training.epochs import EarlyStopping, PhaseData, run_epochs
from resnet_cli.training.head import (
    DROPOUT,
    SCRATCH_BN_MOMENTUM,
    batch_norm_trains,
    build_classifier,
    compile_phase,
    inference_copy,
    restore_phase,
    set_trainable,
)
from resnet_cli.training.logs import (
    LOG_DIR,
    TensorBoardLog,
    finish_mlflow,
    mlflow_params,
    start_mlflow,
)
from resnet_cli.training.options import (
    FinetuneOptions,
    Phase,
    phase_plan,
    resolve_options,
)
from resnet_cli.training.run_folder import (
    CHECKPOINT_DIR,
    RunBook,
    check_same_dataset,
    now,
    prepare_run_dir,
    read_history,
    replacing,
    run_config,
    write_json,
    write_labels,
)

log = logging.getLogger(__name__)


class TrainingInterrupted(ResnetCliError):
    """Ctrl-C during training; the last completed epoch's checkpoint is kept."""

    exit_code = 130


@dataclass(frozen=True)
class _Runtime:
    device: str
    strategy: Any  # tf.distribute.Strategy
    on_gpu: bool
    jit: Any  # "auto" or False
    policy: str  # Keras dtype policy of training: float32, mixed_bfloat16 or mixed_float16


@dataclass
class _Run:
    """Everything one invocation of `finetune()` works with."""

    opts: FinetuneOptions
    spec: ModelSpec
    data: TrainingData
    runtime: _Runtime
    state: dict[str, Any] | None  # checkpoints/state.json of a resumed run
    phases: list[Phase]
    card: ModelCard
    config: dict[str, Any]
    book: RunBook
    chief: bool
    done: int  # epochs completed
    augment: Callable[[Any], Any] | None
    val_ds: Any
    mlflow: MlflowRun | None  # the MLflow run of --mlflow (on the chief)
    tensorboard: TensorBoardLog | None  # RUN_DIR/logs (on the chief)

    @property
    def run_dir(self) -> Path:
        return self.book.run_dir

    @property
    def write_dir(self) -> Path:
        return self.book.write_dir


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
            their messages; TrainingInterrupted on Ctrl-C; TrackingError: `mlflow` and the
            MLflow store cannot be reached (before anything is trained).
    """
    warn = on_warning or log.warning
    opts = resolve_options(options)
    opts, state = prepare_run_dir(opts, explicit)
    if state is not None:
        opts = resolve_options(dataclasses.replace(opts, resume=True))
    run_dir = Path(str(opts.run_dir))
    mlflow = start_mlflow(opts, state, warn) if is_chief() else None
    try:
        # Disk full, read-only, permission denied... in the run folder: one line naming it;
        # an old run replaced with --overwrite comes back if the new one fails.
        with output_errors(run_dir), replacing(run_dir,
                                               overwrite=opts.overwrite and state is None):
            return _finetune(opts, state, progress=progress, on_epoch=on_epoch, warn=warn,
                             mlflow=mlflow)
    except BaseException as exc:
        if mlflow is not None:
            interrupted = isinstance(exc, (KeyboardInterrupt, TrainingInterrupted))
            mlflow.end("KILLED" if interrupted else "FAILED")
        raise


def _finetune(opts: FinetuneOptions, state: dict[str, Any] | None, *, progress: bool,
              on_epoch: Callable[[EpochRecord, int], None] | None,
              warn: Callable[[str], None], mlflow: MlflowRun | None) -> FinetuneResult:
    splits = scan_splits(opts)
    if state is not None:
        check_same_dataset(Path(str(opts.run_dir)), splits.data, warn)
    runtime = _start_runtime(opts, state, warn)
    data = load_training_data(opts, splits, progress=progress, warn=warn)
    run = _open_run(opts, data, runtime, state, on_epoch, mlflow)
    try:
        final, seconds = _train(run, progress=progress)
    except KeyboardInterrupt:
        last = run.book.last_checkpoint()
        where = f"{last} holds the last completed epoch" if last else "no epoch was completed"
        raise TrainingInterrupted(
            f"Interrupted: {where}. Continue with: resnet finetune {opts.data_dir} --classes "
            f"{opts.classes} -o {run.run_dir} --resume") from None
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()
    metrics = _evaluate(run, final, progress=progress)
    curves = _write_results(run, final, metrics, seconds)
    if mlflow is not None:
        finish_mlflow(mlflow, run.write_dir, metrics, seconds)
    return FinetuneResult(
        run_dir=str(run.run_dir), model_path=str(run.run_dir / "model.keras"),
        class_names=splits.data.class_names, train_images=source_size(data.train),
        val_images=source_size(data.val) if data.val else 0, skipped=tuple(data.skipped),
        history=tuple(run.book.history), metrics=metrics, seconds=seconds,
        resumed_from=int(state["epoch"]) if state is not None else None,
        total_epochs=run.phases[-1].end, curves_path=curves,
        logs_dir=str(run.run_dir / LOG_DIR) if run.chief else None,
        mlflow_run=f"{mlflow.run_id} in {mlflow.uri}" if mlflow is not None else None)


# ----- set-up -----------------------------------------------------------------------------

def _start_runtime(opts: FinetuneOptions, state: dict[str, Any] | None,
                   warn: Callable[[str], None]) -> _Runtime:
    """Import TensorFlow, place the run on its device and strategy, pick its dtype policy,
    seed everything."""
    from resnet_cli.devices import apply_device, import_tensorflow, parse_device

    import_tensorflow()
    import keras

    device = apply_device(parse_device(opts.device))
    strategy = make_strategy(opts.strategy)
    keras.utils.set_random_seed(opts.seed)
    on_gpu = device.upper().startswith("/GPU")
    policy = _training_policy(opts, device, state, warn)
    # XLA on CPU only adds minutes of compile time.
    return _Runtime(device, strategy, on_gpu, "auto" if on_gpu else False, policy)


def _training_policy(opts: FinetuneOptions, device: str, state: dict[str, Any] | None,
                     warn: Callable[[str], None]) -> str:
    """The Keras dtype policy for `--precision` on `device`, by the rule of every command
    (`devices.precision_policy`). A resumed run whose checkpoint was trained with float16
    loss scaling, or without it where it would now be used, keeps its own policy: the
    optimizer state in the checkpoint has (or lacks) the loss scale."""
    from resnet_cli.devices import precision_policy

    policy = precision_policy(opts.precision, device)
    if state is None:
        return policy
    previous = json.loads((Path(str(opts.run_dir)) / CONFIG_FILENAME).read_text())
    started = str(previous.get("training", {}).get("policy", "float32"))
    if (started == "mixed_float16") != (policy == "mixed_float16"):
        warn(f"{opts.run_dir} was trained under {started}; continuing under it rather than "
             f"{policy}, for its checkpoint's loss scaling")
        return started
    return policy


def _open_run(opts: FinetuneOptions, data: TrainingData, runtime: _Runtime,
              state: dict[str, Any] | None,
              on_epoch: Callable[[EpochRecord, int], None] | None,
              mlflow: MlflowRun | None) -> _Run:
    """Create the run folder's bookkeeping and config.json (written once the model is
    built), labels.txt, the checkpoints' model card, the TensorBoard event files and the
    MLflow run's parameters (both with the epochs already done, where they lack them)."""
    spec = get_spec(opts.model)
    run_dir = Path(str(opts.run_dir))
    chief = is_chief()
    write_dir = run_dir if chief else Path(tempfile.mkdtemp(prefix="resnet-worker-"))
    (write_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    phases = phase_plan(opts)
    class_names = data.splits.data.class_names
    card = ModelCard(base_model=spec.name, image_size=int(opts.image_size or 0),
                     preprocess_mode=spec.preprocess_mode, class_names=tuple(class_names),
                     resize=opts.resize, source=str(run_dir / "model.keras"))
    done = int(state["epoch"]) if state is not None else 0
    history = read_history(run_dir / "history.csv")[:done] if state is not None else []
    book = RunBook(run_dir, write_dir, phases[-1].end, opts.keep_checkpoints, history, on_epoch)
    config = run_config(opts, card, data.splits.data, dataset_info(data),
                        _training_info(opts, data, runtime))
    if state is not None:
        previous = json.loads((run_dir / CONFIG_FILENAME).read_text())
        config["started"] = previous.get("started", config["started"])
        config["resumed"] = [*previous.get("resumed", []), {"from_epoch": done, "at": now()}]
    tensorboard = None
    if chief:
        write_labels(write_dir / "labels.txt", class_names)
        write_json(write_dir / CHECKPOINT_DIR / CONFIG_FILENAME, card_entry(card))
        tensorboard = TensorBoardLog(write_dir, history)
        book.logs.append(tensorboard)
    if mlflow is not None:
        config["mlflow"] = mlflow.info()
        mlflow.log_params(mlflow_params(config))
        mlflow.log_epochs(history)
        book.logs.append(mlflow)
    augment = make_augmenter(opts.seed, flip=opts.flip) if opts.augment else None
    val_ds = (make_dataset(data.val, num_classes=len(class_names), batch_size=data.batch,
                           preprocess_mode=spec.preprocess_mode, training=False)
              if data.val is not None else None)
    return _Run(opts, spec, data, runtime, state, phases, card, config, book, chief, done,
                augment, val_ds, mlflow, tensorboard)


def _training_info(opts: FinetuneOptions, data: TrainingData, runtime: _Runtime) -> dict[str, Any]:
    return {"batch_size": data.batch, "steps_per_epoch": data.steps, "dropout": DROPOUT,
            "batchnorm": "frozen, inference mode (pretrained)" if opts.pretrained else
            f"training mode, momentum {SCRATCH_BN_MOMENTUM}; statistics recomputed with the "
            f"weights of each epoch on {PRECISE_BN_BATCHES} un-augmented batches (precise BN)",
            "label_smoothing": opts.label_smoothing, "class_weights": data.class_weights,
            "strategy": type(runtime.strategy).__name__,
            "replicas": int(runtime.strategy.num_replicas_in_sync),
            "device": runtime.device, "jit_compile": runtime.jit, "phases": []}


# ----- training ---------------------------------------------------------------------------

def _train(run: _Run, *, progress: bool) -> tuple[Any, float]:
    """Build or restore the model and train the phases left; returns the inference copy of
    the trained model (the best epoch's, with early stopping) and the seconds spent."""
    started = time.perf_counter()
    patience = int(run.opts.patience or 0)
    stopping = EarlyStopping(patience) if patience and run.val_ds is not None else None
    with dtype_policy(run.runtime.policy):
        model, backbone, resumed_phase = _build(run, progress=progress)
        run.config["training"].update(_policies(model, backbone))
        if run.chief:
            write_json(run.write_dir / CONFIG_FILENAME, run.config)
        for phase in run.phases:
            if phase.end > run.done:
                _fit_phase(run, model, backbone, phase, resumed_phase, progress=progress,
                           stopping=stopping)
        if stopping is not None:
            last = run.book.history[-1].epoch if run.book.history else 0
            run.config["training"]["early_stopping"] = stopping.summary(
                restored=stopping.restore(model, last))
        seconds = time.perf_counter() - started
        return inference_copy(model), seconds


def _policies(model: Any, backbone: Any) -> dict[str, str]:
    """The dtype policies the model was built with, read from its layers, for config.json:
    the backbone's (its first convolution), the classifier's (float32 under every policy:
    Keras' mixed precision guide), and model.keras' (saved in float32, so it runs in fp32
    unless asked for bf16)."""
    first = next(layer for layer in backbone.layers if layer.weights)
    return {"policy": first.dtype_policy.name,
            "classifier_policy": model.get_layer("predictions").dtype_policy.name,
            "saved_model_policy": "float32"}


def _build(run: _Run, *, progress: bool) -> tuple[Any, Any, int]:
    """The model and its backbone, with their starting weights: those of the checkpoint
    when resuming (returning the phase it was in), else the pretrained ones (phase 0)."""
    opts, config = run.opts, run.config
    with run.runtime.strategy.scope():
        model, backbone = build_classifier(run.spec, len(run.card.class_names),
                                           run.card.image_size, pretrained=opts.pretrained)
        if run.state is None:
            config["weights_loaded"] = (
                load_backbone_weights(backbone, run.spec, opts.weights, progress=progress)
                if opts.pretrained else "none (random initialisation)")
            return model, backbone, 0
        current = next(p for p in run.phases if p.number == int(run.state["phase"]))
        checkpoint = run.run_dir / CHECKPOINT_DIR / str(run.state["checkpoint"])
        config["training"]["phases"].append(restore_phase(
            model, backbone, run.spec, current, checkpoint, opts, run.data.steps,
            run.runtime.jit))
        config["weights_loaded"] = str(checkpoint)
        return model, backbone, current.number


def _fit_phase(run: _Run, model: Any, backbone: Any, phase: Phase, resumed_phase: int, *,
               progress: bool, stopping: EarlyStopping | None) -> None:
    """Train `phase` from the first epoch not done yet (compiling it unless it is the
    restored one)."""
    data, strategy = run.data, run.runtime.strategy
    with strategy.scope():
        if phase.number != resumed_phase:
            set_trainable(model, backbone, run.spec, phase.trainable)
            info = compile_phase(model, phase, run.opts, data.steps, jit=run.runtime.jit)
            run.config["training"]["phases"].append(info)
        first = max(run.done, phase.first)
        engine = Engine(model, strategy, label_smoothing=run.opts.label_smoothing,
                        global_batch=data.batch)
    classes = len(run.card.class_names)
    train_ds = make_dataset(
        data.train, num_classes=classes, batch_size=data.batch,
        preprocess_mode=run.spec.preprocess_mode, training=True, seed=run.opts.seed,
        epochs=(first, phase.end), augment=run.augment, class_weights=data.class_weights)
    batch_norm = None
    if batch_norm_trains(phase):
        # Un-augmented training images in a fixed shuffled order, the same on every worker.
        batch_norm = make_dataset(
            data.train, num_classes=classes, batch_size=data.batch,
            preprocess_mode=run.spec.preprocess_mode, training=True, seed=run.opts.seed + 1,
        ).take(PRECISE_BN_BATCHES)
    run_epochs(engine, run.book, phase, PhaseData(train_ds, data.steps, run.val_ds, batch_norm),
               first=first, progress=progress, stopping=stopping)
    run.done = phase.end


# ----- results ----------------------------------------------------------------------------

def _evaluate(run: _Run, final: Any, *, progress: bool) -> Evaluation | None:
    """The trained model's scores on the validation images (None without any)."""
    val_set = run.data.splits.val
    if not val_set.paths:
        return None
    from resnet_cli.labels import build_labels
    from resnet_cli.loaded import LoadedModel

    source = str(run.run_dir / "model.keras")
    loaded = LoadedModel(model=final, spec=run.spec, card=run.card.replace(source=source),
                         labels=build_labels(list(run.card.class_names)), source=source,
                         device=run.runtime.device)
    return evaluate_files(val_set, loaded, batch_size=run.data.batch, resize=run.opts.resize,
                          progress=progress)


def _write_results(run: _Run, final: Any, metrics: Evaluation | None, seconds: float
                   ) -> str | None:
    """model.keras, metrics.json, the finished config.json and curves.png (on the chief;
    other workers remove their scratch folder); returns the path of curves.png, if drawn."""
    if not run.chief:
        shutil.rmtree(run.write_dir, ignore_errors=True)
        return None
    with atomic_path(run.write_dir / "model.keras") as tmp:
        final.save(tmp)
    write_json(run.write_dir / "metrics.json", {
        "val_accuracy": metrics.top1 if metrics else None,
        "val_top5_accuracy": metrics.top5 if metrics else None,
        **(metrics.to_dict() if metrics else {"note": "no validation images"})})
    config = run.config
    # Streamed images are only found unreadable during training.
    config["dataset"]["skipped"] = [{"path": e.path, "error": e.reason}
                                    for e in run.data.skipped]
    config["finished"] = now()
    config["training_seconds"] = round(seconds, 2)
    write_json(run.write_dir / CONFIG_FILENAME, config)
    from resnet_cli.render.curves import CURVES_NAME, best_epoch, draw_curves, phase_boundaries

    history = run.book.history
    try:
        return str(draw_curves(history, run.write_dir / CURVES_NAME,
                               phase_boundaries=phase_boundaries(history),
                               best_epoch=best_epoch(history)))
    except OutputError:
        raise
    except Exception as exc:  # the model is saved: a picture that fails must not cost the run
        log.warning("could not draw %s: %s", CURVES_NAME, exc)
        return None
