"""The progress bar every long job shows on stderr (decoding, training, calibration).

It lives below every module that shows one, so that the library's lower layers can report
progress without importing `render`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def progress_bar(*, total: int, desc: str, enabled: bool = True, unit: str = "it") -> Iterator[Any]:
    """A tqdm bar on stderr; hidden when disabled or when stderr is not a terminal."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
              disable=None if enabled else True, leave=False) as bar:
        yield bar
