"""Training logs: TensorBoard event files in the run folder, and `--mlflow` runs.

Real tiny finetune runs (ResNet50 at 32 px, 3 classes of 4 PNGs, eager train steps as in
test_training.py), a real MLflow file store in tmp_path read back with MLflow's own client, and
the event files read back with TensorFlow's reader (`summary_iterator`), not with the code that
wrote them.
"""

from __future__ import annotations

import csv
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
from conftest import write_class_dataset as write_dataset

from resnet_cli.cli import app
from resnet_cli.results import EpochRecord
from resnet_cli.training import FinetuneOptions, TrainingInterrupted, finetune

pytestmark = pytest.mark.filterwarnings("ignore:Even though the:UserWarning")

EPOCH_TAGS = {"train": ("epoch_loss", "epoch_accuracy", "epoch_learning_rate"),
              "validation": ("epoch_loss", "epoch_accuracy")}


@pytest.fixture(scope="module", autouse=True)
def _eager_train_steps():
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A local MLflow store in tmp_path as MLFLOW_TRACKING_URI (file: URI)."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    # resnet_cli allows MLflow 3's file store itself (set, then removed: restored afterwards).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    return uri


def client(uri: str):
    import os

    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # restored by `store`'s monkeypatch
    return MlflowClient(tracking_uri=uri)


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


def scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of one event file, in file order (TensorFlow's reader)."""
    import tensorflow as tf

    found: dict[str, list[tuple[int, float]]] = {}
    for event in tf.compat.v1.train.summary_iterator(str(path)):
        for value in event.summary.value:
            found.setdefault(value.tag, []).append(
                (event.step, float(tf.make_ndarray(value.tensor))))
    return found


def all_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every event file's scalars by tag, in step order as TensorBoard shows them (files
    written in the same second need not sort by name in the order they were written); a
    step logged twice would show twice."""
    merged: dict[str, list[tuple[int, float]]] = {}
    for path in event_files(folder):
        for tag, points in scalars(path).items():
            merged.setdefault(tag, []).extend(points)
    return {tag: sorted(points, key=lambda point: point[0]) for tag, points in merged.items()}


def read_history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def metric_history(mlflow, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(mlflow.get_metric_history(run_id, key),
                                               key=lambda m: m.step)]


def backbone_weights(tmp_path: Path) -> Path:
    import keras

    from resnet_cli.models import build_model
    from resnet_cli.registry import get_spec

    keras.utils.set_random_seed(5)
    path = tmp_path / "backbone.weights.h5"
    build_model(get_spec("resnet50"), include_top=False, image_size=32).save_weights(path)
    return path


def test_two_phases_interrupted_and_resumed_hold_every_epoch_in_tensorboard_and_mlflow(
        tmp_path, runner, store):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "runs" / "pets"

    def stop_after_first_epoch(record: EpochRecord, total: int) -> None:
        if record.epoch == 1:
            raise KeyboardInterrupt

    options = FinetuneOptions(str(data), 3, run_dir=str(run), weights=str(backbone_weights(
        tmp_path)), image_size=32, epochs=1, fine_tune_epochs=1, unfreeze="1", batch_size=4,
        mlflow_experiment="pets")  # implies --mlflow
    with pytest.raises(TrainingInterrupted):
        finetune(options, progress=False, on_epoch=stop_after_first_epoch)
    first_config = json.loads((run / "config.json").read_text())
    run_id = first_config["mlflow"]["run_id"]
    assert first_config["mlflow"]["tracking_uri"] == store
    mlflow = client(store)
    assert mlflow.get_run(run_id).info.status == "KILLED"
    assert [step for step, _ in metric_history(mlflow, run_id, "loss")] == [1]
    assert [step for step, _ in all_scalars(run / "logs" / "train")["epoch_loss"]] == [1]

    resumed = runner.invoke(app, ["finetune", str(data), "--classes", "3", "-o", str(run),
                                  "--resume", "--mlflow", "--mlflow-experiment", "pets",
                                  "--quiet"])
    assert resumed.exit_code == 0, resumed.stderr
    assert "warning" not in resumed.stderr

    history = read_history(run)
    assert [(row["epoch"], row["phase"]) for row in history] == [("1", "1"), ("2", "2")]
    expected = {  # history.csv's columns by the TensorBoard folder and tag they go to
        ("train", "epoch_loss"): "loss", ("train", "epoch_accuracy"): "accuracy",
        ("train", "epoch_learning_rate"): "lr", ("validation", "epoch_loss"): "val_loss",
        ("validation", "epoch_accuracy"): "val_accuracy"}
    for (folder, tag), column in expected.items():
        # The resumed run added its own event file, continuing at step 2 (not 0 or 1).
        files = event_files(run / "logs" / folder)
        assert len(files) == 2, (folder, files)
        assert [step for step, _ in scalars(files[0])[tag]] == [1]
        assert [step for step, _ in scalars(files[1])[tag]] == [2]
        points = all_scalars(run / "logs" / folder)[tag]
        assert [step for step, _ in points] == [1, 2]
        for (_, value), row in zip(points, history, strict=True):
            assert value == pytest.approx(float(row[column]), rel=1e-5, abs=1e-6), (tag, row)
    assert set(all_scalars(run / "logs" / "train")) == set(EPOCH_TAGS["train"])
    assert set(all_scalars(run / "logs" / "validation")) == set(EPOCH_TAGS["validation"])

    config = json.loads((run / "config.json").read_text())
    assert config["mlflow"]["run_id"] == run_id  # the same MLflow run, continued
    logged = mlflow.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert mlflow.get_experiment(logged.info.experiment_id).name == "pets"
    for key, column in (("loss", "loss"), ("accuracy", "accuracy"), ("val_loss", "val_loss"),
                        ("val_accuracy", "val_accuracy"), ("learning_rate", "lr")):
        points = metric_history(mlflow, run_id, key)
        assert [step for step, _ in points] == [1, 2], key
        for (_, value), row in zip(points, history, strict=True):
            assert value == pytest.approx(float(row[column]), rel=1e-5, abs=1e-6), (key, row)
    metrics = json.loads((run / "metrics.json").read_text())
    assert logged.data.metrics["final_val_accuracy"] == pytest.approx(metrics["val_accuracy"])
    assert logged.data.metrics["final_val_macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert "final_val_top5_accuracy" not in logged.data.metrics  # 3 classes: no top-5
    params = logged.data.params
    assert params["model"] == "resnet50" and params["epochs"] == "1"
    assert params["fine_tune_epochs"] == "1" and params["unfreeze"] == "1"
    assert params["card.class_names"] == "cat,dog,fox" and params["card.image_size"] == "32"
    assert params["train_images"] == "9" and params["val_images"] == "3"
    artifacts = {a.path: a.file_size for a in mlflow.list_artifacts(run_id)}
    for name in ("model.keras", "config.json", "curves.png", "metrics.json", "history.csv"):
        assert artifacts.get(name) == (run / name).stat().st_size, name

    evaluated = runner.invoke(app, ["evaluate", str(data), "--weights", str(run / "model.keras"),
                                    "--mlflow-run", run_id, "--format", "json", "--quiet",
                                    "--report", str(tmp_path / "report")])
    assert evaluated.exit_code == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert f"mlflow: logged to run {run_id}" in evaluated.stderr
    after = mlflow.get_run(run_id).data.metrics
    assert after["evaluate/data/top1_accuracy"] == pytest.approx(report["top1_accuracy"])
    assert after["evaluate/data/images"] == 12
    files = [a.path for a in mlflow.list_artifacts(run_id, "evaluate/data")]
    assert files == ["evaluate/data/confusion_matrix.png", "evaluate/data/evaluation.json",
                     "evaluate/data/index.html"]
    copy = Path(mlflow.download_artifacts(run_id, "evaluate/data/evaluation.json",
                                          str(tmp_path)))
    assert json.loads(copy.read_text())["top1_accuracy"] == report["top1_accuracy"]


def test_a_store_that_fails_during_the_run_costs_one_warning_not_the_run(tmp_path, store):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    mlflow_dir = Path(store.removeprefix("file://"))

    def remove_the_mlflow_run(record: EpochRecord, total: int) -> None:
        # The store loses the run after epoch 1 was logged: the end of the run cannot be.
        info = json.loads((run / "config.json").read_text())["mlflow"]
        shutil.rmtree(mlflow_dir / info["experiment_id"] / info["run_id"])

    warnings: list[str] = []
    result = finetune(FinetuneOptions(str(data), 3, run_dir=str(run), weights="none",
                                      image_size=32, epochs=1, batch_size=4, mlflow=True),
                      progress=False, on_epoch=remove_the_mlflow_run,
                      on_warning=warnings.append)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("MLflow: could not log the metrics to run ")
    assert "run folder is complete" in warnings[0]
    assert [r.epoch for r in result.history] == [1]
    for name in ("model.keras", "metrics.json", "history.csv", "curves.png", "config.json"):
        assert (run / name).is_file(), name
    assert [s for s, _ in all_scalars(run / "logs" / "validation")["epoch_accuracy"]] == [1]
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["mlflow_experiment"] == "resnet-finetune"
    assert config["finished"]


def test_an_epoch_that_cannot_be_logged_warns_once_and_training_goes_on(tmp_path, store):
    from resnet_cli.tracking import start_run

    warnings: list[str] = []
    tracker = start_run(experiment="e", run_name="r", tags={}, resume_id=None,
                        warn=warnings.append)
    record = EpochRecord(epoch=1, phase=1, lr=0.1, loss=1.0, accuracy=0.5, val_loss=1.0,
                         val_accuracy=0.5, seconds=1.0)
    tracker.epoch(record)
    shutil.rmtree(Path(store.removeprefix("file://")) / tracker.experiment_id / tracker.run_id)
    for epoch in (2, 3):  # neither raises; only the first failure is told
        tracker.epoch(EpochRecord(**{**record.__dict__, "epoch": epoch}))
    tracker.log_artifacts([tmp_path / "x"])
    tracker.end("FINISHED")
    assert len(warnings) == 1 and "could not log epoch 2" in warnings[0], warnings
    assert tracker.broken


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_store_or_missing_extra_is_one_line_before_training(tmp_path, runner,
                                                                       monkeypatch):
    data = write_dataset(tmp_path / "data", per_class=2)
    run = tmp_path / "run"
    args = ["finetune", str(data), "--classes", "3", "-o", str(run), "--weights", "none",
            "--image-size", "32", "--epochs", "1", "--mlflow"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --mlflow: cannot reach"), lines
    assert "MLFLOW_TRACKING_URI" in lines[0]
    assert not run.exists()  # nothing trained, no run folder left

    # A store that cannot be created (its folder would be inside a file).
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (blocker / "mlruns").as_uri())
    unwritable = runner.invoke(app, args)
    assert unwritable.exit_code == 1
    assert unwritable.stderr.count("error:") == 1 and "cannot reach" in unwritable.stderr
    assert not run.exists()

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    missing = runner.invoke(app, args)
    assert missing.exit_code == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --mlflow needs mlflow: pip install")
    assert "[mlflow]'" in lines[0]
    evaluated = runner.invoke(app, ["evaluate", str(data), "--mlflow-run", "abc"])
    assert evaluated.exit_code == 2 and "--mlflow-run needs mlflow" in evaluated.stderr


def test_logs_of_a_resumed_run_fill_in_the_epochs_they_lack(tmp_path, store):
    from resnet_cli.tracking import start_run
    from resnet_cli.training.logs import TensorBoardLog

    records = [EpochRecord(epoch=n, phase=1, lr=0.1 / n, loss=1.0 / n, accuracy=0.2 * n,
                           val_loss=None if n == 2 else 2.0 / n, val_accuracy=0.1 * n,
                           seconds=1.0) for n in (1, 2, 3)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorboard", None)  # writing needs no tensorboard
        first = TensorBoardLog(tmp_path, records[:1])  # epoch 1 written at the start
        first.close()
    # The next invocation: history.csv holds epochs 1-2 (2 was never logged), then 3 runs.
    second = TensorBoardLog(tmp_path, records[:2])
    second.epoch(records[2])
    second.close()
    train = all_scalars(tmp_path / "logs" / "train")
    assert train["epoch_loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [s for s, _ in train["epoch_learning_rate"]] == [1, 2, 3]
    validation = all_scalars(tmp_path / "logs" / "validation")
    assert [s for s, _ in validation["epoch_loss"]] == [1, 3]  # epoch 2 had no val_loss
    # TensorBoard's own reader sees them as scalars (its scalars plugin).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "logs" / "train")).Reload()
    assert set(accumulator.Tags()["tensors"]) == set(EPOCH_TAGS["train"])
    import tensorflow as tf

    # (in step order: the two files of this test are written within one second, and such
    # files need not sort by name in the order they were written)
    assert sorted((e.step, float(tf.make_ndarray(e.tensor_proto)))
                  for e in accumulator.Tensors("epoch_loss")) == [
        (1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert accumulator.SummaryMetadata("epoch_loss").plugin_data.plugin_name == "scalars"

    warnings: list[str] = []
    tracker = start_run(experiment="e", run_name="r", tags={}, resume_id=None,
                        warn=warnings.append)
    tracker.log_epochs(records[:1])
    again = start_run(experiment="e", run_name="r", tags={}, resume_id=tracker.run_id,
                      warn=warnings.append)
    assert again.run_id == tracker.run_id
    again.log_epochs(records[:2])
    again.epoch(records[2])
    mlflow = client(store)
    assert metric_history(mlflow, tracker.run_id, "loss") == [
        (1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [s for s, _ in metric_history(mlflow, tracker.run_id, "val_loss")] == [1, 3]
    other = start_run(experiment="e", run_name="r", tags={}, resume_id="not-a-run",
                      warn=warnings.append)
    assert other.run_id != tracker.run_id and not warnings
