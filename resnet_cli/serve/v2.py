"""The Open Inference Protocol (KServe v2, what Triton and KServe speak), as plain data.

`parse_infer_request` reads an infer request body: JSON, or with the binary tensor data
extension (the `Inference-Header-Content-Length` header gives the JSON's length; the tensors
follow it as raw bytes, BYTES elements each prefixed by their 4-byte little-endian length),
which NVIDIA's `tritonclient` uses by default. One input is taken: encoded image files (BYTES,
shape [N]; in JSON, each element base64) or uint8 pixels (UINT8, [N, size, size, 3]).
`encode_infer_response` writes the answer, in binary wherever the request asked for it,
including Triton's classification extension (`"classification": K` on an output: BYTES
`"probability:index:label"` for the top K).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from resnet_cli.labels import ClassLabel

HEADER_LENGTH = "Inference-Header-Content-Length"
MODEL_VERSION = "1"
PIXELS_INPUT = "images"
FILES_INPUT = "image_files"


class ProtocolError(Exception):
    """A request the protocol (or this model) cannot take: HTTP 400 with this message."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int  # top K as strings (Triton's classification extension), or 0


@dataclass(frozen=True)
class InferRequest:
    """One parsed infer request: either `pixels` (n, size, size, 3) uint8 or `files`."""

    id: str | None
    input_name: str
    pixels: np.ndarray | None
    files: list[bytes] | None
    outputs: tuple[RequestedOutput, ...]

    @property
    def count(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.files or ())


MAX_DEPTH = 8  # nesting of a valid request: object, inputs, tensor, data [N][h][w][3]


def parse_infer_request(body: bytes, header_length: str | None, *, image_size: int,
                        output_name: str, max_images: int, max_files: int) -> InferRequest:
    """Read an infer request (see the module docstring). Counts are checked against the
    limits before anything is decoded: UINT8 at most `max_images` images (the largest batch
    the server runs), BYTES at most `max_files` elements (its queue).

    Raises:
        ProtocolError: anything malformed, over a limit, or not one input of images for this
            model.
    """
    header, binary = _split(body, header_length)
    try:
        request = json.loads(header)
    except RecursionError:
        raise ProtocolError("the request's JSON is nested too deeply.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object.")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"give exactly one input: {PIXELS_INPUT} (UINT8 [N, {image_size}, "
                            f"{image_size}, 3]) or {FILES_INPUT} (BYTES [N], encoded images).")
    tensor = inputs[0]
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) > 4 or \
            not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError("the input's shape must be a list of at most 4 non-negative "
                            "integers.")
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict) or "shared_memory_region" in params:
        raise ProtocolError("shared memory inputs are not supported.")
    raw = _binary_part(binary, params)
    datatype = tensor.get("datatype")
    name = str(tensor.get("name", ""))
    if datatype == "UINT8":
        pixels, files = _pixels(tensor, shape, raw, image_size, max_images), None
    elif datatype == "BYTES":
        pixels, files = None, _files(tensor, shape, raw, max_files)
    else:
        raise ProtocolError(f"input datatype {datatype!r} is not supported: send UINT8 "
                            f"[N, {image_size}, {image_size}, 3] pixels or BYTES image files.")
    request_id = request.get("id")
    return InferRequest(id=str(request_id) if request_id is not None else None,
                        input_name=name, pixels=pixels, files=files,
                        outputs=_outputs(request, output_name))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit():
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer.")
    length = int(header_length)
    if not 0 < length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {length} does not fit a {len(body)}-byte body.")
    return body[:length], body[length:]


def _binary_part(binary: bytes, params: dict[str, Any]) -> bytes | None:
    size = params.get("binary_data_size")
    if size is None:
        if binary:
            raise ProtocolError("binary data follows the JSON but the input has no "
                                "binary_data_size.")
        return None
    if type(size) is not int or size != len(binary):
        raise ProtocolError(f"binary_data_size {size} does not match the {len(binary)} bytes "
                            "after the JSON.")
    return binary


def _pixels(tensor: dict[str, Any], shape: list[int], raw: bytes | None,
            image_size: int, max_images: int) -> np.ndarray:
    import numpy as np

    if len(shape) != 4 or shape[1:] != [image_size, image_size, 3] or shape[0] < 1:
        raise ProtocolError(f"UINT8 input must have shape [N, {image_size}, {image_size}, 3] "
                            f"with N >= 1; got {shape}.")
    if shape[0] > max_images:
        raise ProtocolError(f"{shape[0]} images in one UINT8 tensor; this server runs at most "
                            f"{max_images} at once (--max-batch-size).")
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count:
            raise ProtocolError(f"shape {shape} needs {count} bytes; got {len(raw)}.")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    flat = _flatten(tensor.get("data"), count, depth=len(shape))
    if len(flat) != count:
        raise ProtocolError(f"shape {shape} needs {count} values; got {len(flat)}.")
    if not set(map(type, flat)) <= {int}:
        raise ProtocolError("UINT8 data must be integers (not floats, booleans or strings).")
    values = np.array(flat, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ProtocolError("UINT8 values must be between 0 and 255.")
    return values.astype(np.uint8).reshape(shape)


def _files(tensor: dict[str, Any], shape: list[int], raw: bytes | None,
           max_files: int) -> list[bytes]:
    count = math.prod(shape) if shape else 0
    if count < 1:
        raise ProtocolError(f"BYTES input must hold at least one image; shape {shape}.")
    if count > max_files:
        raise ProtocolError(f"{count} images in one request; this server takes at most "
                            f"{max_files} (--max-queue).")
    if raw is not None:
        files = unpack_bytes(raw, limit=count)
    else:
        flat = _flatten(tensor.get("data"), count, depth=len(shape))
        if not all(isinstance(item, str) for item in flat):
            raise ProtocolError("in JSON, BYTES elements must be base64 strings.")
        try:
            files = [base64.b64decode(item, validate=True) for item in flat]
        except (ValueError, binascii.Error):
            raise ProtocolError("in JSON, BYTES elements must be base64 strings.") from None
    if len(files) != count:
        raise ProtocolError(f"shape {shape} needs {count} elements; got {len(files)}.")
    return files


def _flatten(data: Any, count: int, *, depth: int) -> list[Any]:
    """The elements of a (nested) JSON data list, at most `depth` lists deep; stops as soon
    as there are more than `count`."""
    if not isinstance(data, list):
        raise ProtocolError("the input has no data list (nor binary data).")
    flat: list[Any] = []
    stack = [(iter(data), 1)]
    while stack:
        items, level = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            if level >= max(depth, 1):
                raise ProtocolError(f"the data is nested deeper than the shape's {depth} "
                                    "axes.")
            stack.append((iter(item), level + 1))
        else:
            flat.append(item)
            if len(flat) > count:
                raise ProtocolError(f"the data holds more than the shape's {count} "
                                    "elements.")
    return flat


_END = object()


def unpack_bytes(raw: bytes, *, limit: int | None = None) -> list[bytes]:
    """The elements of a binary BYTES tensor (each a 4-byte little-endian length, then it).

    Raises:
        ProtocolError: the lengths do not add up to the data, or there are more than `limit`.
    """
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if limit is not None and len(items) >= limit:
            raise ProtocolError(f"binary BYTES data holds more than {limit} elements.")
        if offset + 4 > len(raw):
            raise ProtocolError("binary BYTES data ends inside an element's length.")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError("binary BYTES data is shorter than an element's length.")
        items.append(raw[offset:offset + length])
        offset += length
    return items


def pack_bytes(items: list[bytes]) -> bytes:
    """A binary BYTES tensor: each element prefixed by its 4-byte little-endian length."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _outputs(request: dict[str, Any], output_name: str) -> tuple[RequestedOutput, ...]:
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("the request's parameters must be an object.")
    binary_default = _flag(params, "binary_data_output", False)
    asked = request.get("outputs")
    if asked is None:
        return (RequestedOutput(output_name, binary_default, 0),)
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ProtocolError("outputs must be a list of objects.")
    if len(asked) > 1:  # (checked before anything is computed for them)
        raise ProtocolError(f"this model has one output, {output_name!r}: ask for it at "
                            f"most once; got {len(asked)} outputs.")
    outputs = []
    for output in asked:
        name = output.get("name")
        if name != output_name:
            raise ProtocolError(f"unknown output {name!r}; this model has {output_name!r}.")
        opts = output.get("parameters") or {}
        if not isinstance(opts, dict):
            raise ProtocolError("an output's parameters must be an object.")
        k = opts.get("classification", 0)
        if type(k) is not int or k < 0:
            raise ProtocolError("classification must be a non-negative integer.")
        outputs.append(RequestedOutput(name, _flag(opts, "binary_data", binary_default), k))
    return tuple(outputs)


def _flag(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"{name} must be true or false; got {json.dumps(value)[:40]}.")
    return value


def encode_infer_response(request: InferRequest, rows: np.ndarray, *, model_name: str,
                          labels: tuple[ClassLabel, ...] | None
                          ) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers for `rows` (n, ...) float32.

    Raises:
        ProtocolError: classification asked of a model without classes, or K too large.
    """
    import numpy as np

    tensors, blobs = [], []
    for output in request.outputs:
        if output.classification:
            if labels is None or output.classification > len(labels):
                raise ProtocolError(f"classification must be between 1 and the number of "
                                    f"classes ({len(labels) if labels else 0}).")
            items = _classification(rows, labels, output.classification)
            tensor: dict[str, Any] = {"name": output.name, "datatype": "BYTES",
                                      "shape": [len(rows), output.classification]}
            blob = pack_bytes([s.encode() for s in items]) if output.binary else None
            data: list[Any] = items
        else:
            tensor = {"name": output.name, "datatype": "FP32", "shape": list(rows.shape)}
            values = np.ascontiguousarray(rows, dtype="<f4")
            blob = values.tobytes() if output.binary else None
            data = values.reshape(-1).tolist() if blob is None else []
        if blob is not None:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = data
        tensors.append(tensor)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION,
                              "outputs": tensors}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream",
                                      HEADER_LENGTH: str(len(header))}


def _classification(rows: np.ndarray, labels: tuple[ClassLabel, ...], k: int) -> list[str]:
    from resnet_cli.classify import top_predictions

    return [f"{p.probability:f}:{p.index}:{p.label}"
            for row in rows for p in top_predictions(row, labels, k)]


def model_metadata(facts: dict[str, Any], *, labels: tuple[ClassLabel, ...] | None
                   ) -> dict[str, Any]:
    """`GET /v2/models/NAME`: the inputs and outputs, and the model's card and classes."""
    size = facts["image_size"]
    return {
        "name": facts["name"], "versions": [MODEL_VERSION],
        "platform": f"resnet_cli_{facts['runtime']}",
        "inputs": [{"name": PIXELS_INPUT, "datatype": "UINT8", "shape": [-1, size, size, 3]},
                   {"name": FILES_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": output_name(labels), "datatype": "FP32",
                     "shape": [-1, *facts["output_shape"]]}],
        "card": facts,
        "labels": [label.name for label in labels] if labels is not None else None,
    }


def output_name(labels: tuple[ClassLabel, ...] | None) -> str:
    """`probabilities` for a classifier, `features` for a backbone."""
    return "probabilities" if labels is not None else "features"
