"""Errors the reconcile loop understands.

::

    ReconcilerError                 anything reconciler raises on purpose
     +-- TransientError(delay)      retry later with backoff: engine unreachable, port taken,
     |    |                         database busy; nothing is wrong with the desired state
     |    +-- NoRoom                a release would take the room the disk must keep
     +-- PermanentError             the desired state cannot be reached as it is: build exit
          |                         code, health timeout, bad dist. Recorded against the exact
          |                         desired spec and not retried until that spec changes
          +-- ReleaseError          a dist or release that cannot be hashed, staged or kept
          +-- BuildFailed           the build command failed or timed out
          +-- StartFailed           the instance did not start or never became healthy

``Cancelled`` is not an error of the project: it means the desired state changed while a
step ran, and the loop starts over with the new desired state.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base class; ``str(err)`` is a message an operator can act on."""


class TransientError(ReconcilerError):
    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(ReconcilerError):
    pass


class ReleaseError(PermanentError):
    pass


class DistTooLarge(ReleaseError):
    """A build's output is larger than a release may be (the release limit, or the room left
    under the project's disk quota)."""


class NoRoom(TransientError):
    """Staging a release would leave less free than the disk must keep (the state database
    and the logs live there too): stopped before it does, retried when there may be room."""


class BuildFailed(PermanentError):
    pass


class StartFailed(PermanentError):
    pass


class Cancelled(Exception):
    """The step was cancelled because the desired state changed (or the daemon stops)."""
