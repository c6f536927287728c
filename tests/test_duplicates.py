"""`resnet duplicates`: copy groups from perceptual hashes of real photo copies, near groups
from planted feature rows (--from), the removal list, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_copies import write_copies

from resnet_cli.cli import app

CARD = {"format": "resnet-features", "version": 1, "weights": "imagenet", "pooling": "avg",
        "layer": "conv5_block3_out", "resize": "crop", "l2_normalize": False,
        "card": {"base_model": "resnet50", "image_size": 224, "preprocess_mode": "caffe",
                 "include_top": False}}


@pytest.fixture(scope="module")
def copies(sample_photos: list[Path], tmp_path_factory: pytest.TempPathFactory
           ) -> list[dict[str, Path]]:
    folder = tmp_path_factory.mktemp("dupes")
    return [write_copies(p, folder) for p in sample_photos]


def _planted_features(copies: list[dict[str, Path]], folder: Path) -> Path:
    """Rows for every file: random, except that the first two photos' originals are near
    duplicates (cosine about 0.99) and every copy is far from its original in features (so
    copy groups can only come from the hash)."""
    rng = np.random.default_rng(0)
    paths = [str(p) for files in copies for p in files.values()]
    rows = rng.standard_normal((len(paths), 128)).astype(np.float32)
    first, second = paths.index(str(copies[0]["orig"])), paths.index(str(copies[1]["orig"]))
    rows[second] = rows[first] + 0.1 * rng.standard_normal(128)
    feats = folder / "feats.npy"
    np.save(feats, rows)
    (folder / "feats.paths.txt").write_text("".join(p + "\n" for p in paths))
    (folder / "feats.card.json").write_text(json.dumps(CARD))
    return feats


def test_copies_and_near_duplicates_from_features(copies: list[dict[str, Path]], runner,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    feats = _planted_features(copies, tmp_path)
    removal = tmp_path / "remove.txt"
    result = runner.invoke(app, ["duplicates", "--from", str(feats), "--format", "json",
                                 "--threshold", "0.95", "--remove-list", str(removal),
                                 "--keep", "largest", "--html", str(tmp_path / "d.html")])
    assert result.exit_code == 0, result.stderr
    groups = json.loads(result.stdout)
    copy_groups = [g for g in groups if g["kind"] == "copy"]
    near = [g for g in groups if g["kind"] == "near"]
    assert sorted(sorted(g["paths"]) for g in copy_groups) == sorted(
        sorted(str(p) for p in files.values()) for files in copies)
    for g in copy_groups:
        assert 1 - 14 / 64 <= g["similarity"] <= 1
    assert len(near) == 1
    assert sorted(near[0]["paths"]) == sorted([str(copies[0]["orig"]), str(copies[1]["orig"])])
    assert near[0]["similarity"] >= 0.95
    removed = removal.read_text().splitlines()
    # each copy group keeps its original (the largest; it ties q30 and comes first), and the
    # near pair keeps the larger of its two originals
    pair = [copies[0]["orig"], copies[1]["orig"]]
    smaller = min(pair, key=lambda p: Image.open(p).width * Image.open(p).height)
    originals = {str(f["orig"]) for f in copies}
    assert len(removed) == 3 * len(copies) + 1
    assert originals & set(removed) == {str(smaller)}
    page = (tmp_path / "d.html").read_text()
    assert "Copies (5)" in page and "Near duplicates (1)" in page


def test_folder_with_random_weights_finds_copies_only(copies: list[dict[str, Path]], runner,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    folder = copies[0]["orig"].parent
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    result = runner.invoke(app, ["duplicates", str(folder), str(tmp_path / "broken.jpg"),
                                 "--weights", "none", "-f", "csv", "--remove-list",
                                 str(tmp_path / "r.txt")])
    assert result.exit_code == 1  # the unreadable file
    assert "warning: random weights: near duplicates are not searched" in result.stderr
    assert f"error: {tmp_path / 'broken.jpg'}:" in result.stderr
    rows = result.stdout.splitlines()
    assert rows[0] == "group,kind,similarity,path"
    assert len(rows) == 1 + 4 * len(copies) and all(",copy," in r for r in rows[1:])
    removed = (tmp_path / "r.txt").read_text().splitlines()
    assert len(removed) == 3 * len(copies)


def test_bad_inputs(runner, tmp_path: Path, copies: list[dict[str, Path]]) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["duplicates", str(copies[0]["orig"]), "--index",
                                 str(tmp_path)])
    assert result.exit_code == 2 and "not more than one" in result.stderr
    result = runner.invoke(app, ["duplicates", "--from", str(tmp_path / "missing.npy")])
    assert result.exit_code == 2 and "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_extra_is_one_line_naming_it(copies: list[dict[str, Path]]) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'imagehash': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from resnet_cli.cli import app\n"
        f"app(args=['duplicates', {str(copies[0]['orig'])!r}, '--weights', 'none'],"
        " prog_name='resnet')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: Finding copies needs imagehash: pip install " \
                                  "'resnet-cli[data]'"
