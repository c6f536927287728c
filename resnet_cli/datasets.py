"""Folder-per-class image datasets: scanning, splitting, decoding and tf.data pipelines.

The layout is Keras' `image_dataset_from_directory` convention: `DATA_DIR/<class>/**/<image>`,
classes in sorted folder-name order. Images are decoded by `images.load_image`, the reader every
other command uses, so training sees exactly the pixels `classify` and `evaluate` will see (EXIF
orientation, every pixel mode, the same resize).

Decoding strategy: when the decoded split fits in the memory budget, every image is decoded
once, in parallel threads, into one uint8 array that tf.data then gathers batches from. On small
and medium datasets, epochs after the first would otherwise repeat the same Pillow work, and
decoding up front finds every corrupt file before training starts, so the counts, the
steps per epoch and the class weights are exact. Datasets larger than the budget stream
instead: tf.data runs `load_image` through `tf.numpy_function` on parallel calls and drops the
files that fail (each named once in a warning).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import DatasetError, ImageError
from resnet_cli.images import IMAGE_EXTENSIONS, ResizeMode, load_image

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of decoded uint8 pixels kept in memory at most
AUGMENT_ROTATION = 0.05  # fraction of a full turn: +-18 degrees
AUGMENT_ZOOM = 0.1
AUGMENT_TRANSLATION = 0.1


@dataclass(frozen=True)
class ClassFolders:
    """The images of a folder-per-class dataset. `labels[i]` indexes `class_names`."""

    root: str
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def counts(self) -> list[int]:
        """Images per class, in class order."""
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts

    def subset(self, indices: Sequence[int]) -> ClassFolders:
        """The same classes with only the images at `indices`."""
        return ClassFolders(self.root, self.class_names, tuple(self.paths[i] for i in indices),
                            tuple(self.labels[i] for i in indices))


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _class_images(folder: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        found.extend(os.path.join(dirpath, name) for name in sorted(filenames)
                     if not _is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS)
    return found


def _names(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def scan_class_folders(root: str | Path, *, classes: int | None = None,
                       known_classes: Sequence[str] | None = None) -> ClassFolders:
    """List the images of a folder-per-class dataset.

    Args:
        root: the dataset folder, with one sub-folder of images per class.
        classes: the number of class folders expected (`--classes`).
        known_classes: for a validation folder, the training classes: its folders must be
            among them, and labels index this list.

    Raises:
        DatasetError: a missing folder, no class folders, a count that differs from
            `classes`, an empty class folder or dataset, or classes `known_classes` lacks.
    """
    folder = Path(root).expanduser()
    if not folder.exists():
        raise DatasetError(f"Dataset folder {root} does not exist.")
    if not folder.is_dir():
        raise DatasetError(f"{root} is not a folder; give a folder with one sub-folder of "
                           "images per class.")
    names = sorted(entry.name for entry in folder.iterdir()
                   if entry.is_dir() and not _is_hidden(entry.name))
    if not names:
        loose = _class_images(folder)
        hint = f" (it holds {len(loose)} images directly)" if loose else ""
        raise DatasetError(f"{root} has no class folders{hint}: put each class's images in its "
                           f"own sub-folder, e.g. {root}/cat/*.jpg and {root}/dog/*.jpg.")
    if classes is not None and len(names) != classes:
        raise DatasetError(f"--classes {classes} but {root} has {len(names)} class folder"
                           f"{'s' if len(names) != 1 else ''}: {_names(names)}.")
    if known_classes is not None:
        unknown = [name for name in names if name not in known_classes]
        if unknown:
            raise DatasetError(f"{root} has class folders the training data lacks: "
                               f"{_names(unknown)} (training classes: "
                               f"{_names(list(known_classes))}).")
        class_names = tuple(known_classes)
    else:
        class_names = tuple(names)
    paths: list[str] = []
    labels: list[int] = []
    empty = []
    for name in names:
        found = _class_images(folder / name)
        if not found:
            empty.append(str(folder / name))
        paths.extend(found)
        labels.extend([class_names.index(name)] * len(found))
    if not paths:
        raise DatasetError(f"No images in any class folder of {root} (looked for "
                           f"{', '.join(sorted(IMAGE_EXTENSIONS)[:6])}, ... files).")
    if empty and known_classes is None:
        raise DatasetError(f"Empty class folder{'s' if len(empty) > 1 else ''}: {_names(empty)}; "
                           "add images or remove the folder.")
    return ClassFolders(str(root), class_names, tuple(paths), tuple(labels))


def split_stratified(data: ClassFolders, fraction: float, seed: int
                     ) -> tuple[ClassFolders, ClassFolders]:
    """Split into (train, validation), taking `fraction` of each class (at least one image per
    class stays in training), the same way for the same seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_class: list[list[int]] = [[] for _ in data.class_names]
    for index, label in enumerate(data.labels):
        by_class[label].append(index)
    train: list[int] = []
    val: list[int] = []
    for members in by_class:
        order = [members[i] for i in rng.permutation(len(members))]
        count = min(round(len(members) * fraction), len(members) - 1) if fraction > 0 else 0
        val.extend(order[:max(count, 0)])
        train.extend(order[max(count, 0):])
    return data.subset(sorted(train)), data.subset(sorted(val))


@dataclass
class DecodedImages:
    """Images decoded into memory: `images[i]` has label `labels[i]` and came from `paths[i]`."""

    images: np.ndarray  # (n, size, size, 3) uint8
    labels: np.ndarray  # (n,) int32
    paths: list[str]
    failed: list[ImageError] = field(default_factory=list)


def fits_in_memory(count: int, size: int, budget: int | None = None) -> bool:
    """Whether `count` decoded images of `size` x `size` fit the in-memory cache budget."""
    limit = DEFAULT_MEMORY_BUDGET if budget is None else budget
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        limit = min(limit, physical // 4)
    except (ValueError, OSError, AttributeError):
        pass
    return count * size * size * 3 <= limit


def decode_all(data: ClassFolders, *, size: int, resize: ResizeMode, progress: bool = True,
               desc: str = "decoding", workers: int | None = None,
               on_failure: Callable[[ImageError], None] | None = None) -> DecodedImages:
    """Decode every image of `data` once, on worker threads; failures are left out."""
    import numpy as np

    from resnet_cli.progress import progress_bar

    out = np.empty((len(data.paths), size, size, 3), dtype=np.uint8)
    keep: list[int] = []
    failed: list[ImageError] = []
    workers = workers or min(8, os.cpu_count() or 1)

    def decode(index: int) -> tuple[int, ImageError | None]:
        try:
            out[index] = load_image(data.paths[index], size=size, resize=resize)
        except ImageError as exc:
            return index, exc
        return index, None

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool, \
            progress_bar(total=len(data.paths), desc=desc, enabled=progress, unit="img") as bar:
        for index, error in pool.map(decode, range(len(data.paths))):
            bar.update(1)
            if error is None:
                keep.append(index)
            else:
                failed.append(error)
                if on_failure is not None:
                    on_failure(error)
    labels = np.asarray(data.labels, dtype=np.int32)[keep]
    images = out[keep] if len(keep) != len(data.paths) else out
    return DecodedImages(images, labels, [data.paths[i] for i in keep], failed)


@dataclass
class StreamedImages:
    """Images decoded on the fly by tf.data (datasets larger than the memory budget)."""

    data: ClassFolders
    size: int
    resize: ResizeMode
    on_failure: Callable[[ImageError], None] | None = None
    _reported: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def decode(self, path: bytes) -> tuple[np.ndarray, np.bool_]:
        """`load_image` for tf.numpy_function: (pixels, ok); a failure gives zeros, False."""
        import numpy as np

        name = path.decode()
        try:
            return load_image(name, size=self.size, resize=self.resize), np.bool_(True)
        except ImageError as exc:
            with self._lock:
                first = name not in self._reported
                self._reported.add(name)
            if first and self.on_failure is not None:
                self.on_failure(exc)
            return np.zeros((self.size, self.size, 3), np.uint8), np.bool_(False)


ImageSource = DecodedImages | StreamedImages


def source_size(source: ImageSource) -> int:
    """How many images `source` holds (for a streamed source: files, some may fail)."""
    return len(source.paths) if isinstance(source, DecodedImages) else len(source.data.paths)


def source_labels(source: ImageSource) -> list[int]:
    """The label of each image of `source`."""
    if isinstance(source, DecodedImages):
        return [int(x) for x in source.labels]
    return list(source.data.labels)


def make_augmenter(seed: int, *, flip: bool = True) -> Callable[[Any], Any]:
    """Random flip, rotation, zoom and translation for float batches in 0..255 (Keras
    preprocessing layers, run in the tf.data map so that the saved model has none of them)."""
    import keras

    layers = [keras.layers.RandomRotation(AUGMENT_ROTATION, fill_mode="reflect", seed=seed + 1),
              keras.layers.RandomZoom(AUGMENT_ZOOM, fill_mode="reflect", seed=seed + 2),
              keras.layers.RandomTranslation(AUGMENT_TRANSLATION, AUGMENT_TRANSLATION,
                                             fill_mode="reflect", seed=seed + 3)]
    if flip:
        layers.insert(0, keras.layers.RandomFlip("horizontal", seed=seed))

    def augment(images: Any) -> Any:
        for layer in layers:
            images = layer(images, training=True)
        return images

    return augment


def make_dataset(
    source: ImageSource,
    *,
    num_classes: int,
    batch_size: int,
    preprocess_mode: str,
    training: bool,
    seed: int = 0,
    epochs: tuple[int, int] = (0, 1),
    augment: Callable[[Any], Any] | None = None,
    class_weights: Sequence[float] | None = None,
) -> Any:
    """A tf.data pipeline of (preprocessed float images, one-hot labels[, sample weights]).

    Training pipelines cover the epochs in `epochs` (first, end) back to back, each shuffled
    by its own seed derived from `seed` and the epoch number, so a resumed run sees the same
    order as an uninterrupted one; batches have a fixed size (the remainder of each epoch is
    dropped) so the train step is traced once. Evaluation pipelines keep the file order.
    """
    import tensorflow as tf

    order = _index_order(source_size(source), seed)
    if isinstance(source, StreamedImages):
        one_pass = _streamed_pass(source, order, batch_size)
    else:
        one_pass = _decoded_pass(source, order, batch_size)
    if training:
        first, end = epochs
        dataset = tf.data.Dataset.range(first, end).flat_map(one_pass)
    else:
        dataset = one_pass()
    finish = _finisher(num_classes, preprocess_mode, augment, class_weights)
    dataset = dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # In-memory tensors cannot be sharded by file across workers: shard by batch instead.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _index_order(count: int, seed: int) -> Callable[..., Any]:
    """`order(epoch)`: a dataset of image indices, shuffled by (seed, epoch) for training,
    in file order when `epoch` is None."""
    import tensorflow as tf

    def order(epoch: Any = None) -> Any:
        indices = tf.range(count, dtype=tf.int64)
        if epoch is not None:
            indices = tf.random.experimental.stateless_shuffle(
                indices, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(indices)

    return order


def _streamed_pass(source: StreamedImages, order: Callable[..., Any], batch_size: int
                   ) -> Callable[..., Any]:
    """`one_pass(epoch)`: batches of (uint8 images, labels[, valid]) decoded by tf.data."""
    import tensorflow as tf

    paths = tf.constant(list(source.data.paths))
    labels = tf.constant(list(source.data.labels), dtype=tf.int32)
    size = source.size

    def load(index: Any) -> tuple[Any, Any, Any]:
        image, ok = tf.numpy_function(source.decode, [tf.gather(paths, index)],
                                      [tf.uint8, tf.bool], stateful=False)
        image.set_shape((size, size, 3))
        ok.set_shape(())
        return image, tf.gather(labels, index), ok

    def one_pass(epoch: Any = None) -> Any:
        items = order(epoch).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if epoch is None:
            # Evaluation keeps its known length (Keras warns about datasets that end
            # early): an unreadable image stays in, with weight 0.
            items = items.map(lambda image, label, ok: (image, label, tf.cast(ok, tf.float32)))
            return items.batch(batch_size)
        items = items.filter(lambda image, label, ok: ok)
        items = items.map(lambda image, label, ok: (image, label))
        return items.batch(batch_size, drop_remainder=True)

    return one_pass


def _decoded_pass(source: DecodedImages, order: Callable[..., Any], batch_size: int
                  ) -> Callable[..., Any]:
    """`one_pass(epoch)`: batches of (uint8 images, labels) gathered from memory."""
    import tensorflow as tf

    pixels = tf.constant(source.images)
    label_table = tf.constant(source.labels, dtype=tf.int32)

    def take(indices: Any) -> tuple[Any, Any]:
        return tf.gather(pixels, indices), tf.gather(label_table, indices)

    def one_pass(epoch: Any = None) -> Any:
        batches = order(epoch).batch(batch_size, drop_remainder=epoch is not None)
        return batches.map(take, num_parallel_calls=tf.data.AUTOTUNE)

    return one_pass


def _finisher(num_classes: int, preprocess_mode: str, augment: Callable[[Any], Any] | None,
              class_weights: Sequence[float] | None) -> Callable[..., Any]:
    """The last map: augment, preprocess, one-hot labels, and sample weights (class weights
    times the valid flag of streamed evaluation batches)."""
    import tensorflow as tf
    from keras.applications import imagenet_utils

    weights = (tf.constant(list(class_weights), tf.float32)
               if class_weights is not None else None)

    def finish(images: Any, labels: Any, valid: Any = None) -> Any:
        x = tf.cast(images, tf.float32)
        if augment is not None:
            x = augment(x)
        x = imagenet_utils.preprocess_input(x, mode=preprocess_mode)
        y = tf.one_hot(labels, num_classes)
        if weights is not None:
            sample = tf.gather(weights, labels)
            return x, y, sample if valid is None else sample * valid
        return (x, y) if valid is None else (x, y, valid)

    return finish
