"""The run folder of `resnet finetune`: preparing it, resuming from it, and what is written
in it (config.json, labels.txt, history.csv, metrics.json, checkpoints/).

Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import platform
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from resnet_cli.card import CONFIG_FILENAME, ModelCard, card_entry
from resnet_cli.datasets import ClassFolders
from resnet_cli.errors import DatasetError, OutputError, ResnetCliError, UsageError
from resnet_cli.outputs import atomic_open, atomic_path, check_creatable, set_aside
from resnet_cli.results import EpochRecord
from resnet_cli.training.distribute import is_chief
from resnet_cli.training.options import FinetuneOptions, plain

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
HISTORY_FIELDS = ("epoch", "phase", "lr", "loss", "accuracy", "val_loss", "val_accuracy",
                  "seconds")
# Options that define a run: --resume refuses a command line that changes one of them.
RUN_DEFINING = ("classes", "model", "weights", "image_size", "epochs", "batch_size", "lr",
                "val_split", "val_dir", "augment", "flip", "fine_tune_epochs", "fine_tune_lr",
                "unfreeze", "label_smoothing", "class_weight", "weight_decay", "seed", "resize",
                "patience", "precision")


def prepare_run_dir(options: FinetuneOptions, explicit: frozenset[str]
                    ) -> tuple[FinetuneOptions, dict[str, Any] | None]:
    """Check the run folder; for --resume, return the stored options and checkpoint state.

    Raises:
        OutputError: a file in the way, nothing to resume, or a run there without
            --overwrite or --resume.
        UsageError: --resume with options that change the run.
    """
    run_dir = Path(str(options.run_dir))
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"-o {run_dir} is a file; give a folder for the run.")
    check_creatable(run_dir)
    if options.resume:
        return _resume_state(options, run_dir, explicit)
    if not is_chief():
        return options, None  # only the chief writes RUN_DIR (other workers use scratch)
    if run_dir.exists() and any(run_dir.iterdir()) and not options.overwrite:
        raise OutputError(f"{run_dir} already exists and is not empty; pass --resume to "
                          "continue its run, --overwrite to replace it, or another -o.")
    return options, None


@contextlib.contextmanager
def replacing(run_dir: Path, *, overwrite: bool) -> Iterator[None]:
    """Leave nothing half-written: a run folder this run creates is removed if the run fails,
    and with `overwrite` an existing one is moved aside while the new run is written, then
    removed once the new run is complete or put back if it fails. A run interrupted with
    Ctrl-C after a completed epoch is kept, for --resume. Other workers touch nothing."""
    chief = is_chief()
    created = chief and not run_dir.exists()
    replace = overwrite and chief and run_dir.is_dir() and any(run_dir.iterdir())
    kept: BaseException | None = None
    with set_aside(run_dir) if replace else contextlib.nullcontext():
        try:
            yield
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt) or (
                isinstance(exc, ResnetCliError) and exc.exit_code == 130)
            if not (interrupted and (run_dir / CHECKPOINT_DIR / STATE_FILE).is_file()):
                if created:
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise  # set_aside puts the old run back
            kept = exc  # resumable: the new run stays, the old one goes
    if kept is not None:
        raise kept


def _resume_state(options: FinetuneOptions, run_dir: Path, explicit: frozenset[str]
                  ) -> tuple[FinetuneOptions, dict[str, Any]]:
    config_path = run_dir / CONFIG_FILENAME
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
    stored = _upgrade_options(stored)
    changed = [f"--{key.replace('_', '-')} {plain(getattr(options, key))} (the run has "
               f"{stored.get(key)})" for key in RUN_DEFINING
               if key in explicit and _differs(getattr(options, key), stored.get(key))]
    if changed:
        raise UsageError(f"--resume continues {run_dir} with its own options; "
                         f"{'; '.join(changed)}. Drop them or start a new run.")
    known = {f.name for f in dataclasses.fields(FinetuneOptions)}
    merged = {k: v for k, v in stored.items() if k in known and k in RUN_DEFINING}
    return dataclasses.replace(options, **merged), state


def _upgrade_options(stored: dict[str, Any]) -> dict[str, Any]:
    """Options stored by older versions, in today's terms: `mixed_precision` (a boolean, before
    `--precision`) is `precision` bf16, and its absence fp32."""
    if "precision" not in stored:
        stored = {**stored, "precision": "bf16" if stored.get("mixed_precision") else "fp32"}
    return stored


def _differs(given: Any, stored: Any) -> bool:
    given = plain(given)
    if isinstance(given, float) or isinstance(stored, float):
        try:
            return not math.isclose(float(given), float(stored), rel_tol=1e-9)
        except (TypeError, ValueError):
            return True
    return str(given) != str(stored)


def check_same_dataset(run_dir: Path, data: ClassFolders, warn: Callable[[str], None]) -> None:
    """--resume: the classes must be those of the run; a changed file count is a warning.

    Raises:
        DatasetError: other classes than the run's.
    """
    stored = json.loads((run_dir / CONFIG_FILENAME).read_text()).get("dataset", {})
    classes = stored.get("classes")
    if classes is not None and list(classes) != list(data.class_names):
        raise DatasetError(f"--resume: {data.root} has classes {', '.join(data.class_names)}, "
                           f"but {run_dir} was trained on {', '.join(classes)}.")
    if stored.get("files") not in (None, len(data.paths)):
        warn(f"{data.root} now holds {len(data.paths)} images, {stored['files']} when the run "
             "started: the split and the epochs to come differ from an uninterrupted run")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Python's version and those of the packages a run depends on."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("resnet-cli", "tensorflow", "keras", "numpy", "pillow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_config(opts: FinetuneOptions, card: ModelCard, data: ClassFolders,
               dataset: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """config.json: the model card, every resolved option, the data, the training set-up and
    package versions."""
    return {
        **card_entry(card),
        "command": "finetune",
        "options": {k: plain(v) for k, v in dataclasses.asdict(opts).items()
                    if k not in ("resume", "overwrite", "memory_budget")},
        "dataset": {"data_dir": opts.data_dir, "classes": list(data.class_names), **dataset,
                    "skipped": []},
        "training": training,
        "versions": versions(),
        "started": now(),
        "finished": None,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """`data` as indented JSON, written atomically."""
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def write_labels(path: Path, class_names: tuple[str, ...]) -> None:
    """labels.txt: one class name a line, in output order."""
    with atomic_open(path) as handle:
        handle.write("".join(f"{name}\n" for name in class_names))


def write_history(path: Path, history: list[EpochRecord]) -> None:
    """history.csv: one row per epoch."""
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


class EpochLog(Protocol):
    """A log told of every finished epoch (TensorBoard's event files, an MLflow run)."""

    def epoch(self, record: EpochRecord) -> None: ...


@dataclass
class RunBook:
    """Per-epoch bookkeeping of a run: checkpoint, history.csv, state.json, the `logs`,
    then `on_epoch`."""

    run_dir: Path
    write_dir: Path  # run_dir, or a scratch folder on non-chief workers
    total_epochs: int
    keep: int
    history: list[EpochRecord]
    on_epoch: Callable[[EpochRecord, int], None] | None
    logs: list[EpochLog] = field(default_factory=list)

    @property
    def checkpoints(self) -> Path:
        return self.write_dir / CHECKPOINT_DIR

    def epoch_done(self, model: Any, record: EpochRecord) -> None:
        """Save the epoch's checkpoint (model and optimizer state) and record it."""
        name = f"epoch-{record.epoch:03d}.keras"
        with atomic_path(self.checkpoints / name) as tmp:
            model.save(tmp)
        self.history = [row for row in self.history if row.epoch < record.epoch] + [record]
        write_history(self.write_dir / "history.csv", self.history)
        write_json(self.checkpoints / STATE_FILE, {
            "epoch": record.epoch, "phase": record.phase, "checkpoint": name,
            "saved": now()})
        # After state.json: a log never holds an epoch that --resume would train again.
        for epoch_log in self.logs:
            epoch_log.epoch(record)
        if self.keep:
            old = sorted(self.checkpoints.glob("epoch-*.keras"))[:-self.keep]
            for path in old:
                path.unlink(missing_ok=True)
        if self.on_epoch is not None:
            self.on_epoch(record, self.total_epochs)

    def last_checkpoint(self) -> str:
        """The newest checkpoint's path, or "" when no epoch was completed."""
        try:
            state = json.loads((self.checkpoints / STATE_FILE).read_text())
            return str(self.run_dir / CHECKPOINT_DIR / state["checkpoint"])
        except (OSError, ValueError, KeyError):
            return ""
