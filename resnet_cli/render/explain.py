"""What `resnet explain` writes: one overlay PNG per image, `heatmaps.npz`, and a summary line.

Each PNG shows the photo at its own aspect ratio with the heatmap blended over the part of it
the model saw (the centre square with `--resize crop`, the whole photo with `squash`), a
colour bar, and the class and probability as the title; with `--top-k K` the K classes are K
panels of one figure. matplotlib (Agg) is imported inside the functions that draw, so the
command line starts as fast without it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_cli.errors import ImageError, OutputError
from resnet_cli.images import CROP_FRACTION, ResizeMode, load_upright_rgb
from resnet_cli.outputs import atomic_path, check_creatable, make_folder

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from resnet_cli.explain import ExplainSetup, Explanation
    from resnet_cli.loaded import FailureHandler

NPZ_NAME = "heatmaps.npz"
DISPLAY_SIDE = 640  # pixels of the longer side of each photo panel
COLORMAP = "turbo"
PNG_COMPRESS_LEVEL = 1
DPI = 100
TITLE_CHAR_PX = 11  # average width of a 13 pt bold character at 100 dpi, for truncating
CAPTION_CHAR_PX = 5.6  # the same for the 9 pt caption
PENDING_PNGS = 8  # explanations waiting for the drawing thread before the model waits too


@dataclass(frozen=True)
class ExplainSummary:
    """What an explain run wrote."""

    folder: Path
    pngs: int
    failed: int
    layer: str
    map_size: tuple[int, int]
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.pngs / self.seconds if self.seconds > 0 else 0.0


def png_names(paths: Sequence[str]) -> list[str]:
    """`<stem>.png` for each input, in input order; a stem seen before gets `-2`, `-3`, ...
    (compared case-insensitively, for file systems that do)."""
    used: set[str] = {Path(NPZ_NAME).stem.casefold()}
    names = []
    for path in paths:
        stem = Path(path).stem or "image"
        name, n = stem, 1
        while name.casefold() in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name.casefold())
        names.append(f"{name}.png")
    return names


def check_folder(folder: Path, names: Sequence[str], *, overwrite: bool) -> None:
    """Fail early, before any work, if `folder` (created later when missing) cannot take the
    outputs, or already holds outputs of the same names and not `overwrite`.

    Raises:
        OutputError: a file in the way, a folder that cannot be written, or outputs exist.
    """
    check_creatable(folder)
    if not folder.exists():
        return
    existing = [name for name in [*names, NPZ_NAME] if (folder / name).exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        verb = "exist" if more else "exists"
        raise OutputError(f"{folder / existing[0]}{more} already {verb}; pass --overwrite to "
                          "replace them.")


def write_explanations(
    explanations: Iterable[Explanation],
    setup: ExplainSetup,
    folder: Path,
    names: Sequence[str],
    *,
    alpha: float = 0.5,
    on_failure: FailureHandler | None = None,
) -> ExplainSummary:
    """Write one overlay PNG per explained image (`names`, aligned with the inputs) and then
    `heatmaps.npz` into `folder` (created when missing), all atomically; returns what was
    written.

    The npz holds one row per (image, explained class), in input order: `paths`, `png`,
    `rank`, `class_index`, `label`, `probability`, and `heatmaps` float32 (rows, h, w) in
    [0, 1]. PNGs are drawn on a thread of their own while the model works on the next batch.
    A photo that can no longer be read when it is drawn goes to `on_failure`.
    """
    import numpy as np

    start = time.perf_counter()
    make_folder(folder)
    rows: dict[str, list[Any]] = {key: [] for key in
                                  ("paths", "png", "rank", "class_index", "label",
                                   "probability")}
    heatmaps: list[np.ndarray] = []
    pngs = failed = 0
    with _drawing_thread() as draw:
        for explanation, name in zip(explanations, names, strict=True):
            if not explanation.ok:
                failed += 1
                continue
            draw(render_overlay, explanation, folder / name, layer=setup.layer,
                 resize=setup.resize, alpha=alpha)
            pngs += 1
            for cls in explanation.classes:
                for key, value in (("paths", explanation.path), ("png", name),
                                   ("rank", cls.rank), ("class_index", cls.index),
                                   ("label", cls.label), ("probability", cls.probability)):
                    rows[key].append(value)
                heatmaps.append(cls.heatmap)
        errors = draw.errors
    for error in errors:
        pngs, failed = pngs - 1, failed + 1
        if on_failure is not None:
            on_failure(error)
    arrays = {
        "paths": np.array(rows["paths"], dtype=str), "png": np.array(rows["png"], dtype=str),
        "rank": np.array(rows["rank"], dtype=np.int32),
        "class_index": np.array(rows["class_index"], dtype=np.int64),
        "label": np.array(rows["label"], dtype=str),
        "probability": np.array(rows["probability"], dtype=np.float32),
        "heatmaps": np.stack(heatmaps).astype(np.float32) if heatmaps else
        np.zeros((0, *setup.map_size), dtype=np.float32),
    }
    with atomic_path(folder / NPZ_NAME) as tmp:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
    return ExplainSummary(folder=folder, pngs=pngs, failed=failed, layer=setup.layer,
                          map_size=setup.map_size, seconds=time.perf_counter() - start)


class _Drawer:
    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.pending: list[Future[None]] = []
        self.errors: list[ImageError] = []

    def __call__(self, function: Any, *args: Any, **kwargs: Any) -> None:
        if len(self.pending) >= PENDING_PNGS:
            self._collect(self.pending.pop(0))
        self.pending.append(self.pool.submit(function, *args, **kwargs))

    def _collect(self, future: Future[None]) -> None:
        try:
            future.result()
        except ImageError as exc:
            self.errors.append(exc)

    def finish(self) -> None:
        while self.pending:
            self._collect(self.pending.pop(0))


@contextmanager
def _drawing_thread() -> Iterator[_Drawer]:
    """A single drawing thread: matplotlib runs while TensorFlow (which releases the GIL)
    computes the next batch. Its errors surface in order; pending drawings are cancelled if
    the run stops early."""
    from resnet_cli.inference import lowest_priority

    # At the lowest priority, like the decode threads (see inference): a thread that takes a
    # core in the middle of a TensorFlow operation holds up all of its threads.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="draw",
                            initializer=lowest_priority) as pool:
        drawer = _Drawer(pool)
        try:
            yield drawer
            drawer.finish()
        finally:
            for future in drawer.pending:
                future.cancel()


def render_overlay(explanation: Explanation, out: Path, *, layer: str,
                   resize: ResizeMode = ResizeMode.crop, alpha: float = 0.5) -> None:
    """Draw the photo with each explained class's heatmap blended over the region the model
    saw (outlined when it is a crop), a colour bar, and the label and probability as titles,
    and write it to `out` (PNG, atomically).

    The overlays are composed at the size they are shown and placed pixel for pixel, so
    matplotlib resamples nothing and draws no axes: it lays out the pictures and the text.

    Raises:
        ImageError: the photo can no longer be read.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    photo = read_photo(explanation.path, max_side=DISPLAY_SIDE)
    width, height = photo.size
    region = model_region(width, height, resize)
    panels = [_blend(photo, cls.heatmap, region, alpha) for cls in explanation.classes]
    # Pixels around the panels: titles above, a caption below, the colour bar on the right.
    above, below, gap, bar, right = 44, 34, 16, 16, 96
    fig_w = gap + len(panels) * (width + gap) + bar + right
    fig_h = above + height + below
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    for i, (panel, cls) in enumerate(zip(panels, explanation.classes, strict=True)):
        x = gap + i * (width + gap)
        fig.figimage(panel, xo=x, yo=below, origin="upper")
        rank = f"#{cls.rank}  " if len(panels) > 1 else ""
        percent = _percent(cls.probability)
        room = int(width / TITLE_CHAR_PX) - len(rank) - len(percent) - 2
        fig.text(x / fig_w, (below + height + 10) / fig_h,
                 f"{rank}{_short(_words(cls.label), max(room, 8))}  {percent}",
                 fontsize=13, fontweight="bold", ha="left", va="bottom")
    note = f"{Path(explanation.path).name}  ·  Grad-CAM at {layer}"
    if explanation.classes and explanation.classes[0].index != explanation.top_index:
        note += (f"  ·  top prediction: {_short(_words(explanation.top_label))} "
                 f"{_percent(explanation.top_probability)}")
    fig.text(gap / fig_w, 10 / fig_h, _short(note, int((fig_w - gap) / CAPTION_CHAR_PX)),
             fontsize=9, color="#555555", ha="left", va="bottom")
    bar_x = fig_w - right - bar
    fig.figimage(_colour_bar(height, bar), xo=bar_x, yo=below, origin="upper")
    for value in (0.0, 0.5, 1.0):
        fig.text((bar_x + bar + 5) / fig_w, (below + value * (height - 1)) / fig_h,
                 f"{value:g}", fontsize=8, va="center", ha="left")
    fig.text((bar_x + bar + 34) / fig_w, (below + height / 2) / fig_h,
             "class evidence (relative)", fontsize=8, rotation=90, va="center", ha="left")
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[no-untyped-call]
    picture = Image.fromarray(rgba[..., :3])
    with atomic_path(out) as tmp:
        # A fast zlib level: at the default one, encoding the PNG costs more than drawing it.
        picture.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _blend(photo: Image.Image, heatmap: np.ndarray, region: tuple[float, float, float, float],
           alpha: float) -> np.ndarray:
    """The photo (uint8 RGB) with `heatmap`, upsampled smoothly, coloured and blended over
    `region` (left, top, width, height), and a dashed white outline when it is a crop."""
    import numpy as np
    from PIL import Image

    pixels = np.array(photo, dtype=np.float32)
    height, width = pixels.shape[:2]
    left, top, side_x, side_y = region
    x0, y0 = round(left), round(top)
    x1, y1 = min(width, round(left + side_x)), min(height, round(top + side_y))
    smooth = Image.fromarray(np.asarray(heatmap, np.float32), mode="F").resize(
        (x1 - x0, y1 - y0), Image.Resampling.BICUBIC)
    levels = np.clip(np.asarray(smooth) * 255 + 0.5, 0, 255).astype(np.uint8)
    inside = pixels[y0:y1, x0:x1]
    pixels[y0:y1, x0:x1] = (1 - alpha) * inside + alpha * _colour_table()[levels]
    out: np.ndarray = np.clip(pixels + 0.5, 0, 255).astype(np.uint8)
    if (x1 - x0, y1 - y0) != (width, height):  # a crop: outline what the model saw
        dash = (np.arange(max(width, height)) // 5) % 2 == 0
        for y in (y0, y1 - 1):
            out[y, x0:x1][dash[x0:x1]] = 255
        for x in (x0, x1 - 1):
            out[y0:y1, x][dash[y0:y1]] = 255
    return out


@cache
def _colour_table() -> np.ndarray:
    """The colour map as 256 RGB rows, float32 in 0..255."""
    import numpy as np
    from matplotlib import colormaps

    return np.asarray(colormaps[COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255, np.float32)


def _colour_bar(height: int, width: int) -> np.ndarray:
    """A vertical strip of the colour map, 1 at the top, in a thin dark frame."""
    import numpy as np

    levels = np.linspace(255, 0, height).round().astype(np.int64)
    strip = np.repeat(_colour_table()[levels][:, None, :], width, axis=1).astype(np.uint8)
    strip[[0, -1], :] = 60
    strip[:, [0, -1]] = 60
    return strip


def _percent(p: float) -> str:
    """12.3%, or two significant digits below 0.1% (a 0.0% class still has a heatmap)."""
    return f"{p:.1%}" if p >= 0.001 or p <= 0 else f"{p * 100:.2g}%"


def _words(label: str) -> str:
    return label.replace("_", " ")  # ImageNet names: great_white_shark


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def model_region(width: int, height: int, resize: ResizeMode
                 ) -> tuple[float, float, float, float]:
    """(left, top, width, height) of the part of a `width` x `height` photo that the model's
    input square shows: the centre crop (`images.load_image`'s box) or the whole photo."""
    if resize is ResizeMode.squash:
        return 0.0, 0.0, float(width), float(height)
    side = min(width, height) * CROP_FRACTION
    return (width - side) / 2, (height - side) / 2, side, side


def read_photo(path: str, *, max_side: int) -> Image.Image:
    """The photo at `path` as RGB, upright (EXIF), scaled to `max_side` pixels on its longer
    side (small pictures are enlarged, so that the titles fit).

    Raises:
        ImageError: it can no longer be read.
    """
    from PIL import Image

    def draft(width: int, height: int) -> tuple[int, int]:
        scale = max_side / max(width, height)
        return int(width * scale) + 1, int(height * scale) + 1

    rgb = load_upright_rgb(path, draft=draft, purpose="to draw it")
    scale = max_side / max(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    # Pillow's bilinear filter widens with the scale, so it does not alias when it shrinks.
    return rgb.resize(size, Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC)


def explain_line(summary: ExplainSummary) -> str:
    """The one line `resnet explain` prints on stderr when it is done."""
    h, w = summary.map_size
    return (f"{summary.pngs} heatmaps ({h}x{w}, {summary.layer}) -> {summary.folder}/ "
            f"(*.png, {NPZ_NAME}; {summary.failed} failed, {summary.seconds:.1f} s, "
            f"{summary.images_per_second:.1f} img/s)")
