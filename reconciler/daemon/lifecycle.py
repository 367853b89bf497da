"""One start/stop protocol for every long-lived part of the daemon.

The daemon holds its parts in a ``Lifecycle``, in the order they start; they stop in the
reverse order, so what feeds a part stops before it (the scheduler and the watchers before
the controller, the controller before the edge and the engines). A part whose stop raises is
logged and the others still stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)


class Part(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Step:
    """A part made of two functions (either may do nothing)."""

    name: str
    on_start: Callable[[], None] = lambda: None
    on_stop: Callable[[], None] = lambda: None

    def start(self) -> None:
        self.on_start()

    def stop(self) -> None:
        self.on_stop()


class Lifecycle:
    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self._started: list[Part] = []

    def start(self) -> None:
        for part in self.parts:
            part.start()
            self._started.append(part)

    def stop(self) -> None:
        while self._started:
            part = self._started.pop()
            try:
                part.stop()
            except Exception:
                logger.exception("stopping %s failed", getattr(part, "name", type(part).__name__))
