"""`resnet finetune --precision fp32|bf16`: a real tiny bf16 run, its run folder and the float32
model it saves; the deprecated `--mixed-precision` alias and old run folders that stored it.

Train steps run eagerly, as in test_training.py (tracing a ResNet50 train step takes longer
than these runs).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import all_layers
from conftest import write_class_dataset as write_dataset

from resnet_cli import devices
from resnet_cli.cli import app
from resnet_cli.errors import UsageError
from resnet_cli.training import FinetuneOptions, TrainingInterrupted, finetune, resolve_options
from resnet_cli.training.loop import _training_policy
from resnet_cli.training.run_folder import prepare_run_dir

pytestmark = pytest.mark.filterwarnings("ignore:Even though the:UserWarning")


@pytest.fixture
def force_cpu_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the bf16 path whatever this CPU has (TensorFlow emulates bf16 where it must)."""
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda cpuinfo=None: True)


@pytest.fixture
def eager_train_steps():  # type: ignore[no-untyped-def]
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def saved_policies(path: Path) -> dict[str, str]:
    """Layer name -> dtype policy, as written in a .keras file's config.json."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            config = node.get("config")
            if isinstance(config, dict) and isinstance(config.get("dtype"), dict):
                found[config["name"]] = config["dtype"]["config"]["name"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    with zipfile.ZipFile(path) as archive:
        walk(json.loads(archive.read("config.json")))
    return found


def test_bf16_run_trains_in_bfloat16_resumes_as_an_old_run_and_saves_float32(
        tmp_path, runner, force_cpu_bf16, eager_train_steps) -> None:
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"

    def stop_after_first_epoch(record, total):  # type: ignore[no-untyped-def]
        if record.epoch == 1:
            raise KeyboardInterrupt

    options = FinetuneOptions(str(data), 3, run_dir=str(run), weights="none", image_size=32,
                              epochs=2, batch_size=4, keep_checkpoints=0, precision="BF16")
    with pytest.raises(TrainingInterrupted):
        finetune(options, progress=False, on_epoch=stop_after_first_epoch)
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["precision"] == "bf16"
    assert config["training"]["policy"] == "mixed_bfloat16"  # read from the built backbone
    assert config["training"]["classifier_policy"] == "float32"
    # The checkpoint was trained under mixed_bfloat16, its classifier in float32.
    trained = saved_policies(run / "checkpoints" / "epoch-001.keras")
    assert trained["conv1_conv"] == trained["conv5_block3_3_bn"] == "mixed_bfloat16"
    assert trained["predictions"] == "float32"

    # Turn it into a run folder of an older version, which stored --mixed-precision.
    del config["options"]["precision"]
    config["options"]["mixed_precision"] = True
    (run / "config.json").write_text(json.dumps(config))
    refused = runner.invoke(app, ["finetune", str(data), "--classes", "3", "-o", str(run),
                                  "--resume", "--precision", "FP32"])
    assert refused.exit_code == 2
    assert "--precision fp32 (the run has bf16)" in refused.stderr
    resumed = runner.invoke(app, ["finetune", str(data), "--classes", "3", "-o", str(run),
                                  "--resume", "--mixed-precision", "--quiet"])
    assert resumed.exit_code == 0, resumed.stderr
    assert "--mixed-precision is deprecated: use --precision bf16" in resumed.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["precision"] == "bf16" and config["finished"]
    assert config["training"]["policy"] == "mixed_bfloat16"
    assert config["training"]["saved_model_policy"] == "float32"

    # model.keras is saved in float32: classify's default fp32 computes in float32...
    model_path = run / "model.keras"
    assert set(saved_policies(model_path).values()) == {"float32"}
    from resnet_cli.models import ModelOptions, load_model

    full = load_model(ModelOptions(weights=str(model_path)))
    assert full.policy == "float32"
    assert {layer.compute_dtype for layer in all_layers(full.model)} == {"float32"}
    conv = full.model.get_layer("resnet50").get_layer("conv1_conv")
    assert conv(np.zeros((1, 16, 16, 3), np.float32)).dtype == "float32"
    # (--precision bf16 switches a saved model's layers back: test_precision.py.)
    # A bf16 checkpoint loaded at the default fp32 computes in float32 too.
    checkpoint = load_model(ModelOptions(weights=str(run / "checkpoints" / "epoch-002.keras")))
    assert {layer.compute_dtype for layer in all_layers(checkpoint.model)} == {"float32"}

    shown = runner.invoke(app, ["classify", str(data / "dog" / "0.png"), "--weights",
                                str(model_path), "--format", "json", "--quiet"])
    assert shown.exit_code == 0, shown.stderr
    predictions = json.loads(shown.stdout)[0]["predictions"]
    assert {p["label"] for p in predictions} == {"cat", "dog", "fox"}
    assert sum(p["probability"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


def test_precision_option_help_and_alias_conflicts(runner) -> None:
    shown = runner.invoke(app, ["finetune", "--help"], terminal_width=200)
    assert shown.exit_code == 0
    assert "--precision" in shown.stdout and "fp32|bf16" in shown.stdout
    assert "--mixed-precision" not in shown.stdout  # a hidden, deprecated alias
    both = runner.invoke(app, ["finetune", "data", "--classes", "3", "--mixed-precision",
                               "--precision", "fp32"])
    assert both.exit_code == 2
    assert both.stderr.strip().splitlines() == [
        "error: --mixed-precision is the old name of --precision bf16; drop it or "
        "--precision fp32."]
    wrong = runner.invoke(app, ["finetune", "data", "--classes", "3", "--precision", "fp16"])
    assert wrong.exit_code == 2 and "fp16" in wrong.stderr
    with pytest.raises(UsageError, match="use fp32 or bf16"):
        resolve_options(FinetuneOptions("data", 3, precision="fp16"))
    assert resolve_options(FinetuneOptions("data", 3, precision="BF16")).precision == "bf16"


def write_old_run(run: Path, options: dict[str, Any], policy: str) -> None:
    """A run folder with one completed epoch, as an older version wrote it."""
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"options": options,
                                                 "training": {"policy": policy}}))
    (run / "checkpoints" / "state.json").write_text(json.dumps(
        {"epoch": 1, "phase": 1, "checkpoint": "epoch-001.keras"}))


def test_old_runs_resume_with_their_precision(tmp_path) -> None:
    old = {"classes": 3, "model": "resnet50", "mixed_precision": False, "image_size": 32}
    write_old_run(tmp_path / "fp32", old, "float32")
    asked = resolve_options(FinetuneOptions("data", 3, run_dir=str(tmp_path / "fp32"),
                                            resume=True, precision="bf16"))
    with pytest.raises(UsageError, match=r"--precision bf16 \(the run has fp32\)"):
        prepare_run_dir(asked, frozenset({"precision"}))
    resumed, state = prepare_run_dir(asked, frozenset())
    assert resumed.precision == "fp32" and state is not None

    # A run trained with float16 loss scaling keeps its policy: the checkpoint's optimizer
    # state holds the loss scale.
    write_old_run(tmp_path / "fp16", {**old, "mixed_precision": True}, "mixed_float16")
    opts, state = prepare_run_dir(resolve_options(FinetuneOptions(
        "data", 3, run_dir=str(tmp_path / "fp16"), resume=True)), frozenset())
    assert opts.precision == "bf16"
    warnings: list[str] = []
    assert _training_policy(opts, "/CPU:0", state, warnings.append) == "mixed_float16"
    assert "mixed_float16" in warnings[0]
    assert _training_policy(opts, "/CPU:0", None, warnings.append) in ("mixed_bfloat16",
                                                                       "float32")
