"""Self-contained HTML pages of findings (search, duplicates, audit): each finding is a row of
thumbnails, the image first and its neighbours or group members beside it.

Like evaluate's report (`render.report`, whose stylesheet and thumbnails it shares), the page
embeds every picture as a `data:` URI and needs no network and no other file.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from resnet_cli.outputs import atomic_open
from resnet_cli.render.report import SMALL_THUMB, STYLE, thumbnail_png

THUMB = 128  # pixels of a thumbnail's longer side
ROWS_SHOWN = 100  # findings per section at most

ROW_STYLE = """
.finding{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start;padding:10px 0;
border-bottom:1px solid var(--line)}
.tile{width:150px;margin:0}
.tile img,.tile .missing{display:block;width:150px;height:120px;object-fit:contain;
background:var(--soft);border-radius:4px}
.tile img.small{image-rendering:pixelated}
.tile .missing{display:flex;align-items:center;justify-content:center;color:var(--muted);
font-size:12px}
.tile.lead img,.tile.lead .missing{outline:3px solid var(--accent)}
.tile figcaption{margin-top:4px;font-size:12px;line-height:1.35}
.tile figcaption b{color:var(--bad)}
.tile .path{color:var(--muted);overflow-wrap:anywhere}
"""


@dataclass(frozen=True)
class Tile:
    """One image in a finding row, with caption lines (plain text; `bold` is emphasised)."""

    path: str
    lines: tuple[str, ...] = ()
    bold: str = ""
    lead: bool = False


@dataclass(frozen=True)
class Section:
    """A titled list of finding rows."""

    anchor: str
    title: str
    note: str
    rows: tuple[tuple[Tile, ...], ...]


def build_page(title: str, subtitle: str, cards: Sequence[tuple[str, str]],
               sections: Sequence[Section]) -> str:
    """The page as one HTML document; every value from the data is escaped."""
    e = _escape
    cache: dict[str, str | None] = {}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{STYLE}{ROW_STYLE}</style></head><body><main>",
             f'<header><h1>{e(title)}</h1><p class="sub">{e(subtitle)}</p></header>',
             '<div class="cards">' + "".join(
                 f'<div class="card"><div class="value">{e(v)}</div>'
                 f'<div class="label">{e(label)}</div></div>' for v, label in cards) + "</div>"]
    for section in sections:
        shown = section.rows[:ROWS_SHOWN]
        more = (f" Showing the first {len(shown)} of {len(section.rows)}."
                if len(section.rows) > len(shown) else "")
        body = "".join('<div class="finding">' + "".join(_tile(t, cache) for t in row)
                       + "</div>" for row in shown) or '<p class="note">None found.</p>'
        parts.append(f'<section id="{e(section.anchor)}"><h2>{e(section.title)} '
                     f'({len(section.rows)})</h2><p class="note">{e(section.note)}{more}</p>'
                     f"{body}</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def write_page(path: Path, page: str) -> Path:
    """Write the page atomically."""
    with atomic_open(path) as handle:
        handle.write(page)
    return path


def _tile(tile: Tile, cache: dict[str, str | None]) -> str:
    import base64

    from resnet_cli.errors import ImageError

    e = _escape
    if tile.path not in cache:
        try:
            png = thumbnail_png(tile.path, max_side=THUMB)
            small = max(int.from_bytes(png[16:20], "big"),
                        int.from_bytes(png[20:24], "big")) < SMALL_THUMB
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            cache[tile.path] = f'<img{" class=small" if small else ""} alt="' \
                f'{e(Path(tile.path).name)}" src="{uri}">'
        except ImageError:
            cache[tile.path] = None
    picture = cache[tile.path] or '<div class="missing">cannot read the file</div>'
    bold = f"<div><b>{e(tile.bold)}</b></div>" if tile.bold else ""
    lines = "".join(f"<div>{e(line)}</div>" for line in tile.lines)
    return (f'<figure class="tile{" lead" if tile.lead else ""}">{picture}<figcaption>'
            f'{bold}{lines}<div class="path mono">{e(tile.path)}</div></figcaption></figure>')


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)
