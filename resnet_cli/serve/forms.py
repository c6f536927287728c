"""A `multipart/form-data` body read into its files without copying them.

`python-multipart`'s parser (the one Starlette uses) is fed the whole body once; each file
comes back as a view of the body (`memoryview`), so a form is held in memory once, not as the
body plus spooled copies of its parts plus their bytes. Fields without a file name are not
files and are skipped, as Starlette's `UploadFile` rule has it.
"""

from __future__ import annotations

from typing import Any

from resnet_cli.serve.service import Upload


class FormError(Exception):
    """A form that cannot be read: HTTP 400 with this message."""


def parse_form(body: bytes, content_type: str, *, max_parts: int) -> list[Upload]:
    """The files of a multipart form, in order, named by their file name (else their field).

    Raises:
        FormError: no boundary, malformed, or more than `max_parts` parts.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise FormError("malformed multipart form: the Content-Type has no boundary.")
    parts: list[_Part] = []
    header = [b"", b""]

    def begin() -> None:
        if len(parts) >= max_parts:
            raise FormError(f"the form has more than {max_parts} parts.")
        parts.append(_Part())

    def field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def header_end() -> None:
        parts[-1].headers[header[0].strip().lower()] = header[1].strip()
        header[0] = header[1] = b""

    def data(chunk: bytes, start: int, end: int) -> None:
        parts[-1].add(chunk is body, chunk, start, end)

    callbacks: Any = {"on_part_begin": begin, "on_header_field": field,
                      "on_header_value": value, "on_header_end": header_end,
                      "on_part_data": data}
    parser = MultipartParser(boundary, callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise FormError(f"malformed multipart form: {exc}") from None
    view = memoryview(body)
    uploads = []
    for part in parts:
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        filename = options.get(b"filename")
        if filename is None:
            continue
        name = (filename or options.get(b"name", b"upload")).decode("utf-8", "replace")
        uploads.append(Upload(name, part.content(view)))
    return uploads


class _Part:
    """One part: its headers, and its data as ranges of the body (or copies of the parser's
    own buffer, where it holds back bytes that might have begun a boundary)."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.pieces: list[tuple[int, int] | bytes] = []

    def add(self, in_body: bool, chunk: bytes, start: int, end: int) -> None:
        last = self.pieces[-1] if self.pieces else None
        if not in_body:
            self.pieces.append(bytes(chunk[start:end]))
        elif isinstance(last, tuple) and last[1] == start:
            self.pieces[-1] = (last[0], end)
        else:
            self.pieces.append((start, end))

    def content(self, view: memoryview) -> bytes | memoryview:
        if len(self.pieces) == 1 and isinstance(self.pieces[0], tuple):
            start, end = self.pieces[0]
            return view[start:end]
        return b"".join(view[p[0]:p[1]] if isinstance(p, tuple) else p for p in self.pieces)
