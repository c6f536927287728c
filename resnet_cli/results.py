"""Plain result records returned by the command logic and consumed by `render`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    """One of the top-k classes for an image."""

    rank: int
    index: int
    wnid: str | None
    label: str
    probability: float


@dataclass(frozen=True)
class ClassifyResult:
    """The outcome for one input: its predictions, or the reason it failed."""

    path: str
    predictions: tuple[Prediction, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
