"""`resnet finetune`: real tiny ResNet50 runs (32 px, 3 classes of a few real PNGs).

Train steps run eagerly here (tf.config.run_functions_eagerly): tracing a ResNet50 train step
takes longer than these whole runs. The graph-mode path is the same engine code; it is run by
`-m slow`, by the distributed tests (test_distribute.py) and by benchmarks/finetune_digits.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import CLASS_COLORS as COLORS
from conftest import write_class_dataset as write_dataset
from PIL import Image

from resnet_cli.cli import app
from resnet_cli.registry import get_spec
from resnet_cli.training import FinetuneOptions, TrainingInterrupted, finetune

pytestmark = pytest.mark.filterwarnings("ignore:Even though the:UserWarning")

TINY_RUN = ["--weights", "none", "--image-size", "32", "--epochs", "2", "--batch-size", "4"]


@pytest.fixture(scope="module", autouse=True)
def _eager_train_steps():
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def read_history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ----- the whole command ------------------------------------------------------------------

def test_interrupted_run_resumes_then_classify_uses_its_classes(tmp_path, runner):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"

    def stop_after_first_epoch(record, total):
        assert total == 2
        if record.epoch == 1:
            raise KeyboardInterrupt

    options = FinetuneOptions(str(data), 3, run_dir=str(run), weights="none", image_size=32,
                              epochs=2, batch_size=4, keep_checkpoints=0)
    with pytest.raises(TrainingInterrupted) as interrupted:
        finetune(options, progress=False, on_epoch=stop_after_first_epoch)
    assert interrupted.value.exit_code == 130
    assert "epoch-001.keras" in str(interrupted.value) and "--resume" in str(interrupted.value)
    assert (run / "checkpoints" / "epoch-001.keras").is_file()
    assert not (run / "model.keras").exists()
    first_epoch = read_history(run)
    assert [row["epoch"] for row in first_epoch] == ["1"]

    refused = runner.invoke(app, ["finetune", str(data), "--classes", "3", "-o", str(run),
                                  *TINY_RUN])
    assert refused.exit_code == 1
    assert "already exists" in refused.stderr and "--resume" in refused.stderr
    changed = runner.invoke(app, ["finetune", str(data), "--classes", "3", "-o", str(run),
                                  "--resume", "--lr", "0.01"])
    assert changed.exit_code == 2
    assert "--lr 0.01 (the run has 0.001)" in changed.stderr

    # The run's own options (weights none, 32 px, 2 epochs, batch 4) come from config.json.
    resumed = runner.invoke(app, ["finetune", str(data), "--classes", "3", "-o", str(run),
                                  "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.stderr
    assert "training history" in resumed.stdout

    for name in ("model.keras", "labels.txt", "history.csv", "metrics.json", "config.json",
                 "checkpoints/epoch-002.keras", "checkpoints/state.json",
                 "checkpoints/config.json"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoints" / "epoch-001.keras").exists()  # --keep-checkpoints 1
    assert (run / "labels.txt").read_text() == "cat\ndog\nfox\n"
    history = read_history(run)
    assert [row["epoch"] for row in history] == ["1", "2"]
    assert history[0] == first_epoch[0]  # the interrupted run's epoch is kept as it was
    # Cosine decay over 2 epochs x 2 steps: 5e-4 after step 2, 0 after step 4. A fresh
    # optimizer (iterations back at 0) would end the resumed epoch at 5e-4 again.
    assert float(history[0]["lr"]) == pytest.approx(5e-4, rel=1e-4)
    assert float(history[1]["lr"]) == pytest.approx(0.0, abs=1e-9)

    config = json.loads((run / "config.json").read_text())
    card = config["resnet_cli_card"]
    assert card["base_model"] == "resnet50" and card["image_size"] == 32
    assert card["preprocess_mode"] == "caffe" and card["class_names"] == ["cat", "dog", "fox"]
    assert config["options"]["weights"] == "none" and config["options"]["fine_tune_epochs"] == 0
    assert config["resumed"][0]["from_epoch"] == 1
    assert config["dataset"]["train_images"] == 9 and config["dataset"]["val_images"] == 3
    assert {"tensorflow", "keras", "numpy", "pillow", "python"} <= set(config["versions"])
    assert config["training_seconds"] > 0 and config["finished"]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 3 and metrics["val_top5_accuracy"] is None
    assert sum(map(sum, metrics["confusion_matrix"]["counts"])) == 3
    assert [c["class"] for c in metrics["per_class"]] == ["cat", "dog", "fox"]
    diagonal = sum(metrics["confusion_matrix"]["counts"][i][i] for i in range(3))
    assert metrics["val_accuracy"] == pytest.approx(diagonal / 3)

    import keras

    model = keras.saving.load_model(run / "model.keras", safe_mode=True, compile=False)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 3)
    assert [layer.name for layer in model.layers][1:] == ["resnet50", "avg_pool", "head_dropout",
                                                          "predictions"]
    # model.keras is for inference; the checkpoint also holds AdamW's two moments per weight.
    assert getattr(model, "optimizer", None) is None
    checkpoint = (run / "checkpoints" / "epoch-002.keras").stat().st_size
    assert (run / "model.keras").stat().st_size < checkpoint / 2.5
    backbone = model.get_layer("resnet50")
    norms = [layer for layer in backbone.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.9 for layer in norms)
    assert not any(isinstance(layer, (keras.layers.Lambda, keras.layers.Rescaling))
                   for layer in [*model.layers, *backbone.layers])

    image = data / "dog" / "0.png"
    shown = runner.invoke(app, ["classify", str(image), "--weights", str(run / "model.keras"),
                                "--top-k", "3", "--format", "json", "--quiet"])
    assert shown.exit_code == 0, shown.stderr
    predictions = json.loads(shown.stdout)[0]["predictions"]
    assert len(predictions) == 3
    assert {p["label"] for p in predictions} == {"cat", "dog", "fox"}
    assert all(p["wnid"] is None for p in predictions)
    assert sum(p["probability"] for p in predictions) == pytest.approx(1.0, abs=1e-4)
    table = runner.invoke(app, ["classify", str(image), "--weights", str(run / "model.keras"),
                                "--top-k", "1", "--quiet"])
    assert table.exit_code == 0, table.stderr
    assert any(name in table.stdout for name in COLORS)


def test_pretrained_two_phases_keep_batchnorm_statistics_and_frozen_blocks(tmp_path):
    import keras

    from resnet_cli.models import build_model

    keras.utils.set_random_seed(3)
    start = build_model(get_spec("resnet50"), include_top=False, image_size=32)
    weights = tmp_path / "backbone.weights.h5"
    start.save_weights(weights)
    data = write_dataset(tmp_path / "data")
    broken = data / "cat" / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    run = tmp_path / "run"
    warnings: list[str] = []
    result = finetune(
        FinetuneOptions(str(data), 3, run_dir=str(run), weights=str(weights), image_size=32,
                        epochs=1, fine_tune_epochs=1, unfreeze="2", batch_size=4,
                        class_weight="auto", lr=0.01, fine_tune_lr=0.01, memory_budget=0),
        progress=False, on_warning=warnings.append)

    assert [r.phase for r in result.history] == [1, 2]
    assert [e.path for e in result.skipped] == [str(broken)]
    assert len([w for w in warnings if "broken.png" in w]) == 1
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"]["in_memory"] is False  # decoded on the fly by tf.data
    assert [e["path"] for e in config["dataset"]["skipped"]] == [str(broken)]
    assert len(config["training"]["class_weights"]) == 3
    head, top_blocks = config["training"]["phases"]
    assert head["trains"] == "head" and head["trainable_weights"] == 2048 * 3 + 3
    assert top_blocks["trains"] == "2" and top_blocks["trainable_weights"] > 1_000_000
    assert top_blocks["lr"] == 0.01

    trained = keras.saving.load_model(run / "model.keras", safe_mode=True).get_layer("resnet50")

    def same(name: str) -> bool:
        return all(np.array_equal(a, b) for a, b in
                   zip(start.get_layer(name).get_weights(), trained.get_layer(name).get_weights(),
                       strict=True))

    assert same("conv2_block1_1_conv")  # never unfrozen
    assert same("conv5_block1_1_conv")  # below the top 2 blocks
    assert not same("conv5_block3_3_conv")  # trained in phase 2
    assert same("conv5_block3_3_bn")  # BatchNorm frozen: inference mode, statistics kept


def test_starting_points_with_classifier_or_from_a_finetuned_model(tmp_path,
                                                                   tiny_classifier_factory):
    """--weights: a full classifier's weights file, or an earlier run's .keras model, gives
    the backbone its layers; a file of another variant is one WeightsError."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from resnet_cli.errors import WeightsError
    from resnet_cli.models import build_model, load_backbone_weights
    from resnet_cli.training import build_classifier

    spec = get_spec("resnet50")
    path, full = tiny_classifier_factory("resnet50")
    legacy = tmp_path / "published_layout.h5"  # layer by layer: the backbone alone fails
    with h5py.File(legacy, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, full)
    for weights, expected in ((path, str(path)),
                              (legacy, f"{legacy} ({sum(1 for x in full.layers if x.weights) - 1}"
                                       " layers)")):
        backbone = build_model(spec, include_top=False, image_size=64)
        assert load_backbone_weights(backbone, spec, str(weights), progress=False) == expected
        for name in ("conv1_conv", "conv5_block3_3_bn"):
            for ours, theirs in zip(backbone.get_layer(name).get_weights(),
                                    full.get_layer(name).get_weights(), strict=True):
                np.testing.assert_array_equal(ours, theirs)

    keras.utils.set_random_seed(4)
    earlier, earlier_backbone = build_classifier(spec, 3, 32, pretrained=True)
    earlier.save(tmp_path / "model.keras")
    fresh = build_model(spec, include_top=False, image_size=32)
    described = load_backbone_weights(fresh, spec, str(tmp_path / "model.keras"),
                                      progress=False)
    layers = sum(1 for x in fresh.layers if x.weights)
    assert described == f"{tmp_path / 'model.keras'} ({layers} layers)"
    for ours, theirs in zip(fresh.get_weights(), earlier_backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)

    other = get_spec("resnet50v2")
    with pytest.raises(WeightsError, match="does not fit resnet50v2 \\(with or without its "
                                           "classifier\\)") as info:
        load_backbone_weights(build_model(other, include_top=False, image_size=64), other,
                              str(path), progress=False)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_graph_mode_cli_run(tmp_path, runner):
    import tensorflow as tf

    tf.config.run_functions_eagerly(False)
    try:
        data = write_dataset(tmp_path / "data")
        result = runner.invoke(app, ["finetune", str(data), "--classes", "3", "-o",
                                     str(tmp_path / "run"), *TINY_RUN])
    finally:
        tf.config.run_functions_eagerly(True)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("epoch ") >= 2  # one line per epoch off a terminal
    assert len(read_history(tmp_path / "run")) == 2


# ----- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("layout, args, code, message", [
    ("missing", [], 1, "does not exist"),
    ("ok", ["--classes", "5"], 1, "--classes 5 but"),
    ("empty-class", ["--classes", "4"], 1, "Empty class folder"),
    ("no-images", ["--classes", "2"], 1, "No images in any class folder"),
    ("loose", [], 1, "has no class folders (it holds 2 images directly)"),
    ("ok", ["--fine-tune-epochs", "2"], 2, "--fine-tune-epochs needs pretrained weights"),
    ("ok", ["--unfreeze", "99"], 2, "--unfreeze must be all or a number of blocks from 1 to 16"),
    ("ok", ["--strategy", "multiworker"], 2, "TF_CONFIG"),
    ("ok", ["--resume"], 1, "Nothing to resume"),
])
def test_dataset_and_option_errors_are_one_line(tmp_path, runner, monkeypatch, layout, args,
                                                code, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    data = tmp_path / "data"
    if layout in ("ok", "empty-class"):
        write_dataset(data)
    if layout == "empty-class":
        (data / "zebra").mkdir()
    if layout == "no-images":
        (data / "a").mkdir(parents=True)
        (data / "b").mkdir()
        (data / "b" / "notes.txt").write_text("not an image")
    if layout == "loose":
        data.mkdir()
        for name in ("x.png", "y.png"):
            Image.new("RGB", (8, 8)).save(data / name)
    run = tmp_path / "run"
    run.mkdir()
    if "--classes" not in args:
        args = ["--classes", "3", *args]
    result = runner.invoke(app, ["finetune", str(data), "-o", str(run), "--weights", "none",
                                 *args])
    assert result.exit_code == code, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


# ----- precise BatchNorm statistics (#13) -----------------------------------------------------

def test_from_scratch_the_saved_batchnorm_statistics_fit_the_saved_weights(tmp_path, runner):
    """From scratch, BatchNorm's moving averages are gathered while the weights change; the
    saved model gets statistics recomputed with its final weights on un-augmented training
    images, so it scores on its own images what its last epoch reported."""
    import keras

    from resnet_cli.images import load_image

    data = write_dataset(tmp_path / "data", per_class=8)  # 24 images: 6 whole batches of 4
    val = write_dataset(tmp_path / "val", per_class=2)
    run = tmp_path / "run"
    result = finetune(FinetuneOptions(str(data), 3, run_dir=str(run), weights="none",
                                      val_dir=str(val), image_size=32, epochs=2, batch_size=4,
                                      augment=False), progress=False)
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    backbone = model.get_layer("resnet50")

    # conv1_bn's moving mean is the mean of conv1's output over the training images (every
    # one of them, in whole batches); the moving averages of training are far from it.
    paths = sorted(str(p) for p in data.rglob("*.png"))
    images = np.stack([load_image(p, size=32) for p in paths]).astype(np.float32)
    x = keras.applications.imagenet_utils.preprocess_input(images, mode="caffe")
    conv1 = keras.Model(backbone.input, backbone.get_layer("conv1_conv").output)(x).numpy()
    bn = backbone.get_layer("conv1_bn")
    mean = conv1.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-3, atol=1e-3)
    # The variance is the mean of the batches' variances (at most the overall variance).
    assert np.all(bn.moving_variance.numpy() <= conv1.var(axis=(0, 1, 2)) * 1.001)

    # The saved model, judged by evaluate, agrees with the last epoch's validation score.
    last = result.history[-1]
    report = runner.invoke(app, ["evaluate", str(data), "--weights", str(run / "model.keras"),
                                 "--format", "json", "-q"])  # its training images
    assert report.exit_code == 0, report.stderr
    assert result.metrics is not None and last.val_accuracy is not None
    assert abs(result.metrics.top1 - last.val_accuracy) < 0.01
    on_all = json.loads(report.stdout)["top1_accuracy"]
    assert on_all >= last.accuracy - 0.2
    config = json.loads((run / "config.json").read_text())
    assert "precise BN" in config["training"]["batchnorm"]


# ----- early stopping (#10: from-scratch defaults) ----------------------------------------------

def test_early_stopping_keeps_the_best_epoch_of_a_real_model():
    import keras

    from resnet_cli.results import EpochRecord
    from resnet_cli.training.epochs import EarlyStopping

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    stopping = EarlyStopping(patience=2)

    def epoch(number: int, accuracy: float, loss: float) -> bool:
        model.layers[0].set_weights([np.full((2, 1), number, np.float32), np.zeros(1)])
        return stopping.update(EpochRecord(number, 1, 1e-3, 1.0, 0.5, loss, accuracy, 1.0), model)

    assert not epoch(1, 0.50, 1.0)
    assert not epoch(2, 0.80, 0.9)
    assert not epoch(3, 0.80, 0.7)  # same accuracy, lower loss: better
    assert not epoch(4, 0.70, 0.6)
    assert epoch(5, 0.80, 0.8)  # two epochs without improvement: stop
    assert stopping.best_epoch == 3 and stopping.stopped == [5]
    assert stopping.restore(model, last_epoch=5)
    assert model.layers[0].get_weights()[0][0, 0] == 3  # epoch 3's weights are back
    assert stopping.summary(restored=True)["best_val_accuracy"] == 0.80


def test_scratch_run_saves_its_best_epoch(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    result = finetune(FinetuneOptions(str(data), 3, run_dir=str(run), weights="none",
                                      image_size=32, epochs=4, patience=1, batch_size=4),
                      progress=False)
    config = json.loads((run / "config.json").read_text())
    stopping = config["training"]["early_stopping"]
    history = read_history(run)
    scores = [(float(r["val_accuracy"]), -float(r["val_loss"])) for r in history]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    assert stopping["patience"] == 1 and stopping["best_epoch"] == best + 1
    if stopping["stopped_at_epochs"]:
        assert len(history) == stopping["stopped_at_epochs"][0] <= 4
    else:
        assert len(history) == 4
    # The saved model is the best epoch's: its validation accuracy is that epoch's.
    assert result.metrics is not None
    assert abs(result.metrics.top1 - scores[best][0]) < 1e-6
