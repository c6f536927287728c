"""`resnet evaluate --report DIR`: one self-contained HTML page and the confusion-matrix picture.

`DIR/index.html` embeds every picture as a `data:` URI and carries its own stylesheet, so it
opens from disk, or as a mail attachment, with no network and no other file. Beside it go
`confusion_matrix.png` and, for a model from a finetune run folder, a copy of that run's
`curves.png` (both embedded in the page as well). DIR is created when missing; the files of
these names in it are replaced, each atomically, and nothing else there is touched. The
confusion-matrix picture is drawn in `confusion`.

matplotlib (Agg) and Pillow are imported inside the functions that draw, so the command line
starts as fast without them.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_cli.errors import ImageError
from resnet_cli.images import load_upright_rgb
from resnet_cli.outputs import atomic_path, check_creatable, make_folder
from resnet_cli.render.confusion import (
    GRID_MAX_COLUMNS,
    PAIRS_SHOWN,
    confused_pairs,
    draw_confusion,
)
from resnet_cli.render.curves import CURVES_NAME

if TYPE_CHECKING:

    from resnet_cli.results import Evaluation

INDEX_NAME = "index.html"
MATRIX_NAME = "confusion_matrix.png"
PAIRS_LISTED = 10  # most confused pairs in the page below a labelled grid (it shows all)
GALLERY_MAX = 100  # thumbnails in the page at most (each is some 20-60 kB of base64)
THUMB_SIDE = 192  # pixels of a thumbnail's longer side (shown at 160 CSS pixels)
SMALL_THUMB = 96  # thumbnails smaller than this are enlarged with visible pixels, not blurred


def check_report_dir(folder: Path) -> None:
    """Fail early, before any work, if `folder` (created later when missing) cannot take the
    report.

    Raises:
        OutputError: a file in the way, or a folder that cannot be written.
    """
    check_creatable(folder)


def run_curves(weights: str) -> Path | None:
    """`curves.png` of the finetune run folder that the `--weights` file is in, if any."""
    path = Path(weights)
    curves = path.parent / CURVES_NAME
    return curves if path.is_file() and curves.is_file() else None


def write_report(result: Evaluation, folder: Path, *, curves: Path | None = None) -> Path:
    """Write `index.html` and `confusion_matrix.png` (and a copy of `curves`, when given)
    into `folder`, created when missing; returns the path of `index.html`.

    Thumbnails of the mistakes (the first 100) are read again from their files; one that
    can no longer be read is shown as a note instead.

    Raises:
        OutputError: the folder or a file cannot be written.
    """
    make_folder(folder)
    matrix = draw_confusion(result)
    _write_bytes(folder / MATRIX_NAME, matrix)
    curves_png = None
    if curves is not None:
        with contextlib.suppress(OSError):  # a run folder that changed under us: no curves
            curves_png = curves.read_bytes()
        if curves_png is not None:
            _write_bytes(folder / CURVES_NAME, curves_png)
    page = build_report_html(result, matrix_png=matrix, curves_png=curves_png)
    index = folder / INDEX_NAME
    _write_bytes(index, page.encode("utf-8"))
    return index


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ----- the page ---------------------------------------------------------------------------

def build_report_html(result: Evaluation, *, matrix_png: bytes,
                      curves_png: bytes | None = None) -> str:
    """The report as one HTML document. Every value from the data (paths, class names) is
    escaped; numbers carry their exact value in a `data-value` attribute.

    Args:
        matrix_png: the confusion-matrix picture (`confusion.draw_confusion`).
        curves_png: the training curves of the model's run, if any.

    The thumbnails of the mistakes are read from their files (None where unreadable).
    """
    thumbnails = {m.path: _try_thumbnail(m.path) for m in result.mistakes[:GALLERY_MAX]}
    e = _escape
    title = f"{result.model} on {result.dataset}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>resnet evaluate: {e(title)}</title>",
        f"<style>{STYLE}</style></head><body><main>",
        "<header><h1>Evaluation report</h1>",
        f'<p class="sub"><span class="mono">{e(result.model)}</span> on '
        f'<span class="mono">{e(result.dataset)}</span></p></header>',
        _headline(result),
        _setup_table(result),
    ]
    if curves_png is not None:
        parts += ['<section id="curves"><h2>Training curves</h2>',
                  '<p class="note">From the run folder of the model '
                  f'(<a href="{CURVES_NAME}">{CURVES_NAME}</a>).</p>',
                  f'<img class="wide" alt="training curves" src="{_data_uri(curves_png)}">',
                  "</section>"]
    parts += [_confusion_section(result, matrix_png), _per_class_section(result),
              _mistakes_section(result, thumbnails), _failures_section(result),
              f'<footer>Written by <span class="mono">resnet evaluate --report</span> on '
              f"{e(_now())}.</footer>", "</main></body></html>"]
    return "\n".join(parts) + "\n"


def _headline(result: Evaluation) -> str:
    from resnet_cli.results import macro_f1

    cards = [("top1", "top-1 accuracy", _pct(result.top1), result.top1)]
    if result.top5 is not None:
        cards.append(("top5", "top-5 accuracy", _pct(result.top5), result.top5))
    cards += [("macro_f1", "macro F1", f"{macro_f1(result.classes):.4f}",
               macro_f1(result.classes)),
              ("images", "images", f"{result.images:,}", result.images),
              ("mistakes", "misclassified", f"{result.mistake_count:,}", result.mistake_count),
              ("classes", "classes", f"{len(result.classes):,}", len(result.classes))]
    if result.failures:
        cards.append(("failed", "unreadable", f"{len(result.failures):,}",
                      len(result.failures)))
    body = "".join(f'<div class="card"><div class="value" id="{key}" '
                   f'data-value="{_num(value)}">{text}</div>'
                   f'<div class="label">{label}</div></div>'
                   for key, label, text, value in cards)
    return f'<section class="cards">{body}</section>'


def _setup_table(result: Evaluation) -> str:
    rows = [("model", result.model), ("dataset", result.dataset)]
    if result.architecture:
        rows.append(("architecture", result.architecture))
    if result.image_size:
        rows.append(("input", f"{result.image_size}x{result.image_size} px"
                     + (f", --resize {result.resize}" if result.resize else "")))
    if result.device:
        rows.append(("device", result.device))
    rows.append(("time", f"{result.seconds:.1f} s"))
    body = "".join(f"<tr><th>{_escape(k)}</th><td class=\"mono\">{_escape(v)}</td></tr>"
                   for k, v in rows)
    return f'<section id="setup"><h2>Run</h2><table class="kv">{body}</table></section>'


def _confusion_section(result: Evaluation, matrix_png: bytes) -> str:
    e = _escape
    many = len(result.columns) > GRID_MAX_COLUMNS
    note = ("Too many classes for a labelled grid: the picture shows the most confused pairs "
            "and the row-normalised matrix without labels." if many else
            "Rows: true class; columns: predicted class. Left: counts; right: each row as a "
            "percentage of its class.")
    parts = ['<section id="confusion"><h2>Confusion matrix</h2>', f'<p class="note">{note} '
             f'<a href="{MATRIX_NAME}">Open the picture</a>.</p>',
             f'<img class="wide" alt="confusion matrix" src="{_data_uri(matrix_png)}">']
    pairs = confused_pairs(result, limit=PAIRS_SHOWN if many else PAIRS_LISTED)
    if pairs:
        rows = "".join(
            f"<tr><td>{e(p.true)}</td><td>{e(p.predicted)}</td>"
            f'<td class="num" data-value="{p.count}">{p.count}</td>'
            f'<td class="num" data-value="{_num(p.fraction)}">{_pct(p.fraction)}</td></tr>'
            for p in pairs)
        parts.append('<h3>Most confused pairs</h3><table id="pairs"><thead><tr><th>true</th>'
                     '<th>predicted as</th><th class="num">images</th>'
                     f'<th class="num">of the class</th></tr></thead><tbody>{rows}</tbody>'
                     "</table>")
    if not many:
        head = "".join(f'<th class="num">{e(c)}</th>' for c in result.columns)
        body = "".join(
            f"<tr><th>{e(c.name)}</th>" + "".join(
                f'<td class="num{" diag" if i == j else ""}" data-value="{v}">{v}</td>'
                for j, v in enumerate(row)) + "</tr>"
            for i, (c, row) in enumerate(zip(result.classes, result.confusion, strict=True)))
        parts.append('<details><summary>The counts as a table</summary>'
                     f'<div class="scroll"><table id="matrix"><thead><tr><th>true \\ '
                     f"predicted</th>{head}</tr></thead><tbody>{body}</tbody></table></div>"
                     "</details>")
    parts.append("</section>")
    return "".join(parts)


def _per_class_section(result: Evaluation) -> str:
    e = _escape
    rows = []
    for index, c in enumerate(result.classes):
        cells = "".join(
            f'<td class="num bar" style="--v:{value * 100:.1f}%" data-value="{_num(value)}">'
            f"{value:.4f}</td>" for value in (c.precision, c.recall, c.f1))
        rows.append(f'<tr><td class="num index">{index}</td><td>{e(c.name)}</td>'
                    f'<td class="num" data-value="{c.support}">{c.support}</td>{cells}</tr>')
    return ('<section id="per-class"><h2>Per class</h2><table id="classes"><thead><tr>'
            '<th class="num">#</th><th>class</th><th class="num">images</th>'
            '<th class="num">precision</th>'
            '<th class="num">recall</th><th class="num">F1</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _mistakes_section(result: Evaluation, thumbnails: dict[str, bytes | None]) -> str:
    e = _escape
    if not result.mistake_count:
        return ('<section id="mistakes"><h2>Mistakes</h2><p class="note">None: every image '
                "was classified correctly.</p></section>")
    shown = min(len(result.mistakes), GALLERY_MAX)
    intro = (f"{shown} of {result.mistake_count} misclassified images, the most confident "
             "first." if shown else f"{result.mistake_count} misclassified images; pass "
             "--errors N to show the N most confident.")
    figures = []
    for m in result.mistakes[:GALLERY_MAX]:
        png = thumbnails.get(m.path)
        small = ' class="small"' if png and _png_side(png) < SMALL_THUMB else ""
        picture = (f'<img{small} alt="{e(Path(m.path).name)}" src="{_data_uri(png)}">'
                   if png else '<div class="missing">cannot read the file</div>')
        true_p = ("" if m.true_probability is None else
                  f' <span class="p">{_pct(m.true_probability)}</span>')
        figures.append(
            f'<figure class="mistake">{picture}<figcaption>'
            f'<div class="pred">predicted <b>{e(m.predicted_label)}</b> '
            f'<span class="p">{_pct(m.probability)}</span></div>'
            f'<div class="true">true <b>{e(m.true_label)}</b>{true_p}</div>'
            f'<div class="path mono">{e(m.path).replace("/", "/<wbr>")}</div>'
            "</figcaption></figure>")
    return (f'<section id="mistakes"><h2>Worst mistakes</h2><p class="note">{intro}</p>'
            f'<div class="gallery">{"".join(figures)}</div></section>')


def _failures_section(result: Evaluation) -> str:
    if not result.failures:
        return ""
    rows = "".join(f'<tr><td class="mono">{_escape(f.path)}</td><td>{_escape(f.reason)}</td>'
                   "</tr>" for f in result.failures)
    return ('<section id="failed"><h2>Unreadable images</h2><p class="note">Left out of '
            'every score.</p><table><thead><tr><th>file</th><th>error</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></section>")


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float) -> str:
    """The exact value for `data-value` (repr round-trips a float)."""
    return repr(value) if isinstance(value, float) else str(value)


def _pct(value: float) -> str:
    return f"{value:.1%}" if value >= 0.0005 or value <= 0 else "<0.1%"


def _png_side(png: bytes) -> int:
    """The longer side of a PNG, from its header."""
    return max(int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")


# ----- thumbnails -------------------------------------------------------------------------

def thumbnail_png(path: str, *, max_side: int = THUMB_SIDE) -> bytes:
    """The image at `path` as RGB, upright (EXIF), shrunk to `max_side` pixels on its longer
    side (never enlarged), as PNG bytes.

    Raises:
        ImageError: it can no longer be read.
    """
    from PIL import Image

    rgb = load_upright_rgb(path, draft=lambda width, height: (max_side, max_side),
                           purpose="for the report")
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _try_thumbnail(path: str) -> bytes | None:
    try:
        return thumbnail_png(path)
    except ImageError:
        return None


STYLE = """
:root{--fg:#1d2433;--muted:#5b6475;--line:#e3e6ec;--accent:#2f6db3;--soft:#f5f7fa;
--bar:#dbe7f6;--bad:#b3261e}
*{box-sizing:border-box}
body{margin:0;background:#fff;color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 24px 48px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:34px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:20px 0 8px}
.sub,.note,footer{color:var(--muted)}
.sub{margin:0;overflow-wrap:anywhere}
.note{margin:4px 0 12px;font-size:14px}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
a{color:var(--accent)}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:22px 0 0}
.card{flex:1 1 130px;background:var(--soft);border:1px solid var(--line);border-radius:8px;
padding:12px 16px}
.card .value{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums}
.card .label{color:var(--muted);font-size:13px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:4px 12px;border-bottom:1px solid var(--line);text-align:left;
vertical-align:top}
thead th{background:var(--soft);font-weight:600;position:sticky;top:0}
.num{text-align:right}
td.bar{background:linear-gradient(90deg,var(--accent) var(--v),var(--line) var(--v))
left bottom/100% 3px no-repeat;min-width:6.5em}
td.index{color:var(--muted)}
table.kv th{color:var(--muted);font-weight:500;width:9em}
table.kv td{overflow-wrap:anywhere}
#matrix td.diag{background:var(--bar);font-weight:600}
details{margin:12px 0}
summary{cursor:pointer;color:var(--accent)}
.scroll{overflow-x:auto}
img.wide{display:block;max-width:100%;height:auto;border:1px solid var(--line);
border-radius:6px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:14px}
figure.mistake{margin:0;border:1px solid var(--line);border-radius:8px;padding:10px;
background:#fff}
figure.mistake img,figure.mistake .missing{display:block;width:100%;height:170px;
object-fit:contain;background:var(--soft);border-radius:4px}
figure.mistake img.small{image-rendering:pixelated}
figure.mistake .missing{display:flex;align-items:center;justify-content:center;
color:var(--muted);font-size:13px}
figcaption{margin-top:8px;font-size:13px;line-height:1.4}
figcaption .pred b{color:var(--bad)}
figcaption .p{color:var(--muted);font-variant-numeric:tabular-nums}
figcaption .path{color:var(--muted);font-size:12px;overflow-wrap:anywhere;margin-top:4px}
footer{margin-top:40px;font-size:13px}
"""
