"""`resnet index` and `resnet search` through the command line, with a tiny real ResNet50
(32 px, a saved random-weight file, so a later run reproduces the rows): the folder format,
--append (only new images computed; interrupted, the old index stays whole), --from an
extract output and its card, the card deciding search's model, and each bad input as one
line and its exit code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SIM_SIZE, make_image

from resnet_cli.cli import app


def _invoke(runner, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(result, code: int, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def photo_dir(sample_photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for photo in sample_photos:
        shutil.copy(photo, folder / photo.name)
    return folder


@pytest.fixture(scope="module")
def built(photo_dir: Path, sim_weights: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Path:
    from typer.testing import CliRunner

    index = tmp_path_factory.mktemp("idx") / "photos.index"
    photos = sorted(photo_dir.glob("*.jpg"))
    result = CliRunner().invoke(app, ["index", *map(str, photos[:-1]), "-o", str(index),
                                      "--weights", str(sim_weights), "--image-size",
                                      str(SIM_SIZE), "-q"])
    assert result.exit_code == 0, result.stderr
    return index


def test_index_folder_holds_unit_rows_paths_and_card(built: Path, photo_dir: Path,
                                                     sim_weights: Path) -> None:
    meta = json.loads((built / "index.json").read_text())
    photos = sorted(str(p) for p in photo_dir.glob("*.jpg"))[:-1]
    assert meta == {"format": "resnet-index", "version": 1, "rows": len(photos), "dim": 2048}
    vectors = np.load(built / "vectors.npy", allow_pickle=False)
    assert vectors.shape == (len(photos), 2048) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (built / "vectors.paths.txt").read_text().splitlines() == photos
    card = json.loads((built / "vectors.card.json").read_text())
    assert card["weights"] == str(sim_weights.resolve())
    assert card["card"]["base_model"] == "resnet50" and card["card"]["image_size"] == SIM_SIZE
    assert card["pooling"] == "avg" and card["layer"] == "conv5_block3_out"


def test_search_finds_the_query_itself_first_with_the_cards_model(built: Path, runner,  # type: ignore[no-untyped-def]
                                                                  photo_dir: Path) -> None:
    photos = sorted(photo_dir.glob("*.jpg"))
    result = _invoke(runner, "search", photos[0], photos[1], "--index", built, "-k", "3",
                     "--format", "json", "-q", "--html", built.parent / "page.html")
    assert result.exit_code == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [h["path"] for h in hits] == [str(photos[0]), str(photos[1])]
    for hit in hits:
        assert len(hit["neighbors"]) == 3
        assert hit["neighbors"][0]["path"] == hit["path"]
        assert hit["neighbors"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
        sims = [n["similarity"] for n in hit["neighbors"]]
        assert sims == sorted(sims, reverse=True)
    page = (built.parent / "page.html").read_text()
    assert page.count("data:image/png;base64,") == 2 + 2 * 3  # each query and neighbour
    assert page.count('class="tile lead"') == 2
    csv_out = _invoke(runner, "search", photos[0], "--index", built, "-k", "2", "-f", "csv",
                      "-q")
    assert csv_out.stdout.splitlines()[0] == "query,rank,path,similarity"
    assert csv_out.stdout.splitlines()[1].startswith(f"{photos[0]},1,{photos[0]},")


def test_search_refuses_a_conflicting_model_option(built: Path, runner,  # type: ignore[no-untyped-def]
                                                   photo_dir: Path) -> None:
    query = sorted(photo_dir.glob("*.jpg"))[0]
    for option in (["--model", "resnet101"], ["--image-size", "64"], ["--weights", "none"],
                   ["--pooling", "max"]):
        result = _invoke(runner, "search", query, "--index", built, *option)
        _one_error_line(result, 2, "conflicts with", "drop")


def test_search_bad_inputs_are_one_line(built: Path, runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    result = _invoke(runner, "search", broken, "--index", built, "-q")
    assert result.exit_code == 1
    assert f"error: {broken}: not an image" in result.stderr
    assert "No features written" in result.stderr and "Traceback" not in result.stderr
    _one_error_line(_invoke(runner, "search", broken, "--index", tmp_path), 2, "not an index")


def test_append_adds_only_new_images_and_an_interruption_keeps_the_old_index(  # type: ignore[no-untyped-def]
        built: Path, photo_dir: Path, runner, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "copy.index"
    shutil.copytree(built, index)
    before = {p.name: p.read_bytes() for p in index.iterdir()}
    photos = sorted(photo_dir.glob("*.jpg"))

    import resnet_cli.similarity.index as index_module

    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(index_module, "_write_rows", interrupted)
        result = _invoke(runner, "index", photos[-1], "--append", index, "-q")
    assert result.exit_code == 130
    assert {p.name: p.read_bytes() for p in index.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.index"]  # no temp left

    computed: list[list[str]] = []
    real = index_module.compute_features

    def counting(paths, *args, **kwargs):  # type: ignore[no-untyped-def]
        computed.append(list(paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(index_module, "compute_features", counting)
    result = _invoke(runner, "index", *photos, "--append", index)
    assert result.exit_code == 0, result.stderr
    assert computed == [[str(photos[-1])]]  # the others are already indexed
    assert f"{len(photos)} rows of 2048 (1 added)" in result.stderr
    old = np.load(built / "vectors.npy")
    new = np.load(index / "vectors.npy")
    assert np.array_equal(new[:-1], old)
    assert (index / "vectors.paths.txt").read_text().splitlines()[-1] == str(photos[-1])
    _one_error_line(_invoke(runner, "index", photos[0], "--append", index), 2,
                    "Nothing to index", "already in")
    _one_error_line(_invoke(runner, "index", photos[0], "--append", index, "--model",
                            "resnet152"), 2, "conflicts with")


def test_index_from_extract_output_checks_its_card(built: Path, photo_dir: Path, runner,  # type: ignore[no-untyped-def]
                                                   sim_weights: Path, tmp_path: Path) -> None:
    photos = sorted(photo_dir.glob("*.jpg"))
    feats = tmp_path / "feats.npy"
    result = _invoke(runner, "extract", photos[-1], "-o", feats, "--weights", sim_weights,
                     "--image-size", SIM_SIZE, "-q")
    assert result.exit_code == 0, result.stderr
    card = json.loads((tmp_path / "feats.card.json").read_text())
    assert card["weights"] == str(sim_weights.resolve()) and card["l2_normalize"] is False

    fresh = tmp_path / "fresh.index"
    result = _invoke(runner, "index", "--from", feats, "-o", fresh, "-q")
    assert result.exit_code == 0, result.stderr
    rows = np.load(fresh / "vectors.npy")
    raw = np.load(feats)
    assert np.allclose(rows, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)

    grown = tmp_path / "grown.index"
    shutil.copytree(built, grown)
    result = _invoke(runner, "index", "--from", feats, "--append", grown, "-q")
    assert result.exit_code == 0, result.stderr
    assert np.load(grown / "vectors.npy").shape[0] == len(photos)

    other = dict(card, card={**card["card"], "base_model": "resnet101"})
    (tmp_path / "feats.card.json").write_text(json.dumps(other))
    _one_error_line(_invoke(runner, "index", "--from", feats, "--append", grown), 2,
                    "resnet101", "cannot be compared")
    (tmp_path / "feats.card.json").unlink()
    _one_error_line(_invoke(runner, "index", "--from", feats, "-o", tmp_path / "x.index"), 2,
                    "feats.card.json")


def test_index_bad_inputs_are_one_line(runner, tmp_path: Path, built: Path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty"
    empty.mkdir()
    make_image(tmp_path / "a.png")
    _one_error_line(_invoke(runner, "index", tmp_path / "a.png", "-o", built), 1,
                    "already exists")
    _one_error_line(_invoke(runner, "index", tmp_path / "a.png"), 2, "-o NAME.index")
    result = _invoke(runner, "index", empty, "-o", tmp_path / "n.index", "--weights", "none")
    assert result.exit_code == 2 and "no images" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_index_of_random_weights_cannot_be_searched_or_appended(runner, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                   photo_dir: Path) -> None:
    feats = tmp_path / "rand.npy"
    np.save(feats, np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32))
    (tmp_path / "rand.paths.txt").write_text("a.jpg\nb.jpg\n")
    card = {"weights": "none", "pooling": "avg", "layer": "conv5_block3_out",
            "resize": "crop", "card": {"base_model": "resnet50", "image_size": 32,
                                       "preprocess_mode": "caffe", "include_top": False}}
    (tmp_path / "rand.card.json").write_text(json.dumps(card))
    index = tmp_path / "rand.index"
    result = _invoke(runner, "index", "--from", feats, "-o", index, "-q")
    assert result.exit_code == 0, result.stderr
    query = sorted(photo_dir.glob("*.jpg"))[0]
    _one_error_line(_invoke(runner, "search", query, "--index", index), 2, "--weights none")
    _one_error_line(_invoke(runner, "index", query, "--append", index), 2, "--weights none")
    _one_error_line(_invoke(runner, "index", "--from", feats, "--append", index), 2,
                    "--weights none")
