"""OpenAPI 3.1 description of the API; schemas come from the pydantic models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from reconciler import __version__
from reconciler.api.manage_doc import manage_paths
from reconciler.api.models import ErrorBody, Health, RollbackRequest
from reconciler.core.spec import PROJECT_ID
from reconciler.readside.timeline import Series, Timeline
from reconciler.readside.views import (
    History,
    ProductionStatus,
    ProjectList,
    RollbackResult,
)

MODELS: list[type[BaseModel]] = [
    Timeline,
    Series,
    ProductionStatus,
    History,
    RollbackRequest,
    RollbackResult,
    ProjectList,
    ErrorBody,
    Health,
]


# one optional retry hint, then comments (keep-alives) and events, each ending in a blank line
SSE_PATTERN = (
    "^(retry: [0-9]+\\n\\n)?((:[^\\n]*|id: [0-9]+\\nevent: [a-z.]+\\ndata: [^\\n]*)\\n\\n)*$"
)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "bad input (id, body or hash)",
        401: "a write without a bearer token (when a token is configured)",
        403: "a wrong bearer token",
        404: "unknown project (no desired file) or version",
        409: "the desired file is invalid (fix it first), or the configuration repository "
        "refused the push (--desired-git; git's reason)",
        413: "body too large",
        415: "a write body that is not JSON",
        500: "unexpected error",
        503: "too many open event streams (see Retry-After)",
    }
    return {str(code): _json("ErrorBody", text[code]) for code in codes}


def _hook_body() -> dict[str, Any]:
    return {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"accepted": {"type": "boolean"}, "message": {"type": "string"}},
                }
            }
        }
    }


def _project_paths(
    pid: dict[str, Any], writes: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {"summary": "Liveness of the API", "responses": {"200": _json("Health", "ok")}}
        },
        "/api/projects": {
            "get": {
                "summary": "Every desired file with its production status",
                "description": "Has an ETag (If-None-Match answers 304 while nothing "
                "changed) and is gzipped for clients that send Accept-Encoding: gzip.",
                "responses": {
                    "200": _json("ProjectList", "projects"),
                    "304": {"description": "not modified since the ETag sent"},
                },
            }
        },
        "/api/projects/{id}/production": {
            "get": {
                "summary": "Current production status",
                "parameters": [pid],
                "responses": {"200": _json("ProductionStatus", "status"), **_errors(400, 404)},
            }
        },
        "/api/projects/{id}/deploy": {
            "post": {
                "summary": "Build and deploy the latest source (bumps production.generation)",
                "parameters": [pid],
                "requestBody": body,
                "responses": {"200": _json("ProductionStatus", "status after the edit"), **writes},
            }
        },
        "/api/projects/{id}/stop-production": {
            "post": {
                "summary": "Stop production (sets production.state: stopped)",
                "parameters": [pid],
                "requestBody": body,
                "responses": {"200": _json("ProductionStatus", "status after the edit"), **writes},
            }
        },
        "/api/projects/{id}/production-history": {
            "get": {
                "summary": "Kept versions, newest first",
                "parameters": [pid],
                "responses": {"200": _json("History", "versions"), **_errors(400, 404)},
            }
        },
        "/api/projects/{id}/rollback-production": {
            "post": {
                "summary": "Pin a kept version and wait until it serves",
                "parameters": [pid],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("RollbackRequest")}},
                },
                "responses": {
                    "200": _json("RollbackResult", "rolled back"),
                    **writes,
                    "500": _json("RollbackResult", "the rollback failed"),
                },
            }
        },
    }


def _stream_paths(pid: dict[str, Any]) -> dict[str, Any]:
    return {
        "/api/projects/{id}/production-stream": {
            "get": {
                "summary": "Server-Sent Events of the current deployment",
                "parameters": [
                    pid,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "resume after this event id",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    },
                    {
                        "name": "lastEventId",
                        "in": "query",
                        "required": False,
                        "description": "the same, for clients that cannot set headers",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Server-Sent Events, each `id: <n>`, `event: <type>` and "
                        "`data: <JSON object>`: production.building, production.starting, "
                        "production.ready {status, url, port, hash}, production.error {error}, "
                        "production.stopped, production.cancelled, production.waiting "
                        "{message, daemon}, production.notification (a notification "
                        "attempt; a stream resumed with Last-Event-ID sees them), and last "
                        "stream.end ({} after an outcome, {reason, message} when it ends "
                        "without one)",
                        "content": {
                            "text/event-stream": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "text/event-stream",
                                    "pattern": SSE_PATTERN,
                                },
                                "x-events": [
                                    "production.building",
                                    "production.starting",
                                    "production.ready",
                                    "production.error",
                                    "production.stopped",
                                    "production.cancelled",
                                    "production.waiting",
                                    "production.notification",
                                    "stream.end",
                                ],
                            }
                        },
                    },
                    **_errors(400, 404, 503),
                },
            }
        },
    }


def _reading_paths(pid: dict[str, Any]) -> dict[str, Any]:
    return {
        "/api/projects/{id}/production-logs": {
            "get": {
                "summary": "Build or app log of the current release (tail, or from an offset)",
                "parameters": [
                    pid,
                    {"name": "log", "in": "query", "schema": {"enum": ["build", "app"]}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ],
                "responses": {
                    "200": {
                        "description": "{log, hash, offset, text}; pass offset back to follow",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(400, 404),
                },
            }
        },
        "/api/projects/{id}/events": {
            "get": {
                "summary": "The project's latest events, oldest first (deploy progress, "
                "notification attempts)",
                "parameters": [
                    pid,
                    {"name": "type", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "{events: [{id, type, deployment, createdAt, data}]}",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(400, 404),
                },
            }
        },
    }


def _other_paths(pid: dict[str, Any]) -> dict[str, Any]:
    return {
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text format 0.0.4)",
                "responses": {
                    "200": {
                        "description": "deployments, durations, queue depth, projects by "
                        "status, repairs, and the edge's per-site request metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/projects/{id}/hooks/git": {
            "post": {
                "summary": "A forge's push webhook: check the followed ref now",
                "description": "Signed with the project's secret (`reconciler hook-secret ID`): "
                "X-Hub-Signature-256 (GitHub, Gitea, Forgejo), X-Gitea-Signature or "
                "X-Gitlab-Token. No bearer token. Body: the forge's push payload (its `ref`).",
                "parameters": [pid],
                "security": [],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": {"description": "a ping", **_hook_body()},
                    "202": {
                        "description": "accepted (a check runs now), or ignored: another "
                        "branch or event",
                        **_hook_body(),
                    },
                    "401": _json("ErrorBody", "a missing or wrong signature; nothing changed"),
                    "409": _json("ErrorBody", "no secret set up, or the project follows no ref"),
                    **_errors(400, 404, 413),
                },
            }
        },
        "/api/hooks/desired": {
            "post": {
                "summary": "A push webhook for the configuration repository (--desired-git)",
                "description": "Signed with the secret of `reconciler hook-secret _desired`.",
                "security": [],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": {"description": "a ping", **_hook_body()},
                    "202": {"description": "accepted, or ignored", **_hook_body()},
                    "401": _json("ErrorBody", "a missing or wrong signature; nothing changed"),
                    "409": _json("ErrorBody", "no secret, or no configuration repository"),
                    **_errors(400, 413),
                },
            }
        },
    }


def document() -> dict[str, Any]:
    modes: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (m, "serialization") for m in MODELS
    ]
    _, defs = models_json_schema(modes, ref_template="#/components/schemas/{model}")
    schemas = defs.get("$defs", {})
    pid: dict[str, Any] = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{PROJECT_ID}$"},
    }
    writes = _errors(400, 401, 403, 404, 409, 413, 415)
    body = {
        "required": False,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    paths: dict[str, Any] = {
        **_project_paths(pid, writes, body),
        **_reading_paths(pid),
        **_stream_paths(pid),
        **_other_paths(pid),
    }
    for path, operations in manage_paths(pid, writes, _json, _errors).items():
        paths.setdefault(path, {}).update(operations)
    return {
        "openapi": "3.1.0",
        "info": {"title": "reconciler API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
