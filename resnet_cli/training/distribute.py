"""Where training runs: the tf.distribute strategy, and which worker writes the run folder."""

from __future__ import annotations

import json
import os
from typing import Any

from resnet_cli.training.options import Strategy


def make_strategy(strategy: Strategy) -> Any:
    """auto: MirroredStrategy over all visible GPUs when there are several, else the default
    (one device); mirrored: MirroredStrategy over the GPUs, or over the logical CPU devices
    when there is no GPU and TensorFlow was configured with several (as tests do);
    multiworker: MultiWorkerMirroredStrategy from TF_CONFIG."""
    import tensorflow as tf

    from resnet_cli.devices import multi_gpu_strategy

    if strategy == Strategy.multiworker:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if strategy == Strategy.mirrored:
        cpus = tf.config.list_logical_devices("CPU")
        if not tf.config.list_logical_devices("GPU") and len(cpus) > 1:
            return tf.distribute.MirroredStrategy([device.name for device in cpus])
        return tf.distribute.MirroredStrategy()
    return multi_gpu_strategy() or tf.distribute.get_strategy()


def is_chief() -> bool:
    """Whether this process writes the run folder (always, unless TF_CONFIG names another
    worker as chief)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    task = config.get("task") or {}
    kind, index = task.get("type"), int(task.get("index", 0))
    return kind in (None, "chief") or (
        kind == "worker" and index == 0 and "chief" not in (config.get("cluster") or {}))
