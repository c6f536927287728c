"""OpenVINO IR (.xml + .bin): float32, or int8 quantized by NNCF on the user's own images.

Converted from the served model's TensorFlow function by OpenVINO's own converter (through
Keras' `Model.export(format="openvino")`), so the file's graph is the same one the other
formats hold: uint8 `(batch, size, size, 3)` RGB in (the batch axis dynamic), float32 out,
preprocessing and folded BatchNorm inside. The weights stay float32 in the `.bin` (OpenVINO's
default fp16 compression would cost accuracy and buys no speed on a CPU). With `int8`, NNCF's
post-training quantization (`nncf.quantize`, OpenVINO's own tool for it) calibrates on a random
sample of the given images read exactly as every command reads them, the same sample LiteRT's
int8 export takes. The card is the model's runtime info entry `resnet_cli_card`, where
`runtimes.openvino` reads it back. Needs `pip install 'resnet-cli[openvino]'`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resnet_cli.card import CARD_KEY, INPUT_NAME, ModelCard
from resnet_cli.errors import ModelFileError, first_line
from resnet_cli.extras import require_module

log = logging.getLogger(__name__)


def write_openvino(served: Any, card: ModelCard, path: Path, *, int8: bool = False,
                   calibration: Sequence[str] = (), calibration_images: int = 300,
                   progress: bool = True, on_failure: Callable[[Any], None] | None = None
                   ) -> None:
    """Convert `served` (uint8 images in) to OpenVINO IR and write it, with `card`, to `path`
    (the `.xml`) and the `.bin` beside it.

    Raises:
        UsageError: openvino (or nncf, for `int8`) is not installed.
        NoInputsError: `int8` without any readable calibration image.
        ModelFileError: the conversion or the quantization failed.
    """
    import tensorflow as tf

    ov = require_module("openvino", extra="openvino", purpose="OpenVINO export")
    if int8:
        require_module("nncf", extra="openvino", purpose="OpenVINO int8 export")
    size = card.image_size
    spec = tf.TensorSpec((None, size, size, 3), tf.uint8, name=INPUT_NAME)
    with tempfile.TemporaryDirectory(prefix="resnet-openvino-") as folder:
        converted = Path(folder) / "converted.xml"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                served.export(str(converted), format="openvino", input_signature=[spec],
                              verbose=False)
            model = ov.Core().read_model(str(converted))
        except OSError:
            raise  # disk full, read-only...: the caller names the output
        except Exception as exc:  # the converter raises its own OpConversionFailure, ...
            raise ModelFileError(f"OpenVINO conversion failed: {first_line(exc)}") from exc
        if int8:
            model = _quantize(model, card, calibration=calibration,
                              calibration_images=calibration_images, progress=progress,
                              on_failure=on_failure)
        model.set_rt_info(card.to_json(), [CARD_KEY])
        ov.save_model(model, str(path), compress_to_fp16=False)


def _quantize(model: Any, card: ModelCard, *, calibration: Sequence[str],
              calibration_images: int, progress: bool,
              on_failure: Callable[[Any], None] | None) -> Any:
    """`model` quantized to int8 by NNCF, calibrated on a sample of `calibration`."""
    import nncf
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from resnet_cli.export.calibration import calibration_sample, iter_calibration_images

    samples = calibration_sample(calibration, calibration_images)
    batches = list(iter_calibration_images(samples, size=card.image_size, resize=card.resize,
                                           progress=progress, on_failure=on_failure))
    logging.getLogger("nncf").setLevel(logging.ERROR)  # its INFO lines and progress bars
    # Activation ranges from the calibration images' minimum and maximum, as LiteRT's
    # calibration takes them. NNCF's default averages each batch's extremes, which clips the
    # rare large activations: on the digits model of benchmarks/finetune_digits.py, 34 of 360
    # held-out images' int8 features fell below cosine 0.9 of the float ones (min 0.43);
    # with min/max ranges none did (min 0.93, mean 0.985).
    advanced = nncf.AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(model, nncf.Dataset(batches),
                                 subset_size=sum(len(batch) for batch in batches),
                                 preset=nncf.QuantizationPreset.PERFORMANCE,
                                 advanced_parameters=advanced)
    except Exception as exc:  # nncf raises RuntimeError, ValueError, its own errors...
        raise ModelFileError(f"OpenVINO int8 quantization failed: {first_line(exc)}") from exc

