"""The calibration images of an int8 export (LiteRT's and OpenVINO's alike): a reproducible
random sample of the user's images, read exactly as every command reads them."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import NoInputsError, UsageError
from resnet_cli.images import ResizeMode

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 300


def calibration_sample(inputs: Sequence[str], count: int, *, seed: int = 0) -> list[str]:
    """A random sample of `count` of `inputs` (all of them when there are fewer), in a
    reproducible order.

    Raises:
        UsageError: no calibration inputs, or a count below 1.
    """
    if count < 1:
        raise UsageError(f"--calibration-images must be at least 1; got {count}.")
    if not inputs:
        raise UsageError("--int8 needs calibration images: add --calibrate with a few hundred "
                         "of your own images (files, folders or patterns).")
    paths = list(inputs)
    if len(paths) > count:
        paths = random.Random(seed).sample(paths, count)
    return paths


def iter_calibration_images(paths: Sequence[str], *, size: int, resize: ResizeMode,
                            progress: bool, on_failure: Callable[[Any], None] | None
                            ) -> Iterator[np.ndarray]:
    """Each readable image of `paths` as a uint8 batch of one `(1, size, size, 3)`, with a
    progress bar; an unreadable one goes to `on_failure`.

    Raises:
        NoInputsError: (once exhausted) none of `paths` was readable.
    """
    from resnet_cli.errors import ImageError
    from resnet_cli.images import load_image
    from resnet_cli.progress import progress_bar

    used = 0
    with progress_bar(total=len(paths), desc="calibrating", enabled=progress,
                      unit="img") as bar:
        for path in paths:
            try:
                image = load_image(path, size=size, resize=resize)
            except ImageError as exc:
                if on_failure is not None:
                    on_failure(exc)
                bar.update(1)
                continue
            used += 1
            yield image[None]
            bar.update(1)
    if not used:
        raise NoInputsError(f"None of the {len(paths)} calibration inputs is a readable image.")
    log.info("calibrated on %d images", used)
