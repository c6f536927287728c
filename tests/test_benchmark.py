"""`resnet benchmark` at tiny settings: it runs, reports positive figures, never retraces.

No timing is asserted here: speed figures live in benchmarks/speed.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from resnet_cli import devices
from resnet_cli.benchmark import UNIQUE_PHOTOS, parse_photo_size, photo_like, synthesize_photos
from resnet_cli.cli import app
from resnet_cli.errors import UsageError
from resnet_cli.images import load_image
from resnet_cli.inference import Predictor, iter_batches
from resnet_cli.models import ModelOptions, load_model

TINY_ARGS = ["--image-size", "32", "--batch-size", "2", "--repeats", "1", "--warmup", "0",
             "-f", "json", "-q"]


def check_timing(timing: dict, name: str, images: int) -> None:
    assert timing["name"] == name
    assert timing["runs"] == 1 and timing["images_per_run"] == images
    for key in ("images_per_s", "ms_per_batch"):
        stats = timing[key]
        assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert timing["images_per_s"]["median"] == pytest.approx(images / timing["seconds"][0])
    assert timing["cpu_ms_per_image"] > 0


def test_synthesised_photos(runner) -> None:
    result = runner.invoke(app, ["benchmark", *TINY_ARGS, "--images", "3",
                                 "--photo-size", "96x64"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "resnet50" and "random weights" in data["source"]
    assert data["precision"] == "fp32" and data["policy"] == "float32"
    assert (data["batch_size"], data["image_size"], data["input_count"]) == (2, 32, 3)
    assert "3 synthesised 96x64 JPEGs" in data["inputs"]
    assert [t["name"] for t in data["timings"]] == ["model", "classify", "keras"]
    for timing in data["timings"]:
        check_timing(timing, timing["name"], 3)
    # 3 images at batch 2: the last batch is padded, and the function is traced only once.
    assert data["trace_count"] == 1
    assert data["compile_s"] > 0 and data["keras_first_s"] > 0
    assert set(data["ratios"]) == {"classify/model", "classify/keras", "model/keras"}
    assert all(value > 0 for value in data["ratios"].values())
    assert data["errors"] == [] and data["cpu_count"] >= 1
    assert data["other_cpu"] is None or data["other_cpu"] >= 0


def test_inputs_folder_with_a_bad_file(runner, tmp_path: Path) -> None:
    for i in range(2):
        make_image(tmp_path / f"img{i}.jpg", (120, 90), seed=i)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    result = runner.invoke(app, ["benchmark", *TINY_ARGS, "--inputs", str(tmp_path),
                                 "--no-baseline"])
    assert result.exit_code == 1
    assert "broken.jpg" in result.stderr
    data = json.loads(result.stdout)
    assert data["input_count"] == 2 and data["inputs"] == "3 given files"
    assert [e["path"] for e in data["errors"]] == [str(tmp_path / "broken.jpg")]
    assert [t["name"] for t in data["timings"]] == ["model", "classify"]
    assert set(data["ratios"]) == {"classify/model"}


def test_bf16_adds_an_fp32_reference(runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda cpuinfo=None: True)
    result = runner.invoke(app, ["benchmark", *TINY_ARGS, "--images", "2", "--photo-size",
                                 "64x64", "--precision", "bf16", "--no-baseline"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["precision"] == "bf16" and data["policy"] == "mixed_bfloat16"
    assert [t["name"] for t in data["timings"]] == ["model", "classify", "model_fp32",
                                                     "classify_fp32"]
    assert set(data["ratios"]) == {"classify/model", "model/model_fp32",
                                   "classify/classify_fp32", "classify/model_fp32"}
    assert all(value > 0 for value in data["ratios"].values())


def test_table_output(runner) -> None:
    result = runner.invoke(app, ["benchmark", "--image-size", "32", "--batch-size", "2",
                                 "--images", "2", "--repeats", "2", "--warmup", "0",
                                 "--photo-size", "64x48", "--no-baseline"])
    assert result.exit_code == 0, result.stderr
    for text in ("model alone", "classify", "images/s", "ms/batch", "classify/model",
                 "as fast as trained weights", "traced 1 time"):
        assert text in result.stdout, text


@pytest.mark.parametrize("args", [["--photo-size", "big"], ["--batch-size", "0"],
                                  ["--repeats", "0"], ["--precision", "half"]])
def test_bad_options_exit_2(runner, args: list[str]) -> None:
    result = runner.invoke(app, ["benchmark", *args])
    assert result.exit_code == 2, result.stdout


def test_parse_photo_size() -> None:
    assert parse_photo_size("1920x1080") == (1920, 1080)
    assert parse_photo_size("4000X3000") == (4000, 3000)
    with pytest.raises(UsageError, match="WIDTHxHEIGHT"):
        parse_photo_size("1920")


def test_synthesize_photos_are_photo_like(tmp_path: Path) -> None:
    paths = synthesize_photos(tmp_path, UNIQUE_PHOTOS + 2, size=(160, 120))
    assert len(paths) == UNIQUE_PHOTOS + 2 and all(p.suffix == ".jpg" for p in paths)
    with Image.open(paths[0]) as img:
        assert (img.format, img.size, img.mode) == ("JPEG", (160, 120), "RGB")
    first, second = (np.asarray(Image.open(p), dtype=np.float32) for p in paths[:2])
    assert np.abs(first - second).mean() > 10  # different pictures
    assert paths[UNIQUE_PHOTOS].read_bytes() == paths[0].read_bytes()  # copies after that
    # Smooth at large scale, noisy at pixel scale, like a photograph.
    assert first.std() > 20
    step = np.abs(np.diff(first, axis=1)).mean()
    assert 1 < step < 20
    assert load_image(str(paths[1]), size=32).shape == (32, 32, 3)
    assert photo_like((40, 30), seed=3).size == (40, 30)


def test_predictor_traces_once(tmp_path: Path) -> None:
    loaded = load_model(ModelOptions(weights="none", image_size=32))
    predictor = Predictor(loaded, 4)
    rng = np.random.default_rng(0)
    for count in (4, 1, 3, 4):
        out = predictor(rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8))
        assert out.shape == (count, 1000) and out.dtype == np.float32
    assert predictor.trace_count == 1
    # A second predictor for the same model and batch size reuses the compiled function.
    again = Predictor(loaded, 4)
    again(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    assert again.trace_count == 1
    paths = [str(make_image(tmp_path / f"{i}.png", (40, 30), seed=i)) for i in range(5)]
    batches = list(iter_batches(paths, again, image_size=32, progress=False))
    assert [len(b.ok) for b in batches] == [4, 1]
    assert again.trace_count == 1
    other = Predictor(loaded, 2)
    other(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    assert other.trace_count == 1 and len(loaded.compiled) == 2
