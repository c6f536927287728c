"""`resnet audit`: label issues from a linear model on planted separable features, and the
whole command on a real folder-per-class dataset (colour classes, a planted mislabelled
image, a copy inside the set, a leak into --test, an unreadable file)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from conftest import SIM_SIZE
from PIL import Image

from resnet_cli.cli import app
from resnet_cli.similarity.audit import _label_issues


def test_label_issues_find_the_planted_flips_with_their_true_class() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 32)) * 3
    truth = np.repeat(np.arange(4), 40)
    vectors = centres[truth] + rng.standard_normal((len(truth), 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    labels = truth.copy()
    flipped = rng.choice(len(truth), size=12, replace=False)
    labels[flipped] = (truth[flipped] + 1 + rng.integers(0, 3, 12)) % 4
    names = ("a", "b", "c", "d")
    paths = [f"img{i}.png" for i in range(len(truth))]
    issues, _, accuracy = _label_issues(vectors, labels.tolist(), paths, names, 5)
    found = {int(i.path[3:-4]): i for i in issues}
    hits = set(flipped.tolist()) & set(found)
    assert len(hits) >= 0.9 * len(flipped)  # recall
    assert len(hits) >= 0.5 * len(found)  # precision
    for index in hits:
        assert found[index].suggested == names[truth[index]]
        assert found[index].label == names[labels[index]]
    scores = [i.score for i in issues]
    assert all(0 <= s <= 1 for s in scores)
    assert 0.85 <= accuracy <= 0.95  # the labels themselves are 92.5% right


def _noise(color: tuple[int, int, int], seed: int) -> Image.Image:
    noise = np.random.default_rng(seed).normal(0, 20, (36, 40, 3))
    return Image.fromarray(np.clip(np.array(color) + noise, 0, 255).astype(np.uint8), "RGB")


def test_audit_command_reports_what_was_planted(sim_weights: Path, runner, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                sample_photos: list[Path]) -> None:
    data, test = tmp_path / "data", tmp_path / "test"
    colours = {"red": (210, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 210)}
    for k, (name, colour) in enumerate(colours.items()):
        (data / name).mkdir(parents=True)
        for j in range(10):
            _noise(colour, 100 * k + j).save(data / name / f"{name}{j}.png")
    _noise(colours["red"], 999).save(data / "blue" / "actually_red.png")  # mislabelled
    photo = Image.open(sample_photos[0]).convert("RGB")
    photo.save(data / "green" / "photo.jpg", quality=95)
    photo.save(data / "green" / "photo_q30.jpg", quality=30)  # a copy within the set
    test.mkdir()
    photo.resize((photo.width // 2, photo.height // 2)).save(test / "leaked.png")
    (data / "red" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "audit"
    result = runner.invoke(app, ["audit", str(data), "--test", str(test), "--weights",
                                 str(sim_weights), "--image-size", str(SIM_SIZE), "-o",
                                 str(out), "--threshold", "1.0", "--folds", "3", "-q"])
    assert result.exit_code == 0, result.stderr
    assert f"wrote {out / 'audit.json'}" in result.stdout
    report = json.loads((out / "audit.json").read_text())
    issues = {Path(i["path"]).name: i for i in report["label_issues"]}
    assert issues["actually_red.png"]["label"] == "blue"
    assert issues["actually_red.png"]["suggested"] == "red"
    assert [Path(u["path"]).name for u in report["unreadable"]] == ["broken.png"]
    copy_groups = [sorted(Path(p).name for p in g["paths"]) for g in report["duplicates"]
                   if g["kind"] == "copy"]
    assert ["photo.jpg", "photo_q30.jpg"] in copy_groups
    leaks = {tuple(Path(p).name for p in leak["paths"]) for leak in report["leaks"]}
    assert ("photo.jpg", "leaked.png") in leaks and ("photo_q30.jpg", "leaked.png") in leaks
    classes = {c["name"]: c["count"] for c in report["classes"]}
    assert classes == {"blue": 11, "green": 12, "red": 10}
    with open(out / "label_issues.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0].keys() == {"path", "label", "suggested", "score"}
    assert {Path(r["path"]).name for r in rows} == set(issues)
    page = (out / "index.html").read_text()
    assert "Likely label errors" in page and "actually_red.png" in page
    assert "data:image/png;base64," in page and "broken.png" in page
    shutil.rmtree(data / "red")  # the dataset is untouched otherwise
    assert sorted(p.name for p in (data / "blue").iterdir())[0] == "actually_red.png"


def test_audit_bad_inputs(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    result = runner.invoke(app, ["audit", str(flat), "-o", str(tmp_path / "out"),
                                 "--weights", "none"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error:") and "no class folders" in result.stderr
    assert result.stderr.count("\n") == 1
