"""What the benchmark scripts share: running the real command line, and a work folder.

The scripts run as `python benchmarks/NAME.py`, so this folder is on their import path.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def resnet(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the `resnet` command of this interpreter's environment (stdout captured, stderr
    shown); exit the script if it fails."""
    print("$ resnet " + " ".join(args), file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, "-m", "resnet_cli", *args],
                            stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"resnet {args[0]} failed with exit code {result.returncode}")
    return result


@contextlib.contextmanager
def work_folder(given: Path | None, *, prefix: str) -> Iterator[Path]:
    """`given` (created if missing, kept afterwards), or a temporary folder removed at the
    end."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
