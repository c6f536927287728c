"""Synthesised photos: photo-like JPEGs (smooth at large scale, noisy at pixel scale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_cli.errors import UsageError
from resnet_cli.images import load_image
from resnet_cli.photos import UNIQUE_PHOTOS, parse_photo_size, photo_like, synthesize_photos


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
