"""The API's JSON shapes (pydantic), also the source of the OpenAPI schemas."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.state import JobState, JobType, Status


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActiveJob(_Out):
    type: JobType
    state: JobState


class ProductionStatus(_Out):
    status: Status
    url: str | None
    port: int | None
    error: str | None
    startedAt: str | None = Field(description="ISO 8601 UTC; when the serving instance got ready")
    activeJob: ActiveJob | None
    hash: str | None = Field(description="the version serving now (kept when stopped)")


class Version(_Out):
    hash: str
    isActive: bool
    createdAt: str


class History(_Out):
    versions: list[Version]


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    toHash: str = Field(pattern=r"^[0-9a-f]{8}$", description="8 lowercase hex characters")


class RollbackResult(_Out):
    success: bool
    hash: str | None = None
    message: str | None = None
    error: str | None = None


class ProjectSummary(_Out):
    id: str | None
    file: str
    valid: bool
    production: ProductionStatus | None
    error: str | None


class ProjectList(_Out):
    projects: list[ProjectSummary]


class ErrorBody(_Out):
    error: str


class Health(_Out):
    status: Literal["ok"]
    database: bool
