"""`resnet finetune`: train a ResNet classifier on a folder-per-class dataset.

The recipe is the one of Keras' transfer-learning guide (see `head`): with pretrained weights
a new head trains on the frozen backbone, then the top of the backbone is unfrozen at a low
learning rate; with `--weights none` the whole network trains from the start.

A run folder holds `model.keras` (the whole model, taking preprocessed input like the Keras
applications), `config.json` (every resolved option, package versions and the model card that
`classify`, `extract`, `summary` and `evaluate` read), `labels.txt`, `history.csv`,
`metrics.json`, `logs/` (TensorBoard event files) and `checkpoints/` (the last epoch's model
with its optimizer state, for `--resume`); `--mlflow` also logs the run to MLflow.

Modules: `options` (what was asked, checked without TensorFlow), `run_folder` (the files of a
run), `data` (the training and validation images, decoded or streamed), `head` (the classifier
and each phase's optimizer), `distribute` (strategies), `engine` (the distributed train and
evaluation steps, and precise BatchNorm statistics), `epochs` (the epochs of a phase), `logs`
(TensorBoard and MLflow) and
`loop` (`finetune()` itself).
"""

from __future__ import annotations

from resnet_cli.results import EpochRecord, FinetuneResult
from resnet_cli.training.distribute import is_chief, make_strategy
from resnet_cli.training.head import block_prefixes, build_classifier, set_trainable
from resnet_cli.training.loop import TrainingInterrupted, finetune
from resnet_cli.training.options import (
    DEFAULTS,
    ClassWeight,
    FinetuneOptions,
    Phase,
    Strategy,
    parse_unfreeze,
    phase_plan,
    resolve_options,
)
from resnet_cli.training.run_folder import read_history

__all__ = [
    "DEFAULTS",
    "ClassWeight",
    "EpochRecord",
    "FinetuneOptions",
    "FinetuneResult",
    "Phase",
    "Strategy",
    "TrainingInterrupted",
    "block_prefixes",
    "build_classifier",
    "finetune",
    "is_chief",
    "make_strategy",
    "parse_unfreeze",
    "phase_plan",
    "read_history",
    "resolve_options",
    "set_trainable",
]
