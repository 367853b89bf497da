"""What the operations answer in: their errors, the events a stream sends, the logs an operator may
ask for."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.core.spec import (
    ProjectId,
)

STREAM_END = "stream.end"


WAITING = "production.waiting"  # made up by the stream (never stored): why nothing moves


LOG_NAMES = ("build", "app", "access")


MAX_LOG_CHUNK = 256 * 1024


class ErrorKind(StrEnum):
    NOT_FOUND = "not-found"  # no such project or version
    INVALID = "invalid"  # the request itself is wrong (an id, a hash, a body)
    CONFLICT = "conflict"  # the request is fine, the state refuses it (an invalid file)
    REFUSED = "refused"  # well formed, but pointless now (roll back to the active version)
    UNAVAILABLE = "unavailable"  # something needed cannot be reached now
    DENIED = "denied"  # not allowed (no or a wrong token)


class OperationError(Exception):
    """A request that cannot be served, and which kind of failure that is."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _not_found(project_id: ProjectId) -> OperationError:
    return OperationError(
        ErrorKind.NOT_FOUND, f"project {project_id!r} not found: there is no desired file for it"
    )


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]


def _site_lines(port: int | None, domains: Iterable[str]) -> Callable[[str], bool]:
    """Lines of the shared access log that belong to the site on ``port`` (the ``port`` field
    the edge adds to each line) or to one of its ``domains`` (the request's host)."""
    names = [re.escape(f'"port":{port}')] if port is not None else []
    names += [re.escape(f'"host":"{domain}"') for domain in domains]
    if not names:
        return lambda _line: False
    found = re.compile(f"(?:{'|'.join(names)})[,}}]").search
    return lambda line: found(line) is not None
