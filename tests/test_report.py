"""`resnet evaluate --report DIR` and finetune's `curves.png`.

The report is parsed, not eyeballed: no network reference at all, every picture an embedded
PNG, every number equal to `--format json`'s, every name from the data escaped. One test
screenshots it with headless Chromium (`-m slow`, skipped without Chromium).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_cli.cli import app
from resnet_cli.errors import ImageError
from resnet_cli.evaluate import compute_metrics
from resnet_cli.labels import build_labels
from resnet_cli.render.curves import best_epoch, draw_curves, phase_boundaries
from resnet_cli.render.report import MATRIX_NAME, write_report
from resnet_cli.results import EpochRecord, Evaluation

pytestmark = pytest.mark.filterwarnings("ignore:Even though the:UserWarning")

# Class and file names are user data: markup in them must come out as text.
ODD_CLASS = 'f<o>x & "$co$"'
ODD_FILE = 'x <b>&amp; "q".png'
PNG_URI = "data:image/png;base64,"


class Page(HTMLParser):
    """Every tag with its attributes, the text of each element with an id, and the rows of
    each table with an id (cells as (text, data-value))."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.texts: list[str] = []
        self.tables: dict[str, list[list[tuple[str, str | None]]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._value: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {k: v or "" for k, v in attrs}
        self.tags.append((tag, named))
        if tag == "table":
            self._table = named.get("id")
            if self._table:
                self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell, self._value = [], named.get("data-value")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append(("".join(self._cell).strip(), self._value))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def attr(self, name: str) -> list[str]:
        return [attrs[name] for _, attrs in self.tags if name in attrs]

    def by_id(self, key: str) -> dict[str, str]:
        return next(attrs for _, attrs in self.tags if attrs.get("id") == key)

    @property
    def text(self) -> str:
        return "".join(self.texts)


def _drawn(img: Image.Image) -> bool:
    """Whether a picture has real content: many grey levels, well spread (a blank or
    one-colour PNG has neither)."""
    pixels = np.asarray(img.convert("L"), dtype=float)
    return bool(pixels.std() > 10 and len(np.unique(pixels)) > 16)


def check_self_contained(folder: Path) -> Page:
    """The checks every report passes; returns the parsed page."""
    raw = (folder / "index.html").read_text(encoding="utf-8")
    page = Page(raw)
    assert "http:" not in raw and "https:" not in raw and "url(" not in raw
    assert not [t for t, attrs in page.tags if t in ("script", "link", "iframe", "object")]
    sources = page.attr("src")
    assert sources and all(src.startswith(PNG_URI) for src in sources)
    for src in sources:
        with Image.open(io.BytesIO(base64.b64decode(src.removeprefix(PNG_URI),
                                                    validate=True))) as img:
            assert img.format == "PNG"
            assert _drawn(img), "an embedded picture is blank"
    for href in page.attr("href"):  # only the files written beside the page
        assert "/" not in href and (folder / href).is_file(), href
    with Image.open(folder / MATRIX_NAME) as matrix:
        assert matrix.format == "PNG" and min(matrix.size) >= 300 and _drawn(matrix)
    # Markup inside names stays text: only the report's own tags exist.
    assert {tag for tag, _ in page.tags} <= {
        "html", "head", "meta", "title", "style", "body", "main", "header", "h1", "h2", "h3",
        "p", "span", "section", "div", "table", "thead", "tbody", "tr", "th", "td", "img",
        "a", "details", "summary", "figure", "figcaption", "b", "wbr", "footer"}
    return page


# ----- a real run: finetune (curves.png), then evaluate --report ---------------------------

@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> tuple[Path, Path, str]:
    """A 2-epoch finetune run (eager steps, 32 px) on 3 classes, one with markup in its
    name; returns (run folder, dataset, finetune's stdout)."""
    import tensorflow as tf
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("report")
    data = root / "data <&>"
    for i, name in enumerate(("cat", "dog", ODD_CLASS)):
        (data / name).mkdir(parents=True)
        for j in range(4):
            noise = np.random.default_rng(10 * i + j).normal(0, 25, (36, 40, 3))
            pixels = np.clip(np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)][i])
                             + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(data / name / (ODD_FILE if j == 0 else
                                                               f"{j}.png"))
    tf.config.run_functions_eagerly(True)
    try:
        result = CliRunner().invoke(app, [
            "finetune", str(data), "--classes", "3", "-o", str(root / "run"), "--weights",
            "none", "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--quiet"],
            catch_exceptions=False)
    finally:
        tf.config.run_functions_eagerly(False)
    assert result.exit_code == 0, result.stderr
    return root / "run", data, result.stdout


def test_finetune_draws_curves(run_folder):
    run, _, stdout = run_folder
    curves = run / "curves.png"
    with Image.open(curves) as img:
        assert img.format == "PNG"
        width, height = img.size
        assert 800 <= width <= 1600 and 300 <= height <= 800
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # lines and text, not blank
    assert f"curves: {curves}" in stdout.replace("\n", "")


def test_report_is_self_contained_and_matches_json(run_folder, runner, tmp_path):
    run, data, _ = run_folder
    report = tmp_path / "new" / "report"
    result = runner.invoke(app, ["evaluate", str(data), "--weights", str(run / "model.keras"),
                                 "--format", "json", "--errors", "20", "--report", str(report),
                                 "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    numbers = json.loads(result.stdout)  # stdout stays one JSON document
    assert f"report: {report / 'index.html'}" in result.stderr
    assert sorted(p.name for p in report.iterdir()) == ["confusion_matrix.png", "curves.png",
                                                        "index.html"]
    assert (report / "curves.png").read_bytes() == (run / "curves.png").read_bytes()
    page = check_self_contained(report)
    assert len(page.attr("src")) == 2 + len(numbers["errors"]["shown"])  # curves, matrix

    def value(key: str) -> float:
        return float(page.by_id(key)["data-value"])

    assert value("top1") == numbers["top1_accuracy"]
    assert value("macro_f1") == numbers["macro_f1"]
    assert value("images") == numbers["images"] == 12
    assert value("mistakes") == numbers["errors"]["count"]
    assert not [a for _, a in page.tags if a.get("id") == "top5"]  # 3 classes: no top-5
    rows = page.tables["classes"][1:]
    assert [row[1][0] for row in rows] == [c["class"] for c in numbers["per_class"]]
    assert ODD_CLASS in [row[1][0] for row in rows]
    for row, expected in zip(rows, numbers["per_class"], strict=True):
        support, precision, recall, f1 = (float(cell[1]) for cell in row[2:])
        assert (support, precision, recall, f1) == (expected["support"], expected["precision"],
                                                    expected["recall"], expected["f1"])
    matrix = page.tables["matrix"]
    assert [c[0] for c in matrix[0][1:]] == numbers["confusion_matrix"]["columns"]
    assert [[int(c[1]) for c in row[1:]] for row in matrix[1:]] == \
        numbers["confusion_matrix"]["counts"]
    text = page.text
    assert str(data) in text and str(run / "model.keras") in text
    for error in numbers["errors"]["shown"]:  # the file names come through as text
        assert error["path"] in text


def test_report_dir_that_cannot_be_made_fails_before_the_model_loads(runner, tmp_path):
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(data / "a.png")
    (tmp_path / "taken").write_text("")
    args = ["evaluate", str(tmp_path / "data"), "--weights", "none", "--report"]
    a_file = runner.invoke(app, [*args, str(tmp_path / "taken")])
    assert a_file.exit_code == 2 and "--report" in a_file.stderr  # Click: a file
    below_a_file = runner.invoke(app, [*args, str(tmp_path / "taken" / "report")])
    assert below_a_file.exit_code == 1
    assert "is not a folder" in below_a_file.stderr
    assert len(below_a_file.stderr.strip().splitlines()) == 1


# ----- the page from plain data ----------------------------------------------------------

def synthetic_evaluation(folder: Path, classes: int, *, per_class: int = 3) -> Evaluation:
    """An Evaluation over real PNGs (one with markup in its name, one deleted afterwards) from
    made-up probabilities."""
    rng = np.random.default_rng(classes)
    names = [f"<script>alert({i})</script>" if i == 1 else f"class {i}"
             for i in range(classes)]
    paths, true = [], []
    for c in range(classes):
        for j in range(per_class):
            path = folder / f"{c}-{j}.png" if (c, j) != (0, 0) else folder / ODD_FILE
            Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
            true.append(c)
    probs = rng.dirichlet(np.ones(classes), size=len(paths))
    probs[np.arange(len(paths)), true] += 0.2 * rng.random(len(paths))
    probs /= probs.sum(axis=1, keepdims=True)
    probs[0] = np.eye(classes)[1]  # the file with markup in its name: the surest mistake
    metrics = compute_metrics(true, probs, paths, class_names=names,
                              class_outputs=list(range(classes)), labels=build_labels(names),
                              max_mistakes=len(paths))
    return Evaluation(model="m <1>.keras", dataset=str(folder), seconds=1.0,
                      failures=(ImageError(str(folder / "bad <x>.jpg"), "not an image"),),
                      **metrics)


@pytest.mark.parametrize("classes", [4, 30])
def test_report_from_plain_data_escapes_names(tmp_path, classes):
    images = tmp_path / "images"
    images.mkdir()
    result = synthetic_evaluation(images, classes)
    gone = result.mistakes[-1].path
    Path(gone).unlink()
    index = write_report(result, tmp_path / "out")
    page = check_self_contained(tmp_path / "out")
    assert "script" not in {tag for tag, _ in page.tags}
    text = page.text
    assert "<script>alert(1)</script>" in text and "m <1>.keras" in text
    assert "bad <x>.jpg" in text and "cannot read the file" in text
    assert len(page.attr("src")) == 1 + len(result.mistakes) - 1  # the matrix, thumbnails
    assert ("matrix" in page.tables) == (classes <= 25)  # a labelled table up to 25 classes
    assert page.tables["pairs"][1]  # the most confused pairs, always
    assert result.mistakes[0].path == str(images / ODD_FILE)
    assert str(images / ODD_FILE) in text  # escaped on the page, shown as text
    assert index.read_text(encoding="utf-8").count("<img") == len(page.attr("src"))


# ----- curves ----------------------------------------------------------------------------

def record(epoch: int, phase: int = 1, val: tuple[float, float] | None = (0.5, 0.5)
           ) -> EpochRecord:
    val_loss, val_acc = val if val is not None else (None, None)
    return EpochRecord(epoch, phase, 1e-3, 1.0 / epoch, 0.3 + 0.1 * epoch, val_loss, val_acc,
                       1.0)


def test_best_epoch_and_phase_boundaries():
    history = [record(1, val=(0.9, 0.5)), record(2, val=(0.7, 0.8)), record(3, 2, (0.6, 0.8)),
               record(4, 2, (0.8, 0.7))]
    assert best_epoch(history) == 3  # tie on accuracy: the lower loss
    assert phase_boundaries(history) == [2]
    assert best_epoch([record(1, val=None), record(2, val=None)]) == 2
    assert best_epoch([]) is None


@pytest.mark.parametrize("history", [[record(1, val=None)],
                                     [record(e, 1 + (e > 3), (2.0 / e, 0.1 * e))
                                      for e in range(1, 7)]])
def test_curves_draw_any_history(tmp_path, history):
    path = draw_curves(history, tmp_path / "curves.png",
                       phase_boundaries=phase_boundaries(history),
                       best_epoch=best_epoch(history))
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > img.size[1] > 300 and _drawn(img)


# ----- in a real browser -----------------------------------------------------------------

@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed")
    images = tmp_path / "images"
    images.mkdir()
    index = write_report(synthetic_evaluation(images, 10, per_class=4), tmp_path / "report")
    shot = tmp_path / "shot.png"
    # No network at all: the page must not need it.
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--window-size=1280,2400",
                    "--proxy-server=127.0.0.1:9", f"--screenshot={shot}", index.as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    # Text, the matrix and thumbnails drew: many colours, and far from a blank page.
    assert len(np.unique(pixels[::4, ::4].reshape(-1, 3), axis=0)) > 500
    assert (pixels < 128).any(axis=2).mean() > 0.02
