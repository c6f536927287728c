"""Optional dependencies: import one, or say in one line which extra installs it."""

from __future__ import annotations

import importlib
from typing import Any

from resnet_cli.errors import UsageError


def require_module(module: str, *, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or fail with the one line that installs it.

    Raises:
        UsageError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"{purpose} needs {module.split('.')[0]}: "
                         f"pip install 'resnet-cli[{extra}]'") from exc
