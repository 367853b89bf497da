"""The OpenAPI description of the day-2 routes (``api.manage``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler.core.spec import PROJECT_ID, SECRET_NAME

Json = Callable[[str, str], dict[str, Any]]
Errors = Callable[..., dict[str, Any]]


def _object(description: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    if properties is not None:
        schema["properties"] = properties
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(properties: dict[str, Any], required: list[str], **extra: Any) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required,
              "additionalProperties": False, **extra}  # fmt: skip
    return {"required": True, "content": {"application/json": {"schema": schema}}}


TEXT_RESULT = {"file": {"type": "string"}, "diff": {"type": "string"}, "saved": {"type": "boolean"}}


def _write(
    summary: str, pid: dict[str, Any], answer: dict[str, Any], writes: dict[str, Any],
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    operation: dict[str, Any] = {"summary": summary, "parameters": [pid],
                                 "responses": {"200": answer, **writes}}  # fmt: skip
    if body is not None:
        operation["requestBody"] = body
    return operation


def _project_writes(pid: dict[str, Any], writes: dict[str, Any], json: Json) -> dict[str, Any]:
    status = json("ProductionStatus", "status after the edit")
    empty = {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
    version = {"type": "string", "pattern": "^[0-9a-f]{8}$"}
    return {
        "/api/projects/{id}/start": {"post": _write(
            "Run the version the file names, without a build (production.state: running)",
            pid, status, writes, empty)},
        "/api/projects/{id}/pin": {"post": _write(
            "Hold the project at a kept version (following stops until unpin); a version that "
            "never served is refused unless force", pid, status, writes,
            _body({"version": version, "force": {"type": "boolean"}}, ["version"]))},
        "/api/projects/{id}/unpin": {"post": _write(
            "Back to the latest version (production.version: latest)", pid, status, writes,
            empty)},
        "/api/projects/{id}/desired": {
            "get": {
                "summary": "The project's desired file as text (a bearer token when set)",
                "parameters": [pid],
                "responses": {"200": _object("{file, text, digest, valid, error, derived}")},
            },
            "put": _write(
                "Replace the file's text (dryRun: only check it and show the diff; base: the "
                "digest GET answered, so that a file saved since is refused with 409)", pid,
                _object("the diff and whether it was saved", TEXT_RESULT), writes,
                _body({"text": {"type": "string"}, "dryRun": {"type": "boolean"},
                       "base": {"type": "string", "maxLength": 64}}, ["text"])),
        },
        "/api/projects/{id}/env": {"put": _write(
            "Replace the file's env block: values, or {secret: NAME}", pid,
            _object("the diff and whether it was saved", TEXT_RESULT), writes,
            _body({"env": {"type": "object"}, "dryRun": {"type": "boolean"}}, ["env"]))},
    }  # fmt: skip


def manage_paths(
    pid: dict[str, Any], writes: dict[str, Any], json: Json, errors: Errors
) -> dict[str, Any]:
    paths = _project_writes(pid, writes, json)
    paths["/api/projects/{id}/desired"]["get"]["responses"].update(errors(400, 401, 403, 404, 409))
    paths["/api/projects/{id}"] = {
        "delete": {
            "summary": "Delete the project's desired file (the daemon stops the project)",
            "parameters": [pid],
            "responses": {"200": _object("{deleted}"), **writes},
        }
    }
    paths["/api/projects"] = {
        "post": {
            "summary": "Create a project from its file's text (dryRun: check it and show it)",
            "requestBody": _body(
                {
                    "id": {"type": "string"},
                    "text": {"type": "string"},
                    "dryRun": {"type": "boolean"},
                },
                ["id", "text"],
            ),
            "responses": {
                "200": _object("checked, not written", TEXT_RESULT),
                "201": _object("created", TEXT_RESULT),
                **writes,
            },
        }
    }
    paths["/api/drafts"] = {"post": {
        "summary": "A new project's desired file worked out from its source (writes nothing)",
        "requestBody": _body({"id": {"type": "string", "pattern": f"^{PROJECT_ID}$"},
                              "source": {"type": "string"},
                              "ref": {"type": "string"}}, ["id", "source"]),
        "responses": {"200": _object("{id, text, detected}"), **writes},
    }}  # fmt: skip
    paths["/api/actions/{action}"] = {"post": {
        "summary": "Deploy, start or stop several projects, or all of them",
        "parameters": [{"name": "action", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": ["deploy", "start", "stop"]}}],
        "requestBody": _body({"projects": {"type": "array", "items": {"type": "string"},
                                           "minItems": 1, "maxItems": 1000},
                              "all": {"type": "boolean"}}, [],
                             anyOf=[{"required": ["projects"]},
                                    {"required": ["all"], "properties": {"all": {"const": True}}}]),
        "responses": {"200": _object("{results: [{id, status} or {id, error, kind}], failed}"),
                      **writes},
    }}  # fmt: skip
    paths.update(_secret_paths(writes, errors))
    paths["/api/projects/{id}/deployments"] = {"get": {
        "summary": "The latest deployments, newest first, with their phases and trigger",
        "parameters": [pid, {"name": "limit", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 200}}],
        "responses": {"200": json("Timeline", "deployments"), **errors(400, 404)},
    }}  # fmt: skip
    paths["/api/projects/{id}/series"] = {"get": {
        "summary": "The last hour, a point a minute: requests/s, error rate, latency, memory, CPU",
        "parameters": [pid],
        "responses": {"200": json("Series", "series"), **errors(400, 404)},
    }}  # fmt: skip
    return paths


def _secret_paths(writes: dict[str, Any], errors: Errors) -> dict[str, Any]:
    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": f"^{SECRET_NAME}$"}}  # fmt: skip
    return {
        "/api/secrets": {"get": {
            "summary": "Every secret's name, revision, when it was set and who refers to it "
            "(never a value; a bearer token when set)",
            "responses": {"200": _object("{secrets: [{name, revision, updatedAt, usedBy}]}"),
                          **errors(401, 403)},
        }},
        "/api/secrets/{name}": {
            "put": {"summary": "Set a secret's value (projects that refer to it restart with it)",
                    "parameters": [name],
                    "requestBody": _body({"value": {"type": "string", "maxLength": 4096,
                                                    "pattern": "^[^\\u0000]*$"}}, ["value"]),
                    "responses": {"200": _object("{name, changed}"), **writes}},
            "delete": {"summary": "Delete a secret", "parameters": [name],
                       "responses": {"200": _object("{deleted}"), **writes}},
        },
    }  # fmt: skip
