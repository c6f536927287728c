"""ONNX: an .onnx file for onnxruntime and other runtimes (opset 17).

Converted from the served model's TensorFlow function by `tf2onnx` (through Keras' own
`Model.export(format="onnx")`). The input `images` is uint8 `(batch, size, size, 3)` RGB, the
output float32. The card is the model's `metadata_props` entry `resnet_cli_card`.
Needs the optional packages of `pip install 'resnet-cli[onnx]'`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

from resnet_cli.card import CARD_KEY, INPUT_NAME, ModelCard
from resnet_cli.errors import ModelFileError, first_line
from resnet_cli.extras import require_module

OPSET = 17


def write_onnx(served: Any, card: ModelCard, path: Path) -> None:
    """Convert `served` (uint8 images in) to ONNX and write it, with `card`, to `path`.

    Raises:
        UsageError: tf2onnx or onnx is not installed.
    """
    import tensorflow as tf

    require_module("tf2onnx", extra="onnx", purpose="ONNX export")
    onnx = require_module("onnx", extra="onnx", purpose="ONNX export")
    size = card.image_size
    spec = tf.TensorSpec((None, size, size, 3), tf.uint8, name=INPUT_NAME)
    # tf2onnx prints its progress on stdout, which belongs to results; Keras' tf2onnx shim
    # trips a NumPy FutureWarning that is not the user's concern.
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"keras\..*")
            served.export(str(path), format="onnx", input_signature=[spec],
                          opset_version=OPSET, verbose=False)
    except OSError:
        raise  # disk full, read-only...: the caller names the output
    except Exception as exc:  # tf2onnx raises ValueError, RuntimeError, its own errors...
        raise ModelFileError(f"ONNX conversion failed: {first_line(exc)}") from exc
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {CARD_KEY: card.to_json()})
    onnx.save(model, str(path))
