"""A run's logs for other tools: TensorBoard event files, and the MLflow run of `--mlflow`.

TensorBoard: `RUN_DIR/logs/train` and `RUN_DIR/logs/validation`, the layout and scalar names
of `keras.callbacks.TensorBoard` (`epoch_loss`, `epoch_accuracy`; `epoch_learning_rate` under
train), so `tensorboard --logdir runs/` shows every run. They are written with
`tf.summary.write` and the scalars plugin's metadata, as `tf.summary.scalar` writes them
(that one is TensorBoard's code, missing without the `tensorboard` package, which is only
needed to view the files). The step is the epoch number of history.csv (from 1, over both
phases), so a resumed run continues the same curves: it adds an event file to the same
folders, after writing the epochs of history.csv that no event file holds yet (a run
interrupted between its checkpoint and its log, or one started before these logs existed).

Both are written where the epoch record is made (`RunBook.epoch_done`), after the checkpoint
and state.json, so they never hold an epoch that --resume would train again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet_cli.card import CONFIG_FILENAME
from resnet_cli.results import EpochRecord, Evaluation
from resnet_cli.tracking import MlflowRun, flat_params, start_run
from resnet_cli.training.options import FinetuneOptions

log = logging.getLogger(__name__)

LOG_DIR = "logs"
TRAIN, VALIDATION = "train", "validation"
# Files of the run folder uploaded to the MLflow run's artifacts at the end.
ARTIFACTS = ("model.keras", CONFIG_FILENAME, "curves.png", "metrics.json", "history.csv",
             "labels.txt")


class TensorBoardLog:
    """The event files of one run folder; `epoch` writes one epoch's scalars."""

    def __init__(self, run_dir: Path, history: list[EpochRecord]) -> None:
        import tensorflow as tf

        root = run_dir / LOG_DIR
        logged = logged_steps(root / TRAIN, "epoch_loss")
        self._writers = {name: tf.summary.create_file_writer(str(root / name))
                         for name in (TRAIN, VALIDATION)}
        # What tensorboard.plugins.scalar.metadata.create_summary_metadata() makes.
        self._metadata = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
        for record in history:
            if record.epoch not in logged:
                self._write(record)
        self._flush()

    def epoch(self, record: EpochRecord) -> None:
        """Write `record`'s scalars at step `record.epoch`."""
        self._write(record)
        self._flush()

    def _write(self, record: EpochRecord) -> None:
        import tensorflow as tf

        scalars: dict[str, dict[str, float | None]] = {
            TRAIN: {"epoch_loss": record.loss, "epoch_accuracy": record.accuracy,
                    "epoch_learning_rate": record.lr},
            VALIDATION: {"epoch_loss": record.val_loss, "epoch_accuracy": record.val_accuracy}}
        for folder, values in scalars.items():
            with self._writers[folder].as_default():
                for tag, value in values.items():
                    if value is not None:
                        tf.summary.write(tag, tf.constant(value, tf.float32), step=record.epoch,
                                         metadata=self._metadata)

    def _flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close the event files."""
        for writer in self._writers.values():
            writer.close()


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar in the event files of `folder`: tag -> {step: value} (a later file's
    value wins). A file cut short (a run killed while writing) counts up to its last
    whole record."""
    import tensorflow as tf

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        try:
            for record in tf.data.TFRecordDataset(str(path)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                              else float(value.simple_value))
                    scalars.setdefault(value.tag, {})[int(event.step)] = number
        except tf.errors.DataLossError:
            continue
    return scalars


def logged_steps(folder: Path, tag: str) -> set[int]:
    """The steps at which the event files of `folder` hold `tag`."""
    return set(read_scalars(folder).get(tag, {})) if folder.is_dir() else set()


# ----- MLflow -----------------------------------------------------------------------------

def start_mlflow(opts: FinetuneOptions, state: dict[str, Any] | None,
                 warn: Callable[[str], None]) -> MlflowRun | None:
    """The MLflow run of `--mlflow` (None without it): a resumed run continues the MLflow
    run recorded in its config.json where the same store still has it.

    Raises:
        UsageError: the mlflow extra is missing.
        TrackingError: the store cannot be reached.
    """
    if not opts.mlflow:
        return None
    run_dir = Path(str(opts.run_dir))
    previous: dict[str, Any] = {}
    if state is not None:
        previous = json.loads((run_dir / CONFIG_FILENAME).read_text()).get("mlflow") or {}
    tracker = start_run(experiment=str(opts.mlflow_experiment), run_name=run_dir.name,
                        tags={"resnet_cli.command": "finetune",
                              "resnet_cli.run_dir": str(run_dir.resolve())},
                        resume_id=previous.get("run_id"), warn=warn)
    if previous.get("run_id") not in (None, tracker.run_id):
        warn(f"MLflow run {previous['run_id']} of {run_dir} is not in {tracker.uri}: "
             f"logging to a new run, {tracker.run_id}")
    return tracker


def mlflow_params(config: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters: every resolved option, the model card, the image counts."""
    dataset = config.get("dataset", {})
    return {**flat_params("", config["options"]),
            **flat_params("card", config.get("resnet_cli_card", {})),
            "train_images": dataset.get("train_images"),
            "val_images": dataset.get("val_images")}


def finish_mlflow(tracker: MlflowRun, write_dir: Path, metrics: Evaluation | None,
                  seconds: float) -> None:
    """The final metrics, the run folder's files as artifacts, and FINISHED."""
    tracker.log_metrics({
        "final_val_accuracy": metrics.top1 if metrics else None,
        "final_val_top5_accuracy": metrics.top5 if metrics else None,
        "final_val_macro_f1": metrics.to_dict()["macro_f1"] if metrics else None,
        "training_seconds": seconds})
    tracker.log_artifacts(write_dir / name for name in ARTIFACTS)
    tracker.end("FINISHED")
