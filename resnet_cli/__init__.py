"""resnet-cli: Keras ResNet models from the command line."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resnet-cli")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
