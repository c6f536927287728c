"""What `resnet extract` and `resnet merge` print when they are done."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resnet_cli.extract import ExtractSummary
    from resnet_cli.features import FeatureFile


def extract_line(summary: ExtractSummary) -> str:
    """The one line `resnet extract` prints on stderr when it is done."""
    out = summary.output
    beside = f" + {out.index}" if out.index is not None else ""
    return (f"{out.rows} x {out.row_shape} {out.dtype} features from {summary.layer} of "
            f"{summary.source} -> {out.path}{beside} ({summary.failed} failed, "
            f"{summary.seconds:.1f} s, {summary.images_per_second:.1f} img/s)")


def merge_line(out: FeatureFile, files: int) -> str:
    """The one line `resnet merge` prints on stderr when it is done."""
    beside = f" + {out.index}" if out.index is not None else ""
    return f"{out.rows} x {out.row_shape} {out.dtype} rows from {files} files -> {out.path}{beside}"
