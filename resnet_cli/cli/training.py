"""`resnet finetune` and `resnet evaluate`: train on folders of images, and score a model."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from resnet_cli.cli.messages import FailureReporter, print_warning, user_errors
from resnet_cli.cli.options import (
    BatchSizeOpt,
    DataDirArg,
    DeviceOpt,
    ImageSizeOpt,
    ModelOpt,
    PrecisionOpt,
    QuietOpt,
    ReportFormat,
    ResizeOpt,
    WeightsOpt,
)
from resnet_cli.devices import Precision
from resnet_cli.errors import UsageError
from resnet_cli.registry import DEFAULT_MODEL
from resnet_cli.render import make_console
from resnet_cli.training.options import DEFAULTS, ClassWeight, FinetuneOptions, Strategy

if TYPE_CHECKING:
    from resnet_cli.datasets import ClassFolders
    from resnet_cli.results import EpochRecord, Evaluation
    from resnet_cli.tracking import MlflowRun

# Options of `finetune` only (shared ones come from cli.options). Their defaults are those of
# FinetuneOptions (DEFAULTS), so each is written once.
ClassesOpt = Annotated[int, typer.Option(
    "--classes", "-n", min=2, metavar="N", show_default=False,
    help="Number of classes; must equal the number of class folders in DATA_DIR.")]
RunDirOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", metavar="RUN_DIR", file_okay=False,
    help="Run folder for model.keras, config.json, labels.txt, history.csv, metrics.json, "
         "curves.png, logs/ (TensorBoard) and checkpoints/. Default: "
         "runs/<data>-<model>-<date-time>.")]
EpochsOpt = Annotated[int | None, typer.Option(
    "--epochs", "-e", min=1, metavar="N", show_default=False,
    help="Epochs of phase 1 (the new head on a frozen backbone), or of the whole network "
         "with --weights none. [default: 10 with pretrained weights, 20 from scratch]")]
PatienceOpt = Annotated[int | None, typer.Option(
    "--patience", min=0, metavar="N", show_default=False,
    help="Stop a phase after N epochs without a better validation accuracy, and keep the "
         "best epoch's weights; 0 never stops early. [default: 5 from scratch, 0 with "
         "pretrained weights]")]
LrOpt = Annotated[float, typer.Option(
    "--lr", min=0.0, metavar="LR",
    help="Peak learning rate of phase 1 (AdamW, warmup then cosine decay).")]
ValSplitOpt = Annotated[float, typer.Option(
    "--val-split", min=0.0, max=0.95, metavar="F",
    help="Fraction of each class held out for validation (ignored with --val-dir).")]
ValDirOpt = Annotated[Path | None, typer.Option(
    "--val-dir", metavar="DIR", file_okay=False,
    help="Validation images in the same folder-per-class layout, instead of a split.")]
AugmentOpt = Annotated[bool, typer.Option(
    "--augment/--no-augment",
    help="Random flips, rotations (+-18 deg), zooms and shifts (10%) of training images.")]
FlipOpt = Annotated[bool, typer.Option(
    "--flip/--no-flip",
    help="Include horizontal flips in --augment (turn off for digits, text, ...).")]
FineTuneEpochsOpt = Annotated[int | None, typer.Option(
    "--fine-tune-epochs", min=0, metavar="M",
    help="Phase 2 epochs with the top of the backbone unfrozen. Default: half of --epochs "
         "with pretrained weights, 0 with --weights none.")]
FineTuneLrOpt = Annotated[float, typer.Option(
    "--fine-tune-lr", min=0.0, metavar="LR", help="Peak learning rate of phase 2.")]
UnfreezeOpt = Annotated[str, typer.Option(
    "--unfreeze", metavar="all|K",
    help="Phase 2 trains the whole backbone, or its top K residual blocks (16 in "
         "resnet50). BatchNorm stays in inference mode either way.")]
LabelSmoothingOpt = Annotated[float, typer.Option(
    "--label-smoothing", min=0.0, max=0.99, metavar="F", help="Label smoothing.")]
ClassWeightOpt = Annotated[ClassWeight, typer.Option(
    "--class-weight", metavar="none|auto", case_sensitive=False,
    help="auto: weigh each class's loss by the inverse of its frequency.")]
WeightDecayOpt = Annotated[float, typer.Option(
    "--weight-decay", min=0.0, metavar="W",
    help="AdamW weight decay (not applied to biases and BatchNorm).")]
SeedOpt = Annotated[int, typer.Option(
    "--seed", metavar="N", help="Seed of the split, the shuffling, the augmentation and "
                                "the initial weights.")]
KeepCheckpointsOpt = Annotated[int, typer.Option(
    "--keep-checkpoints", min=0, metavar="K",
    help="Per-epoch checkpoints kept (the newest K; 0 keeps all).")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue the run in -o RUN_DIR from its last completed epoch, with "
                     "its optimizer state.")]
RunOverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace the run in -o RUN_DIR.")]
MixedPrecisionOpt = Annotated[bool, typer.Option(
    "--mixed-precision", hidden=True, help="Deprecated: the same as --precision bf16.")]
StrategyOpt = Annotated[Strategy, typer.Option(
    "--strategy", metavar="auto|mirrored|multiworker", case_sensitive=False,
    help="mirrored: all GPUs of this machine; multiworker: several machines, from "
         "TF_CONFIG; auto: mirrored when more than one GPU is visible.")]

MlflowOpt = Annotated[bool, typer.Option(
    "--mlflow", help="Also log the run to MLflow: the options and model card as parameters, "
                     "every epoch's metrics, the final scores, and model.keras, config.json "
                     "and curves.png as artifacts. The store is MLFLOW_TRACKING_URI, else "
                     "./mlruns. Needs the mlflow extra.")]
MlflowExperimentOpt = Annotated[str | None, typer.Option(
    "--mlflow-experiment", metavar="NAME", show_default=False,
    help="MLflow experiment of the run (implies --mlflow). Default: MLFLOW_EXPERIMENT_NAME, "
         "else resnet-finetune.")]

# Parameters of `finetune` named differently from the FinetuneOptions field they fill.
_RENAMED = {"output": "run_dir"}


def _finetune_options(ctx: typer.Context) -> FinetuneOptions:
    """FinetuneOptions from the command's parameters, field by field (paths as text)."""
    params = {_RENAMED.get(name, name): value for name, value in ctx.params.items()}
    if params.pop("mixed_precision", False):
        # The deprecated --mixed-precision is --precision bf16 (old scripts keep working).
        source = ctx.get_parameter_source("precision")
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP") and \
                params["precision"] is not Precision.bf16:
            raise UsageError("--mixed-precision is the old name of --precision bf16; "
                             f"drop it or --precision {params['precision'].value}.")
        params["precision"] = Precision.bf16
    fields = {field.name for field in dataclasses.fields(FinetuneOptions)}
    values: dict[str, Any] = {name: str(value) if isinstance(value, Path) else value
                              for name, value in params.items() if name in fields}
    return FinetuneOptions(**values)


def _explicit_options(ctx: typer.Context) -> frozenset[str]:
    """The parameters given on the command line (or by environment), not left at defaults."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    given = {name for name, source in sources.items()
             if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")}
    if "mixed_precision" in given and ctx.params.get("mixed_precision"):
        given.add("precision")
    return frozenset(given)


def finetune(
    ctx: typer.Context,
    data_dir: DataDirArg,
    classes: ClassesOpt,
    output: RunDirOpt = None,
    model: ModelOpt = DEFAULTS.model,
    weights: WeightsOpt = DEFAULTS.weights,
    image_size: ImageSizeOpt = DEFAULTS.image_size,
    epochs: EpochsOpt = DEFAULTS.epochs,
    patience: PatienceOpt = DEFAULTS.patience,
    batch_size: BatchSizeOpt = DEFAULTS.batch_size,
    lr: LrOpt = DEFAULTS.lr,
    val_split: ValSplitOpt = DEFAULTS.val_split,
    val_dir: ValDirOpt = None,
    augment: AugmentOpt = DEFAULTS.augment,
    flip: FlipOpt = DEFAULTS.flip,
    fine_tune_epochs: FineTuneEpochsOpt = DEFAULTS.fine_tune_epochs,
    fine_tune_lr: FineTuneLrOpt = DEFAULTS.fine_tune_lr,
    unfreeze: UnfreezeOpt = DEFAULTS.unfreeze,
    label_smoothing: LabelSmoothingOpt = DEFAULTS.label_smoothing,
    class_weight: ClassWeightOpt = DEFAULTS.class_weight,
    weight_decay: WeightDecayOpt = DEFAULTS.weight_decay,
    seed: SeedOpt = DEFAULTS.seed,
    resize: ResizeOpt = DEFAULTS.resize,
    keep_checkpoints: KeepCheckpointsOpt = DEFAULTS.keep_checkpoints,
    resume: ResumeOpt = DEFAULTS.resume,
    overwrite: RunOverwriteOpt = DEFAULTS.overwrite,
    precision: PrecisionOpt = Precision(DEFAULTS.precision),
    mixed_precision: MixedPrecisionOpt = False,
    strategy: StrategyOpt = DEFAULTS.strategy,
    device: DeviceOpt = DEFAULTS.device,
    mlflow: MlflowOpt = DEFAULTS.mlflow,
    mlflow_experiment: MlflowExperimentOpt = DEFAULTS.mlflow_experiment,
    quiet: QuietOpt = False,
) -> None:
    """Train a classifier for your own classes (transfer learning, or from scratch).

    With pretrained weights: phase 1 trains a new head on the frozen backbone, phase 2
    (--fine-tune-epochs) unfreezes it at a low learning rate. With --weights none the whole
    network trains from the start, for longer, stopping when validation accuracy stalls
    (--patience) and keeping the best epoch; its BatchNorm statistics are recomputed with the
    weights of each epoch. RUN_DIR/model.keras then works with classify, extract,
    summary and evaluate (--weights RUN_DIR/model.keras): class names, input size and
    preprocessing come from RUN_DIR/config.json. --batch-size is the global batch, split over
    the replicas of --strategy; for multiworker, run the same command on every machine with
    TF_CONFIG describing the cluster (the chief writes RUN_DIR). --precision bf16 trains under
    Keras mixed precision where the hardware has it (the classifier in float32); model.keras
    is saved in float32 and runs at any --precision. RUN_DIR/logs holds TensorBoard event
    files (tensorboard --logdir runs/); --mlflow also logs the run to MLflow.

    Example: resnet finetune data/ --classes 10 -o runs/pets --epochs 5
    """
    from resnet_cli.render.training import epoch_line, render_finetune
    from resnet_cli.training import finetune as run_finetune

    err = make_console(stderr=True)

    def on_epoch(record: EpochRecord, total: int) -> None:
        if not quiet:
            err.print(epoch_line(record, total), markup=False)

    with user_errors():
        options = _finetune_options(ctx)
        if options.mlflow or options.mlflow_experiment:
            _quiet_retries()
        if mixed_precision:
            print_warning("--mixed-precision is deprecated: use --precision bf16")
        result = run_finetune(options, explicit=_explicit_options(ctx),
                              progress=not quiet, on_epoch=on_epoch, on_warning=print_warning)
    render_finetune(result, make_console())


def evaluate(
    data_dir: DataDirArg,
    weights: WeightsOpt = "imagenet",
    model: ModelOpt = DEFAULT_MODEL,
    image_size: ImageSizeOpt = None,
    batch_size: BatchSizeOpt = 32,
    resize: ResizeOpt = None,
    fmt: Annotated[ReportFormat, typer.Option(
        "--format", "-f", case_sensitive=False,
        help="A report of tables, or one JSON document.")] = ReportFormat.table,
    errors: Annotated[int, typer.Option(
        "--errors", min=0, metavar="N",
        help="List this many misclassified files (the most confident first).")] = 10,
    report: Annotated[Path | None, typer.Option(
        "--report", metavar="DIR", file_okay=False,
        help="Also write DIR/index.html, a self-contained page (pictures embedded) with the "
             "scores, the confusion matrix, the --errors mistakes as thumbnails and the "
             "run's training curves, and DIR/confusion_matrix.png. DIR is created when "
             "missing; files of these names in it are replaced.")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.fp32,
    mlflow_run: Annotated[str | None, typer.Option(
        "--mlflow-run", metavar="ID",
        help="Add the scores (evaluate/<DATA_DIR name>/...) and the JSON report (and the "
             "--report page) to this MLflow run, in MLFLOW_TRACKING_URI (else ./mlruns). "
             "Needs the mlflow extra.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Accuracy of a model on a folder-per-class dataset.

    Top-1 and top-5 accuracy, per-class precision/recall/F1, the confusion matrix and the
    files it got wrong. Class folders are matched to the model's classes by name: a finetuned
    model's own classes, or ImageNet WordNet ids (n01440764) or class names for ImageNet
    models. Unreadable images are reported, left out, and make the exit code 1. --report DIR
    writes the same as an HTML page to open in a browser.

    Example: resnet evaluate data/test --weights runs/pets/model.keras --errors 5
    """
    from resnet_cli.evaluate import evaluate_files
    from resnet_cli.models import ModelOptions, load_model
    from resnet_cli.render.evaluate import render_evaluation, write_evaluation_json
    from resnet_cli.tracking import open_run

    failures = FailureReporter()
    with user_errors():
        data = _check_outputs(data_dir, report)
        if mlflow_run:
            _quiet_retries()
        tracker = open_run(mlflow_run, print_warning) if mlflow_run else None
        loaded = load_model(ModelOptions(model=model, weights=weights, image_size=image_size,
                                         device=device, precision=precision.value),
                            progress=not quiet)
        result = evaluate_files(data, loaded, batch_size=batch_size, resize=resize,
                                max_mistakes=errors,
                                progress=not quiet, on_failure=failures)
    if fmt is ReportFormat.json:
        write_evaluation_json(result, sys.stdout)
    else:
        render_evaluation(result, make_console())
    if report is not None:
        _write_html_report(result, report, weights)
    if tracker is not None:
        _log_evaluation(tracker, result, data_dir, report)
    raise typer.Exit(failures.exit_code)


def _check_outputs(data_dir: Path, report: Path | None) -> ClassFolders:
    """The dataset, scanned (a bad layout or an unwritable --report fails before the model
    loads)."""
    from resnet_cli.datasets import scan_class_folders
    from resnet_cli.render.report import check_report_dir

    data = scan_class_folders(data_dir)
    if report is not None:
        check_report_dir(report)
    return data


def _quiet_retries() -> None:
    """Without -v, no urllib3 line for each retry of a tracking server: the outcome is one
    error or warning line of our own."""
    import logging

    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _log_evaluation(tracker: MlflowRun, result: Evaluation, data_dir: Path,
                    report: Path | None) -> None:
    """`--mlflow-run ID`: the scores as metrics and the reports as artifacts, under
    evaluate/<name of DATA_DIR>/."""
    import tempfile

    from resnet_cli.render.evaluate import write_evaluation_json
    from resnet_cli.render.report import INDEX_NAME, MATRIX_NAME
    from resnet_cli.tracking import metric_key

    prefix = f"evaluate/{metric_key(data_dir.resolve().name)}"
    tracker.log_metrics({f"{prefix}/top1_accuracy": result.top1,
                         f"{prefix}/top5_accuracy": result.top5,
                         f"{prefix}/macro_f1": result.to_dict()["macro_f1"],
                         f"{prefix}/images": result.images})
    with tempfile.TemporaryDirectory(prefix="resnet-evaluate-") as scratch:
        path = Path(scratch) / "evaluation.json"
        with open(path, "w", encoding="utf-8") as handle:
            write_evaluation_json(result, handle)
        files = [path]
        if report is not None:
            files += [report / INDEX_NAME, report / MATRIX_NAME]
        tracker.log_artifacts(files, prefix)
    if not tracker.broken:
        make_console(stderr=True).print(f"mlflow: logged to run {tracker.run_id}",
                                        markup=False)


def _write_html_report(result: Evaluation, folder: Path, weights: str) -> None:
    """`--report DIR`: write the page (with the curves of the model's run folder, if any) and
    say where it is on stderr."""
    from resnet_cli.render.report import run_curves, write_report

    with user_errors():
        index = write_report(result, folder, curves=run_curves(weights))
    make_console(stderr=True).print(f"report: {index}", markup=False)
