"""The HTTP edge's own shapes: request bodies and API-only answers. The read models every
client shares live in ``reconciler.views``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    toHash: str = Field(pattern=r"^[0-9a-f]{8}$", description="8 lowercase hex characters")
    force: bool = Field(
        default=False, description="roll back to a version that never served (refused without)"
    )


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    error: str
    kind: str | None = Field(
        default=None,
        description="not-found, invalid, conflict, refused, unavailable or denied, when known",
    )


class EdgeHealth(BaseModel):
    """The edge as the daemon last saw it (the API never talks to the edge itself)."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["on", "external", "off"]
    status: Literal["up", "down", "off"]
    pid: int | None
    version: str | None
    sites: int
    error: str | None
    checkedAt: str


class DaemonHealth(BaseModel):
    """The daemon by the pulse it writes every few seconds (the API never talks to it)."""

    model_config = ConfigDict(extra="forbid")
    running: bool
    message: str


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["ok"]
    database: bool
    edge: EdgeHealth | None = None
    daemon: DaemonHealth | None = None
