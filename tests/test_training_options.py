"""`resnet finetune`'s options: checked and resolved without TensorFlow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from resnet_cli.cli import app
from resnet_cli.errors import UsageError
from resnet_cli.images import ResizeMode
from resnet_cli.registry import get_spec
from resnet_cli.training import (
    ClassWeight,
    FinetuneOptions,
    Strategy,
    block_prefixes,
    parse_unfreeze,
    phase_plan,
    resolve_options,
)


def test_unfreeze_counts_residual_blocks():
    spec = get_spec("resnet50")
    prefixes = block_prefixes(spec)
    assert len(prefixes) == 16
    assert prefixes[-2:] == ["conv5_block2_", "conv5_block3_"]
    assert parse_unfreeze("ALL", spec) == "all" and parse_unfreeze("3", spec) == "3"
    assert len(block_prefixes(get_spec("resnet152v2"))) == 50


def test_resolve_fills_run_time_defaults_and_enums(tmp_path):
    resolved = resolve_options(FinetuneOptions(str(tmp_path / "pets"), 3, epochs=5,
                                               class_weight="auto", strategy="mirrored",
                                               resize="squash", weights=" imagenet "))
    assert resolved.weights == "imagenet" and resolved.image_size == 224
    assert resolved.fine_tune_epochs == 2 and resolved.unfreeze == "all"
    assert resolved.class_weight is ClassWeight.auto and resolved.strategy is Strategy.mirrored
    assert resolved.resize is ResizeMode.squash
    assert resolved.run_dir.startswith(str(Path("runs") / "pets-resnet50-"))
    assert [(p.number, p.first, p.end, p.trainable) for p in phase_plan(resolved)] == [
        (1, 0, 5, "head"), (2, 5, 7, "all")]
    scratch = resolve_options(FinetuneOptions("d", 2, run_dir="r", weights="none",
                                              image_size=32))
    assert scratch.fine_tune_epochs == 0
    assert [(p.end, p.trainable) for p in phase_plan(scratch)] == [(20, "everything")]


def test_from_scratch_trains_longer_and_stops_early_pretrained_runs_do_not(tmp_path):
    scratch = resolve_options(FinetuneOptions(str(tmp_path), 3, weights="none"))
    assert (scratch.epochs, scratch.patience, scratch.fine_tune_epochs) == (20, 5, 0)
    pretrained = resolve_options(FinetuneOptions(str(tmp_path), 3))
    assert (pretrained.epochs, pretrained.patience, pretrained.fine_tune_epochs) == (10, 0, 5)
    assert [p.end for p in phase_plan(pretrained)] == [10, 15]  # no longer than before
    chosen = resolve_options(FinetuneOptions(str(tmp_path), 3, weights="none", epochs=7,
                                             patience=0))
    assert (chosen.epochs, chosen.patience) == (7, 0)


@pytest.mark.parametrize("change, message", [
    ({"class_weight": "sometimes"}, "--class-weight must be none or auto; got sometimes."),
    ({"strategy": "cluster"}, "--strategy must be auto, mirrored or multiworker; got cluster."),
    ({"resize": "pad"}, "--resize must be crop or squash; got pad."),
    ({"image_size": 16}, "--image-size must be at least 32; got 16."),
    ({"weights": "nowhere.h5"}, "--weights: no such file 'nowhere.h5'."),
    ({"epochs": 0}, "--epochs must be at least 1; got 0."),
    ({"resume": True, "overwrite": True}, "pick one"),
])
def test_resolve_rejects_in_one_message(change, message):
    with pytest.raises(UsageError) as info:
        resolve_options(dataclasses.replace(FinetuneOptions("d", 2, run_dir="r"), **change))
    assert message in str(info.value)


def test_cli_enum_options_ignore_case(tmp_path, runner):
    result = runner.invoke(app, ["finetune", str(tmp_path / "nowhere"), "--classes", "2",
                                 "--class-weight", "AUTO", "--strategy", "Mirrored",
                                 "--resize", "SQUASH", "--precision", "FP32",
                                 "-o", str(tmp_path / "run")])
    assert result.exit_code == 1  # past the options, to the missing dataset
    assert "does not exist" in result.stderr
    refused = runner.invoke(app, ["finetune", str(tmp_path), "--classes", "2",
                                  "--strategy", "cluster"])
    assert refused.exit_code == 2 and "--strategy" in refused.stderr
