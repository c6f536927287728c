"""Photo-like JPEGs made on the spot: what `resnet benchmark` times when given no images.

Smooth colour fields, soft shapes and sensor-like noise make their decode cost close to that
of real photographs of the same size, unlike flat or pure-noise pictures.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from resnet_cli.errors import UsageError

DEFAULT_PHOTO_SIZE = (1920, 1080)
PHOTO_QUALITY = 90
UNIQUE_PHOTOS = 8  # synthesised photos are this many distinct pictures, copied to the count


def synthesize_photos(folder: Path, count: int, *, size: tuple[int, int] = DEFAULT_PHOTO_SIZE,
                      seed: int = 0, quality: int = PHOTO_QUALITY, progress: bool = False
                      ) -> list[Path]:
    """Write `count` photo-like JPEGs (smooth colour fields, soft shapes, sensor-like noise).

    Their decode cost is close to real photographs of the same size, unlike flat or pure-noise
    pictures. `UNIQUE_PHOTOS` distinct pictures are drawn and copied up to `count` files.
    """
    from resnet_cli.progress import progress_bar

    paths = [folder / f"photo_{i:04d}.jpg" for i in range(count)]
    unique = min(count, UNIQUE_PHOTOS)
    with progress_bar(total=count, desc="synthesising photos", enabled=progress,
                      unit="img") as bar:
        for i, path in enumerate(paths):
            if i < unique:
                photo_like(size, seed=seed + i).save(path, format="JPEG", quality=quality)
            else:
                shutil.copyfile(paths[i % unique], path)
            bar.update(1)
    return paths


def photo_like(size: tuple[int, int], *, seed: int = 0) -> Any:
    """One photo-like RGB Pillow image of `size` (width, height)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    width, height = size
    # Smooth lighting and colour: a coarse random grid, upsampled bicubically.
    grid = rng.uniform(20, 235, (3, 4, 3)).astype(np.uint8)
    img = Image.fromarray(grid, "RGB").resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    scale = min(width, height)
    for _ in range(int(rng.integers(8, 16))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.03, 0.25) * scale
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse((x - r, y - r * rng.uniform(0.4, 1), x + r, y + r), fill=colour)
        elif shape == 1:
            draw.rectangle((x - r, y - r / 2, x + r, y + r / 2), fill=colour)
        else:
            points = [(x + r * math.cos(a), y + r * math.sin(a))
                      for a in np.sort(rng.uniform(0, 2 * math.pi, 5))]
            draw.polygon(points, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, scale / 500)))
    # Texture and sensor noise: what makes a photograph's JPEG costly to decode.
    pixels = np.asarray(img, dtype=np.float32)
    fine = rng.standard_normal((height, width, 1), dtype=np.float32) * 5.0
    colour_noise = rng.standard_normal((height, width, 3), dtype=np.float32) * 2.0
    pixels = np.clip(pixels + fine + colour_noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def parse_photo_size(text: str) -> tuple[int, int]:
    """"1920x1080" -> (1920, 1080).

    Raises:
        UsageError: not WIDTHxHEIGHT.
    """
    width, sep, height = text.lower().replace(" ", "").partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise UsageError(f"--photo-size must be WIDTHxHEIGHT, e.g. 1920x1080; got '{text}'.")
    return int(width), int(height)
