"""Typed user errors: the library raises them, cli.py turns them into messages and exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime error, or at least one input that failed
EXIT_USAGE = 2  # bad options or arguments (Click uses 2 for these too)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Keras' can run to pages), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ResnetCliError(Exception):
    """An error a user can act on. Its message is shown as one line, without a traceback."""

    exit_code: int = EXIT_FAILURE


class UsageError(ResnetCliError):
    """The command line asks for something that cannot work (an option or a combination)."""

    exit_code = EXIT_USAGE


class UnknownModelError(UsageError):
    """A model name that is not in the registry."""


class NoInputsError(UsageError):
    """The arguments named no image at all."""


class DeviceError(ResnetCliError):
    """The requested device is not available."""


class WeightsError(ResnetCliError):
    """Weights cannot be found, downloaded, verified or loaded."""


class ModelFileError(ResnetCliError):
    """A saved model file cannot be loaded or does not fit the request."""


class ImageError(ResnetCliError):
    """One image cannot be read or decoded. Batches record it and go on."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class OutputError(ResnetCliError):
    """An output file cannot be written (exists without --overwrite, bad directory, ...)."""


class DatasetError(ResnetCliError):
    """A training or evaluation dataset does not have the expected layout."""
