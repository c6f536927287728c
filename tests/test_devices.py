"""Devices and precision: `--device` and `--precision` parsing, CPU bf16 detection, the
policy chosen (with its fallback), and a missing GPU."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from resnet_cli.cli import app
from resnet_cli.devices import (
    DeviceRequest,
    apply_device,
    cpu_supports_bf16,
    parse_device,
    parse_precision,
    precision_policy,
)
from resnet_cli.errors import DeviceError, UsageError

ZEN4_FLAGS = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f "
              "avx512_bf16 avx512_vnni\n")
OLD_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre_v1\n"
SAPPHIRE_FLAGS = "flags\t\t: avx512f amx_bf16 amx_tile\n"


# ----- --device ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("auto", DeviceRequest("auto")), ("CPU", DeviceRequest("cpu")),
    ("gpu", DeviceRequest("gpu")), ("gpu:1", DeviceRequest("gpu", 1)),
])
def test_parse_device(text: str, expected: DeviceRequest) -> None:
    assert parse_device(text) == expected


@pytest.mark.parametrize("text", ["tpu", "cpu:0", "gpu:", "gpu:-1", ""])
def test_parse_device_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="Invalid device"):
        parse_device(text)


def test_missing_gpu_is_a_clear_error() -> None:
    import tensorflow as tf

    count = len(tf.config.list_physical_devices("GPU"))
    with pytest.raises(DeviceError, match="GPU"):
        apply_device(DeviceRequest("gpu", count + 3))
    assert apply_device(DeviceRequest("cpu")) == "/CPU:0"


# ----- --precision ---------------------------------------------------------------------------

def test_cpu_flags_are_read() -> None:
    assert cpu_supports_bf16(ZEN4_FLAGS)
    assert cpu_supports_bf16(SAPPHIRE_FLAGS)
    assert not cpu_supports_bf16(OLD_FLAGS)
    assert not cpu_supports_bf16("")
    assert not cpu_supports_bf16("model name\t: avx512_bf16 in a name, not a flag\n")


def test_policy_choice_and_fallback(caplog: pytest.LogCaptureFixture) -> None:
    assert precision_policy("fp32", "/CPU:0") == "float32"
    assert precision_policy("BF16", "/CPU:0", cpu_bf16=True) == "mixed_bfloat16"
    with caplog.at_level(logging.WARNING, logger="resnet_cli.devices"):
        assert precision_policy("bf16", "/CPU:0", cpu_bf16=False) == "float32"
    assert "no native bfloat16" in caplog.text and "fp32" in caplog.text
    with pytest.raises(UsageError, match="Invalid precision 'fp8': use fp32 or bf16"):
        parse_precision("fp8")


@pytest.mark.parametrize("command", ["classify", "benchmark"])
def test_bad_precision_exits_2(runner, command: str, tmp_path: Path) -> None:
    args = [command, "--precision", "fp8"]
    if command == "classify":
        args.append(str(tmp_path))
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "fp8" in result.stderr and "--precision" in result.stderr
