"""The images `finetune()` trains on: found, split, decoded (or streamed) and batched.

`scan_splits` finds the class folders and sets the validation images apart;
`load_training_data` decodes both splits into memory when they fit the memory budget (or
prepares to stream them), skipping unreadable files, and sizes the batches and class weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resnet_cli.datasets import (
    ClassFolders,
    DecodedImages,
    ImageSource,
    StreamedImages,
    decode_all,
    fits_in_memory,
    scan_class_folders,
    source_labels,
    source_size,
    split_stratified,
)
from resnet_cli.errors import DatasetError, ImageError
from resnet_cli.training.options import ClassWeight, FinetuneOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """The dataset, split into training and validation images."""

    data: ClassFolders
    train: ClassFolders
    val: ClassFolders
    val_source: str  # how the validation images were chosen, for config.json


@dataclass(frozen=True)
class TrainingData:
    """The images as training reads them, and the batch set-up they allow."""

    splits: Splits
    train: ImageSource
    val: ImageSource | None
    skipped: list[ImageError]
    batch: int
    steps: int
    class_weights: list[float] | None


def scan_splits(opts: FinetuneOptions) -> Splits:
    """Find the dataset's images and split them: `--val-dir`, or a stratified `--val-split`."""
    data = scan_class_folders(opts.data_dir, classes=opts.classes)
    if opts.val_dir:
        val = scan_class_folders(opts.val_dir, known_classes=data.class_names)
        return Splits(data, data, val, opts.val_dir)
    train, val = split_stratified(data, opts.val_split, opts.seed)
    return Splits(data, train, val,
                  f"{opts.val_split:g} of {opts.data_dir} (stratified, seed {opts.seed})")


def load_training_data(opts: FinetuneOptions, splits: Splits, *, progress: bool,
                       warn: Callable[[str], None]) -> TrainingData:
    """Decode (or prepare to stream) both splits; size the batches."""
    skipped: list[ImageError] = []

    def skip(error: ImageError) -> None:
        skipped.append(error)
        warn(f"skipping {error.path}: {error.reason}")

    train = _load_source(splits.train, opts, progress, skip, "decoding train")
    val = (_load_source(splits.val, opts, progress, skip, "decoding val")
           if splits.val.paths else None)
    count = source_size(train)
    if isinstance(train, DecodedImages):
        present = set(source_labels(train))
        missing = [name for i, name in enumerate(splits.data.class_names) if i not in present]
        if missing:
            raise DatasetError(f"No readable training image left for class "
                               f"{', '.join(missing)} after skipping unreadable files.")
    batch = opts.batch_size
    if count < batch:
        warn(f"only {count} training images: using batches of {count} instead of {batch}")
        batch = count
    class_weights = (_balanced_weights(source_labels(train), len(splits.data.class_names))
                     if opts.class_weight is ClassWeight.auto else None)
    return TrainingData(splits, train, val, skipped, batch, max(1, count // batch), class_weights)


def _load_source(data: ClassFolders, opts: FinetuneOptions, progress: bool,
                 skip: Callable[[ImageError], None], desc: str) -> ImageSource:
    size = int(opts.image_size or 0)
    if fits_in_memory(len(data.paths), size, opts.memory_budget):
        decoded = decode_all(data, size=size, resize=opts.resize, progress=progress, desc=desc,
                             on_failure=skip)
        if not decoded.paths:
            raise DatasetError(f"None of the {len(data.paths)} images in {data.root} could be "
                               "read.")
        return decoded
    log.info("%d images do not fit the memory budget: decoding them on the fly",
             len(data.paths))
    return StreamedImages(data, size, opts.resize, on_failure=skip)


def _balanced_weights(labels: list[int], classes: int) -> list[float]:
    """Balanced weights: n / (classes * n_c), so every class weighs the same in the loss."""
    counts = [0] * classes
    for label in labels:
        counts[label] += 1
    return [len(labels) / (classes * c) if c else 0.0 for c in counts]


def dataset_info(data: TrainingData) -> dict[str, Any]:
    """The `dataset` entry of the run's config.json."""
    return {"files": len(data.splits.data.paths), "train_images": source_size(data.train),
            "val_images": source_size(data.val) if data.val else 0,
            "validation": data.splits.val_source if data.splits.val.paths else None,
            "in_memory": isinstance(data.train, DecodedImages)}
