"""`resnet benchmark` at tiny settings: it runs, reports positive figures, never retraces.

No timing is asserted here: speed figures live in benchmarks/speed.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_image

from resnet_cli import devices
from resnet_cli.cli import app

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


@pytest.fixture(scope="module")
def synthesised_run() -> tuple[object, dict]:  # type: ignore[type-arg]
    """One benchmark run on synthesised photos, through the command line: (the report as the
    library returned it, the JSON the command printed)."""
    from typer.testing import CliRunner

    from resnet_cli.benchmark import run_benchmark

    reports = []

    def keep(*args, **kwargs):  # type: ignore[no-untyped-def]
        reports.append(run_benchmark(*args, **kwargs))
        return reports[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("resnet_cli.benchmark.run_benchmark", keep)
        result = CliRunner().invoke(app, ["benchmark", *TINY_ARGS, "--images", "3",
                                          "--photo-size", "96x64"])
    assert result.exit_code == 0, result.stderr
    return reports[0], json.loads(result.stdout)


def test_synthesised_photos(synthesised_run) -> None:  # type: ignore[no-untyped-def]
    _, data = synthesised_run
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


def test_table_output(synthesised_run) -> None:  # type: ignore[no-untyped-def]
    """The same run drawn as tables (the report's figures, not a second run)."""
    import io

    from rich.console import Console

    from resnet_cli.render.benchmark import render_benchmark

    report, data = synthesised_run
    out = io.StringIO()
    render_benchmark(report, Console(file=out, width=200))
    text = out.getvalue()
    for expected in ("model alone", "classify", "images/s", "ms/batch", "classify/model",
                     "as fast as trained weights", "traced 1 time"):
        assert expected in text, expected
    median = data["timings"][0]["images_per_s"]["median"]
    assert f"{median:.1f}" in text  # the figures shown are the run's


@pytest.mark.parametrize("args", [["--photo-size", "big"], ["--batch-size", "0"],
                                  ["--repeats", "0"], ["--precision", "half"]])
def test_bad_options_exit_2(runner, args: list[str]) -> None:
    result = runner.invoke(app, ["benchmark", *args])
    assert result.exit_code == 2, result.stdout
