"""Experiment tracking in MLflow: `finetune --mlflow` and `evaluate --mlflow-run ID`.

The tracking URI is MLflow's own `MLFLOW_TRACKING_URI`, else a local store in `./mlruns`
(MLflow's file store: since MLflow 3 it must be allowed with `MLFLOW_ALLOW_FILE_STORE`, which
is set for that default). MLflow is imported only here and only when asked for (the `mlflow`
extra, mlflow-skinny). Reaching the store is checked before training starts and fails in one
line; after that a failing store costs one warning and no more tracking, never the training
(the run folder holds everything the store would).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_cli.errors import ResnetCliError, first_line
from resnet_cli.extras import require_module
from resnet_cli.results import EpochRecord

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlruns"
DEFAULT_EXPERIMENT = "resnet-finetune"
# The per-epoch metrics, named as MLflow's Keras autologging names them.
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value
_BATCH = 100  # parameters per log_batch call (MLflow's limit)
_METRIC_BATCH = 1000  # metrics per log_batch call (MLflow's limit)
# Fewer retries than MLflow's default (7, doubling from 2 s): a server that does not answer
# fails the start in seconds, and costs a running epoch seconds rather than minutes.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingError(ResnetCliError):
    """The MLflow tracking store cannot be reached, or has no such run."""


def reason(exc: BaseException) -> str:
    """Why a call to the store failed, short: the OS's error where one is quoted (MLflow's
    HTTP errors nest it three deep), else the first line of the message."""
    text = first_line(exc)
    errno = re.search(r"\[Errno -?\d+\] [^\"')]+", text)
    if errno:
        return errno.group(0).strip()
    return text if len(text) <= 200 else text[:199] + "…"


def resolve_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the file store in ./mlruns (as an absolute file: URI)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or (Path.cwd() / DEFAULT_STORE).resolve().as_uri()


def resolve_experiment(name: str | None) -> str:
    """`--mlflow-experiment`, else MLflow's `MLFLOW_EXPERIMENT_NAME`, else resnet-finetune."""
    return (name or os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip()
            or DEFAULT_EXPERIMENT)


def _client_class(uri: str, purpose: str) -> Any:
    """MlflowClient, with the environment `uri` needs (set where the user has not).

    Raises:
        UsageError: the mlflow extra is missing.
    """
    tracking = require_module("mlflow.tracking", extra="mlflow", purpose=purpose)
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if uri.startswith("file:") or "://" not in uri:
        # A local folder: MLflow 3 refuses its file store unless this is set.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return tracking.MlflowClient


@dataclass
class MlflowRun:
    """One MLflow run, logged to until the first error (then one warning and no more)."""

    client: Any
    run_id: str
    uri: str
    experiment_id: str
    warn: Callable[[str], None]
    broken: bool = False

    def info(self) -> dict[str, str]:
        """Where the run is, for config.json."""
        return {"tracking_uri": self.uri, "experiment_id": self.experiment_id,
                "run_id": self.run_id}

    def _guard(self, what: str, call: Callable[[], object]) -> None:
        if self.broken:
            return
        try:
            call()
        # Whatever the store or its transport raises (MlflowException, requests', OSError),
        # the training goes on: the run folder already holds what failed to be logged.
        except Exception as exc:
            self.broken = True
            self.warn(f"MLflow: could not log {what} to run {self.run_id} at {self.uri} "
                      f"({reason(exc)}); no more MLflow logging for this run, the run "
                      "folder is complete")

    def log_params(self, params: dict[str, Any]) -> None:
        """Log the parameters the run does not have yet (a resumed run keeps its own)."""
        from mlflow.entities import Param

        def call() -> None:
            have = self.client.get_run(self.run_id).data.params
            new = [Param(key, str(value)[:_PARAM_LENGTH]) for key, value in params.items()
                   if key not in have]
            for start in range(0, len(new), _BATCH):
                self.client.log_batch(self.run_id, params=new[start:start + _BATCH])

        self._guard("the parameters", call)

    def log_epochs(self, records: Iterable[EpochRecord]) -> None:
        """Log the epochs the run does not have yet (step = the epoch number)."""

        def call() -> None:
            logged = {m.step for m in self.client.get_metric_history(self.run_id, "loss")}
            metrics = [m for r in records if r.epoch not in logged for m in _epoch_metrics(r)]
            for start in range(0, len(metrics), _METRIC_BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[start:start + _METRIC_BATCH])

        self._guard("the epochs", call)

    def epoch(self, record: EpochRecord) -> None:
        """Log one finished epoch (a RunBook log)."""
        self._guard(f"epoch {record.epoch}",
                    lambda: self.client.log_batch(self.run_id, metrics=_epoch_metrics(record)))

    def log_metrics(self, metrics: dict[str, float | None], *, step: int = 0) -> None:
        """Log final metrics (None values are left out)."""
        from mlflow.entities import Metric

        stamp = _now_ms()
        rows = [Metric(key, float(value), stamp, step) for key, value in metrics.items()
                if value is not None]
        self._guard("the metrics", lambda: self.client.log_batch(self.run_id, metrics=rows))

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        """Upload files (those that exist) to the run's artifacts."""
        for path in paths:
            if path.is_file():
                self._guard(path.name, lambda p=path: self.client.log_artifact(  # type: ignore[misc]
                    self.run_id, str(p), artifact_path))

    def end(self, status: str) -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        self._guard(f"the status {status}",
                    lambda: self.client.set_terminated(self.run_id, status=status))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _epoch_metrics(record: EpochRecord) -> list[Any]:
    from mlflow.entities import Metric

    values = {"loss": record.loss, "accuracy": record.accuracy, "val_loss": record.val_loss,
              "val_accuracy": record.val_accuracy, "learning_rate": record.lr}
    stamp = _now_ms()
    return [Metric(key, float(value), stamp, record.epoch) for key, value in values.items()
            if value is not None]


def start_run(*, experiment: str, run_name: str, tags: dict[str, str],
              resume_id: str | None, warn: Callable[[str], None]) -> MlflowRun:
    """Reach the store, find or create `experiment`, and open a run: the run `resume_id`
    (that of the run folder being resumed) where the store still has it, else a new one.

    Raises:
        UsageError: the mlflow extra is missing.
        TrackingError: the store cannot be reached or written.
    """
    uri = resolve_tracking_uri()
    client_class = _client_class(uri, "--mlflow")
    try:
        client = client_class(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found is not None
                         else client.create_experiment(experiment))
        run = _existing_run(client, resume_id, experiment_id)
        if run is None:
            run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        else:
            client.update_run(run.info.run_id, status="RUNNING")
    except Exception as exc:  # whatever the store raises: nothing has started yet
        raise TrackingError(f"--mlflow: cannot reach the MLflow tracking store {uri} "
                            f"({reason(exc)}); set MLFLOW_TRACKING_URI to a store "
                            "that answers, or leave out --mlflow.") from exc
    return MlflowRun(client, run.info.run_id, uri, experiment_id, warn)


def _existing_run(client: Any, run_id: str | None, experiment_id: str) -> Any:
    """The run `run_id` of `experiment_id`, or None where the store has no such run."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.experiment_id == experiment_id else None


def open_run(run_id: str, warn: Callable[[str], None]) -> MlflowRun:
    """An existing run, to add to (`evaluate --mlflow-run ID`).

    Raises:
        UsageError: the mlflow extra is missing.
        TrackingError: the store cannot be reached, or has no run `run_id`.
    """
    uri = resolve_tracking_uri()
    client_class = _client_class(uri, "--mlflow-run")
    try:
        client = client_class(tracking_uri=uri)
        run = client.get_run(run_id)
    except Exception as exc:
        raise TrackingError(f"--mlflow-run {run_id}: not found in the MLflow tracking store "
                            f"{uri} ({reason(exc)}); set MLFLOW_TRACKING_URI to the "
                            "store that holds it.") from exc
    return MlflowRun(client, run.info.run_id, uri, run.info.experiment_id, warn)


def flat_params(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts as one level of `prefix.key` parameters; lists joined with commas."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flat_params(name, value))
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(str(v) for v in value)
        else:
            flat[name] = value
    return flat


def metric_key(text: str) -> str:
    """`text` as a part of an MLflow metric name (letters, digits, _ - . only)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "data"
