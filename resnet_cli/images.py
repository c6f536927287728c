"""Finding input images and turning each file into a size x size RGB uint8 array.

The rules here are shared by every command: files are recognised by content (Pillow), EXIF
orientation is applied, every pixel mode becomes RGB correctly, and huge or hostile files are
refused with an `ImageError` instead of taking the batch down.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
import sys
import warnings
from collections.abc import Callable, Iterable
from enum import Enum
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, TextIO

from resnet_cli.errors import ImageError, NoInputsError
from resnet_cli.remote import is_url

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
     ".ppm", ".pgm", ".pbm"}
)
CROP_FRACTION = 0.875  # ImageNet evaluation: resize to size/0.875, centre-crop size
_GLOB_CHARS = frozenset("*?[")


class ResizeMode(str, Enum):
    """How an image is brought to size x size."""

    crop = "crop"  # shorter side to size/0.875, centre crop (ImageNet evaluation protocol)
    squash = "squash"  # straight bilinear resize, exactly like keras.utils.load_img


def collect_inputs(
    args: Iterable[str],
    *,
    recursive: bool = False,
    stdin: TextIO | None = None,
    on_empty: Callable[[str], None] | None = None,
) -> list[str]:
    """Expand files, directories, glob patterns and `-` (paths on stdin) into a list of paths.

    URLs (`s3://bucket/prefix/`, `gs://b/*.jpg`, `https://...`) are expanded the same way,
    remotely (see `remote.expand_url`).

    Explicit files are kept whatever their extension (content decides later); directories
    contribute their image files, chosen by extension. A path that does not exist stays in the
    list, so it is reported as a failed input in its place. A folder or pattern that yields no
    image is passed to `on_empty` (the command line warns about it).

    Raises:
        NoInputsError: nothing at all was named.
    """
    paths: list[str] = []
    for arg in args:
        if arg == "-":
            source = stdin if stdin is not None else sys.stdin
            paths.extend(line.strip() for line in source if line.strip())
            continue
        path = Path(arg)
        if is_url(arg):  # s3://, gs://, https://...: a prefix or pattern is listed remotely
            from resnet_cli.remote import expand_url

            listed = expand_url(arg, recursive=recursive, extensions=IMAGE_EXTENSIONS)
            if listed is None:
                paths.append(arg)
                continue
            found = listed
        elif path.is_dir():
            found = _images_in_dir(path, recursive=recursive)
        elif not path.exists() and _GLOB_CHARS & set(arg):
            found = []
            for match in sorted(glob.glob(arg, recursive=True)):
                if Path(match).is_dir():
                    found.extend(_images_in_dir(Path(match), recursive=recursive))
                else:
                    found.append(match)
        else:
            paths.append(arg)
            continue
        if not found and on_empty is not None:
            on_empty(arg)
        paths.extend(found)
    if not paths:
        raise NoInputsError("No images found in the given inputs.")
    return paths


def _images_in_dir(folder: Path, *, recursive: bool) -> list[str]:
    """The image files of `folder`, by extension; entries that are neither files nor folders
    (FIFOs, sockets, devices) are kept, so that each is reported rather than silently left
    out. Hidden files and folders are skipped."""
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        str(p) for p in entries
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def open_regular_file(path: str) -> IO[bytes]:
    """Open `path` for reading, refusing anything but a regular file without ever blocking.

    A FIFO named like a photo would block a plain open() until a writer appears: the file is
    opened non-blocking, checked on the open descriptor (no race with a rename), and only then
    handed over as an ordinary blocking file.

    Raises:
        ImageError: no such file, permission denied, a directory, or not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as exc:
        raise ImageError(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ImageError(path, "is a directory")
        if not stat.S_ISREG(mode):
            raise ImageError(path, "not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_image(path: str, *, size: int, resize: ResizeMode = ResizeMode.crop) -> np.ndarray:
    """Read `path` (or a URL: `remote.read_url`) and return a (size, size, 3) uint8 RGB array.

    Raises:
        ImageError: the file is missing, unreadable, not an image, or too large to decode safely.
    """
    if is_url(path):
        from resnet_cli.remote import read_url

        return decode_image(read_url(path), name=path, size=size, resize=resize)
    return _decode(lambda: open_regular_file(path), path, size=size, resize=resize)


def decode_image(data: bytes | memoryview, *, name: str, size: int,
                 resize: ResizeMode = ResizeMode.crop, max_pixels: int | None = None
                 ) -> np.ndarray:
    """`load_image` for an image already in memory (an upload, an object read from a bucket):
    the same checks, decoding and resizing; `name` is what errors call it. `max_pixels`
    lowers Pillow's limit on width x height.

    Raises:
        ImageError: empty, not an image, or too large to decode safely.
    """
    import io

    if not data:
        raise ImageError(name, "empty file")
    return _decode(lambda: io.BytesIO(data), name, size=size, resize=resize,
                   max_pixels=max_pixels)


def _decode(opener: Callable[[], IO[bytes]], name: str, *, size: int,
            resize: ResizeMode, max_pixels: int | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves at least the pixels
    # the crop needs: several times faster on large photos.
    need = int(size / CROP_FRACTION) + 1
    try:
        rgb = _read_upright(opener, name, lambda w, h: (need, need)
                            if resize is ResizeMode.crop else None, max_pixels=max_pixels)
        return _resize(rgb, size, resize)
    except UnidentifiedImageError:
        raise ImageError(name, "not an image Pillow can read") from None
    except Image.DecompressionBombError:
        raise ImageError(
            name, f"too many pixels (over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(name, f"cannot decode: {exc}") from None


def load_upright_rgb(path: str, *, draft: Callable[[int, int], tuple[int, int]],
                     purpose: str) -> Image.Image:
    """The image at `path` read again to draw it (reports, heatmap overlays): RGB and upright
    (EXIF), at its own size, except that a JPEG decodes at 1/2, 1/4 or 1/8 scale when that
    still leaves the (width, height) that `draft(width, height)` asks for.

    Raises:
        ImageError: it can no longer be read ("cannot read it again `purpose`: ...").
    """
    from PIL import Image

    try:
        return _read_upright(lambda: open_regular_file(path), path, draft)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(path, f"cannot read it again {purpose}: {exc}") from None


def _read_upright(opener: Callable[[], IO[bytes]], name: str,
                  draft: Callable[[int, int], tuple[int, int] | None],
                  max_pixels: int | None = None) -> Image.Image:
    """Open the image (`opener`: a regular file only, or bytes in memory), refuse
    decompression bombs, let a JPEG decode at a reduced scale when `draft(width, height)`
    names a size, apply EXIF orientation, convert to RGB. Pillow's and the OS's exceptions
    pass through; `ImageError` for non-files."""
    from PIL import Image

    _quiet_pillow_bomb_warning()
    with opener() as handle, Image.open(handle) as img:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and img.width * img.height > limit:
            raise Image.DecompressionBombError(name)
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageError(name, f"too many pixels ({img.width}x{img.height}; at most "
                                   f"{max_pixels:,} are decoded here)")
        wanted = draft(img.width, img.height) if img.format == "JPEG" else None
        if wanted is not None:
            img.draft("RGB", wanted)
        img.load()
        return to_rgb(_exif_transpose(img))


@cache
def _quiet_pillow_bomb_warning() -> None:
    # load_image refuses anything over MAX_IMAGE_PIXELS itself; Pillow's own warning for the
    # same condition would only repeat that on stderr. (warnings.catch_warnings is not
    # thread-safe, and images are decoded on worker threads.)
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _exif_transpose(img: Image.Image) -> Image.Image:
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # a malformed EXIF block must not cost the picture
        log.debug("ignoring bad EXIF in %s: %s", img.filename if hasattr(img, "filename") else "?",
                  exc)
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    High-bit-depth greyscale is scaled to 0..255 (a plain convert would clip it to white), and
    transparent pixels are composited onto white.
    """
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _scale_to_l(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _scale_to_l(img: Image.Image) -> Image.Image:
    import numpy as np
    from PIL import Image

    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        peak = 65535.0
    else:
        top = float(arr.max()) if arr.size else 0.0
        if img.mode == "F" and top <= 1.0:
            peak = 1.0
        elif top <= 255:
            peak = 255.0
        elif top <= 65535:
            peak = 65535.0
        else:
            peak = top
    scaled = np.clip(arr * (255.0 / peak), 0, 255)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def _resize(img: Image.Image, size: int, mode: ResizeMode) -> np.ndarray:
    import numpy as np
    from PIL import Image

    if mode is ResizeMode.squash:
        out = img.resize((size, size), Image.Resampling.BILINEAR)
    else:
        # Resample straight from the centre box of the original: the same pixels as resizing
        # the shorter side to size/0.875 then cropping, without ever materialising the big
        # intermediate (a 1 x 100000 strip would otherwise become gigapixels).
        width, height = img.size
        side = min(width, height) * CROP_FRACTION
        left, top = (width - side) / 2, (height - side) / 2
        out = img.resize((size, size), Image.Resampling.BILINEAR,
                         box=(left, top, left + side, top + side))
    return np.asarray(out, dtype=np.uint8)
