"""One rule per option, in every command that loads a model (issue #16).

A model finetuned with `--resize squash` is fed squashed images by every command unless told
otherwise; an `--image-size` that contradicts a model's card is a usage error everywhere;
`--pooling` means the same in extract, summary and export; choices are case-insensitive;
`--device gpu` with an exported file is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_image, randomise_batch_norm

from resnet_cli.cli import app

CLASSES = ("circle", "square")


@pytest.fixture(scope="module")
def squash_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-class finetune-style model whose card says resize=squash, its float LiteRT
    export, and a class-folder dataset of non-square photos (crop and squash differ)."""
    import keras

    from resnet_cli.card import ModelCard, card_entry
    from resnet_cli.export import ExportFormat, export_model
    from resnet_cli.images import ResizeMode
    from resnet_cli.models import ModelOptions
    from resnet_cli.registry import get_spec
    from resnet_cli.training import build_classifier

    root = tmp_path_factory.mktemp("squash_run")
    keras.utils.set_random_seed(3)
    model, _ = build_classifier(get_spec("resnet50"), len(CLASSES), TINY, pretrained=False)
    randomise_batch_norm(model, seed=4)
    model.save(root / "model.keras")
    card = ModelCard("resnet50", TINY, "caffe", CLASSES, resize=ResizeMode.squash)
    (root / "config.json").write_text(json.dumps(card_entry(card)))
    for i, name in enumerate(CLASSES):
        (root / "data" / name).mkdir(parents=True)
        for j in range(3):
            make_image(root / "data" / name / f"{j}.jpg", (120, 48), seed=10 * i + j)
    tflite = export_model(ModelOptions(weights=str(root / "model.keras"), device="cpu"),
                          ExportFormat.litert, root / "model.tflite", progress=False).path
    return {"keras": root / "model.keras", "tflite": tflite, "data": root / "data"}


def _probabilities(runner, weights: Path, photos: list[str], *extra: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["classify", *photos, "--weights", str(weights), "-k", "2",
                                 "-f", "json", "-q", *extra])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    return np.array([[p["probability"] for p in sorted(row["predictions"],
                                                       key=lambda p: p["index"])]
                     for row in rows])


def test_resize_follows_the_card_in_classify_and_its_export(runner, squash_run) -> None:  # type: ignore[no-untyped-def]
    photos = sorted(str(p) for p in squash_run["data"].rglob("*.jpg"))
    for weights, tolerance in ((squash_run["keras"], 1e-6), (squash_run["tflite"], 1e-5)):
        default = _probabilities(runner, weights, photos)
        squash = _probabilities(runner, weights, photos, "--resize", "squash")
        crop = _probabilities(runner, weights, photos, "--resize", "CROP")
        np.testing.assert_allclose(default, squash, atol=tolerance)
        assert np.abs(default - crop).max() > 1e-3  # the photos are 120x48: crop differs


def test_evaluate_top1_equals_classify(runner, squash_run) -> None:  # type: ignore[no-untyped-def]
    photos = sorted(str(p) for p in squash_run["data"].rglob("*.jpg"))
    probabilities = _probabilities(runner, squash_run["keras"], photos)
    truth = [CLASSES.index(Path(p).parent.name) for p in photos]
    top1 = float(np.mean(probabilities.argmax(axis=1) == truth))
    result = runner.invoke(app, ["evaluate", str(squash_run["data"]), "--weights",
                                 str(squash_run["keras"]), "-f", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["top1_accuracy"] == pytest.approx(top1)


@pytest.mark.parametrize("command", [
    ["classify", "{photo}"], ["extract", "{photo}", "-o", "{out}/f.npy"],
    ["evaluate", "{data}"], ["explain", "{photo}", "-o", "{out}/maps"],
    ["benchmark", "--images", "1"], ["summary"],
    ["export", "--format", "litert", "-o", "{out}/m.tflite"],
])
def test_image_size_against_the_card_is_a_usage_error(runner, squash_run, tmp_path,  # type: ignore[no-untyped-def]
                                                      command) -> None:
    photo = next(squash_run["data"].rglob("*.jpg"))
    args = [a.format(photo=photo, out=tmp_path, data=squash_run["data"]) for a in command]
    result = runner.invoke(app, [*args, "--weights", str(squash_run["keras"]),
                                 "--image-size", "96", "-q"])
    assert result.exit_code == 2, result.stderr
    assert f"takes {TINY}x{TINY} input" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_exported_files_refuse_a_gpu_and_another_size(runner, squash_run) -> None:  # type: ignore[no-untyped-def]
    photo = str(next(squash_run["data"].rglob("*.jpg")))
    for extra, message in ((["--device", "gpu"], "runs on the CPU"),
                           (["--image-size", "96"], f"takes {TINY}x{TINY} input")):
        result = runner.invoke(app, ["classify", photo, "--weights",
                                     str(squash_run["tflite"]), *extra])
        assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_summary_of_a_finetuned_backbone_is_what_extract_runs(runner, squash_run) -> None:  # type: ignore[no-untyped-def]
    def summary(*extra: str) -> dict:  # type: ignore[type-arg]
        result = runner.invoke(app, ["summary", "--weights", str(squash_run["keras"]),
                                     "-f", "json", *extra])
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    whole = summary()
    assert whole["output_shape"] == [None, len(CLASSES)]
    for extra, shape in ((["--pooling", "AVG"], [None, 2048]), ([], [None, 2048]),
                         (["--pooling", "none"], [None, 2, 2, 2048])):
        backbone = summary("--no-include-top", *extra)
        assert backbone["output_shape"] == shape, extra
        assert backbone["include_top"] is False
        assert backbone["params"]["total"] < whole["params"]["total"]


def test_export_backbone_pools_avg_by_default_like_extract(runner, squash_run,  # type: ignore[no-untyped-def]
                                                           tmp_path) -> None:
    out = tmp_path / "features.tflite"
    result = runner.invoke(app, ["export", "--format", "LITERT", "--weights",
                                 str(squash_run["keras"]), "--no-include-top", "-o", str(out),
                                 "-q"])
    assert result.exit_code == 0, result.stderr
    photo = str(next(squash_run["data"].rglob("*.jpg")))
    result = runner.invoke(app, ["extract", photo, "--weights", str(out), "-o",
                                 str(tmp_path / "f.npy"), "-q"])
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    assert np.load(tmp_path / "f.npy").shape == (1, 2048)
    result = runner.invoke(app, ["extract", photo, "--weights", str(out), "--pooling", "max",
                                 "-o", str(tmp_path / "g.npy")])
    assert result.exit_code == 2 and "avg-pooled" in result.stderr, result.stderr
    assert "--pooling max." in result.stderr  # the option as typed, not an enum's repr


def test_class_folders_match_case_insensitively(runner, squash_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    for name in CLASSES:
        shutil.copytree(squash_run["data"] / name, tmp_path / name.upper())
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--weights",
                                 str(squash_run["keras"]), "-f", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 6
    (tmp_path / "SQUARE").rename(tmp_path / "sqaure")
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--weights",
                                 str(squash_run["keras"]), "-q"])
    assert result.exit_code == 1 and "Did you mean square" in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["classify", "extract", "evaluate", "explain", "benchmark"])
def test_precision_and_device_on_every_command_that_runs_a_model(runner, command) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, [command, "--help"])
    assert "--precision" in result.stdout and "--device" in result.stdout


@pytest.mark.parametrize("command", ["summary", "export"])
def test_device_on_every_command_that_loads_a_model(runner, command) -> None:  # type: ignore[no-untyped-def]
    assert "--device" in runner.invoke(app, [command, "--help"]).stdout


def test_precision_bf16_in_evaluate(runner, squash_run) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["evaluate", str(squash_run["data"]), "--weights",
                                 str(squash_run["keras"]), "--precision", "BF16", "-f", "json",
                                 "-q"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 6


def test_overwrite_help_names_paths_txt_only_where_written(runner) -> None:  # type: ignore[no-untyped-def]
    for command, written in (("extract", True), ("merge", True), ("explain", False),
                             ("export", False)):
        text = " ".join(runner.invoke(app, [command, "--help"]).stdout.split())
        assert (".paths.txt" in text) is written, command
