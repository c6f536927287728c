"""similarity.copies: perceptual hashes of real photos and of their real copies (resized,
JPEG quality 30, 4% cropped), and the Hamming pairs between them."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_cli.errors import ImageError
from resnet_cli.similarity.copies import (
    DEFAULT_COPY_BITS,
    hash_pairs,
    hash_paths,
    perceptual_hash,
)

COPY_KINDS = ("resized", "q30", "crop4")


def write_copies(photo: Path, folder: Path) -> dict[str, Path]:
    """The photo (re-saved) and its three copies in `folder`."""
    image = Image.open(photo).convert("RGB")
    w, h = image.size
    dx, dy = round(w * 0.02), round(h * 0.02)
    out = {"orig": folder / f"{photo.stem}_orig.jpg", "resized": folder / f"{photo.stem}_r.png",
           "q30": folder / f"{photo.stem}_q30.jpg", "crop4": folder / f"{photo.stem}_c.jpg"}
    image.save(out["orig"], quality=95)
    image.resize((w // 2, h // 2), Image.Resampling.LANCZOS).save(out["resized"])
    image.save(out["q30"], quality=30)
    image.crop((dx, dy, w - dx, h - dy)).save(out["crop4"], quality=90)
    return out


@pytest.fixture(scope="session")
def copy_set(sample_photos: list[Path], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("copies")
    return {p.stem: write_copies(p, folder) for p in sample_photos}


def _bits(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(a ^ b).sum())


def test_copies_are_within_the_threshold_and_photos_far_apart(
        copy_set: dict[str, dict[str, Path]]) -> None:
    hashes = {stem: {k: perceptual_hash(str(p)) for k, p in files.items()}
              for stem, files in copy_set.items()}
    for stem, h in hashes.items():
        for kind in COPY_KINDS:
            assert _bits(h["orig"], h[kind]) <= DEFAULT_COPY_BITS, (stem, kind)
    for a, b in itertools.combinations(hashes, 2):
        assert _bits(hashes[a]["orig"], hashes[b]["orig"]) > DEFAULT_COPY_BITS + 4, (a, b)


def test_hash_pairs_pair_each_photo_with_its_copies_only(
        copy_set: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a picture")
    paths = [str(p) for files in copy_set.values() for p in files.values()]
    failures: list[ImageError] = []
    hashes, kept = hash_paths([*paths, str(bad)], on_failure=failures.append)
    assert kept == list(range(len(paths)))
    assert [f.path for f in failures] == [str(bad)]
    i, j, sim = hash_pairs(hashes, DEFAULT_COPY_BITS)
    stem = [Path(p).name.rsplit("_", 1)[0] for p in paths]
    found = {(a, b) for a, b in zip(i.tolist(), j.tolist(), strict=True)}
    assert all(stem[a] == stem[b] for a, b in found)
    originals = [k for k, p in enumerate(paths) if p.endswith("_orig.jpg")]
    for o in originals:
        partners = {b for a, b in found if a == o} | {a for a, b in found if b == o}
        assert len(partners) == 3  # its three copies
    assert np.all((sim >= 1 - DEFAULT_COPY_BITS / 64) & (sim <= 1))
