from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_image
from typer.testing import CliRunner

from resnet_cli.cli import app


def _keras_reference(model, paths: list[Path], mode: str) -> np.ndarray:
    """Plain Keras: load_img (bilinear) + preprocess_input + the model."""
    import keras
    from keras.applications import imagenet_utils

    batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(
        p, target_size=(TINY, TINY), interpolation="bilinear")) for p in paths])
    return np.asarray(model(imagenet_utils.preprocess_input(batch, mode=mode), training=False))


@pytest.mark.parametrize("variant,mode", [("resnet50", "caffe"), ("resnet50v2", "tf")])
def test_parity_with_plain_keras(runner: CliRunner, tiny_classifier_factory, sample_photos,
                                 variant: str, mode: str) -> None:
    weights, model = tiny_classifier_factory(variant)
    result = runner.invoke(app, [
        "classify", *map(str, sample_photos), "--model", variant, "--weights", str(weights),
        "--image-size", str(TINY), "--resize", "squash", "--format", "json", "--top-k", "1000",
        "--batch-size", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["path"] for r in records] == list(map(str, sample_photos))
    expected = _keras_reference(model, sample_photos, mode)
    for record, row in zip(records, expected, strict=True):
        ours = np.zeros(1000)
        for p in record["predictions"]:
            ours[p["index"]] = p["probability"]
        np.testing.assert_allclose(ours, row, atol=1e-4)
        assert record["predictions"][0]["index"] == int(row.argmax())
    # The other variant's preprocessing would not pass: the check can fail.
    other = _keras_reference(model, sample_photos, "tf" if mode == "caffe" else "caffe")
    assert np.abs(other - expected).max() > 1e-3


@pytest.fixture
def tiny_args(tiny_classifier_factory) -> list[str]:
    weights, _ = tiny_classifier_factory("resnet50")
    return ["--weights", str(weights), "--image-size", str(TINY)]


def test_json_schema_and_one_bad_file(runner: CliRunner, tiny_args, image_files,
                                      tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    inputs = [str(image_files[0]), str(broken), str(image_files[1])]
    result = runner.invoke(app, ["classify", *inputs, *tiny_args, "-f", "json", "-k", "3"])
    assert result.exit_code == 1
    records = json.loads(result.stdout)
    assert [r["path"] for r in records] == inputs
    assert set(records[1]) == {"path", "error"} and records[1]["error"]
    first = records[0]["predictions"]
    assert [p["rank"] for p in first] == [1, 2, 3]
    assert set(first[0]) == {"rank", "index", "wnid", "label", "probability"}
    assert first[0]["wnid"].startswith("n") and first[0]["label"]
    assert first[0]["probability"] >= first[1]["probability"] >= first[2]["probability"]
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1 and str(broken) in error_lines[0]
    assert "Traceback" not in result.stderr


def test_jsonl_csv_and_table(runner: CliRunner, tiny_args, image_files) -> None:
    paths = list(map(str, image_files))
    jsonl = runner.invoke(app, ["classify", *paths, *tiny_args, "-f", "jsonl", "-k", "2"])
    lines = jsonl.stdout.strip().splitlines()
    assert jsonl.exit_code == 0 and [json.loads(line)["path"] for line in lines] == paths

    result = runner.invoke(app, ["classify", *paths, *tiny_args, "-f", "csv", "-k", "2"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["path"], r["rank"]) for r in rows] == [(p, k) for p in paths for k in "12"]
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)

    table = runner.invoke(app, ["classify", paths[0], *tiny_args, "-k", "2"])
    assert table.exit_code == 0
    assert Path(paths[0]).name in table.stdout and "probability" in table.stdout


def test_output_file_is_written_atomically_with_format_from_suffix(
        runner: CliRunner, tiny_args, image_files, tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    result = runner.invoke(app, ["classify", str(image_files[0]), *tiny_args, "-o", str(out)])
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(out.read_text())["path"] == str(image_files[0])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_output_not_written_when_the_run_fails(runner: CliRunner, image_files,
                                               tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RESNET_WEIGHTS_URL", "http://127.0.0.1:9/")
    out = tmp_path / "preds.json"
    result = runner.invoke(app, ["classify", str(image_files[0]), "-o", str(out)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ImageNet weights resnet50_weights_tf_dim_ordering")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_paths_from_stdin(runner: CliRunner, tiny_args, image_files) -> None:
    stdin = "\n".join(map(str, image_files[:2])) + "\n"
    result = runner.invoke(app, ["classify", *tiny_args, "-f", "jsonl", "-k", "1"], input=stdin)
    assert result.exit_code == 0
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == \
        list(map(str, image_files[:2]))


def test_whole_distribution_sums_to_one(runner: CliRunner, tiny_args, image_files) -> None:
    result = runner.invoke(app, ["classify", str(image_files[2]), *tiny_args, "-f", "json",
                                 "-k", "1000"])
    preds = json.loads(result.stdout)[0]["predictions"]
    assert len(preds) == 1000 and len({p["index"] for p in preds}) == 1000
    assert sum(p["probability"] for p in preds) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("args,message", [
    (["-k", "0"], "--top-k"),
    (["-k", "1001"], "--top-k must be between 1 and 1000"),
    (["--model", "resnet5"], "Did you mean 'resnet50'"),
    (["--device", "tpu"], "Invalid device"),
    (["--image-size", "16"], "--image-size"),
    (["--format", "xml"], "--format"),
    (["--weights", "missing.weights.h5"], "not imagenet, none, or an existing file"),
    (["-o", "out.txt"], "cannot tell the format"),
])
def test_usage_errors_exit_2(runner: CliRunner, image_files, args: list[str],
                             message: str) -> None:
    base = ["classify", str(image_files[0]), "--weights", "none", "--image-size", "32"]
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == 2, result.stderr
    assert message in _unboxed(result.stderr)
    assert "Traceback" not in result.stderr


def _unboxed(text: str) -> str:
    """Typer shows usage errors in a Rich panel: read it back as plain words."""
    words = text.replace("│", " ").replace("╭", " ").replace("╰", " ").replace("─", " ").split()
    return " ".join(words)


def test_imagenet_head_size_check_is_a_usage_error(runner: CliRunner, image_files) -> None:
    result = runner.invoke(app, ["classify", str(image_files[0]), "--image-size", "64"])
    assert result.exit_code == 2
    assert "takes 224x224 input" in result.stderr


def test_all_inputs_missing(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["classify", str(tmp_path / "a.jpg"), str(tmp_path / "b*.png"),
                                 "--weights", "none", "--image-size", "32", "-f", "json"])
    assert result.exit_code == 1
    assert [r["error"] for r in json.loads(result.stdout)] == ["no such file"]
    assert f"warning: {tmp_path / 'b*.png'}: no images" in result.stderr


def test_debug_shows_the_exception(runner: CliRunner, image_files, monkeypatch) -> None:
    monkeypatch.setenv("RESNET_WEIGHTS_URL", "http://127.0.0.1:9/")
    result = runner.invoke(app, ["--debug", "classify", str(image_files[0])])
    assert type(result.exception).__name__ == "WeightsError"


def test_version(runner: CliRunner) -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"resnet {version('resnet-cli')}"


def test_make_image_helper_is_deterministic(tmp_path: Path) -> None:
    a = make_image(tmp_path / "x.png", seed=4).read_bytes()
    b = make_image(tmp_path / "y.png", seed=4).read_bytes()
    assert a == b


def test_no_inputs_and_a_terminal_on_stdin_is_a_usage_error(monkeypatch) -> None:
    from resnet_cli.cli.messages import read_inputs
    from resnet_cli.errors import NoInputsError

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal(""))
    with pytest.raises(NoInputsError, match="pipe paths on stdin") as info:
        read_inputs(None, recursive=False)
    assert info.value.exit_code == 2


def test_a_few_images_are_not_padded_to_a_full_batch(image_files) -> None:
    from resnet_cli.classify import classify_images
    from resnet_cli.models import ModelOptions, load_model

    loaded = load_model(ModelOptions(weights="none", image_size=32))
    results = list(classify_images([str(p) for p in image_files], loaded, batch_size=32,
                                   progress=False))
    assert [r.ok for r in results] == [True, True, True]
    # One compiled function, for 3 rows, not 32 (29 of them padding).
    assert [key[1] for key in loaded.compiled] == [3]


def test_empty_folder_and_fifo_among_good_inputs(runner: CliRunner, tmp_path: Path) -> None:
    import os

    (tmp_path / "empty").mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()
    good = make_image(photos / "a.jpg", seed=1)
    os.mkfifo(photos / "camera.jpg")  # would hang a reader that opens it blindly
    result = runner.invoke(app, ["classify", str(tmp_path / "empty"), str(photos),
                                 "--weights", "none", "--image-size", "32", "-f", "jsonl"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert f"warning: {tmp_path / 'empty'}: no images" in lines
    assert f"error: {photos / 'camera.jpg'}: not a regular file" in lines
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(photos / "a.jpg"), str(photos / "camera.jpg")]
    assert records[0]["predictions"] and good.exists()
