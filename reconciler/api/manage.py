"""The API's day-2 routes: start, pin and unpin; several projects at once; a project made,
configured (its file as text, its env) and deleted; secrets; a project's deployment
timeline and its charts of the last hour. As everywhere in the API, the work is in
``Operations`` and each change is an edit of the desired files."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from reconciler.api.app import ApiError, json_body, json_response, ops
from reconciler.core.spec import ProjectId
from reconciler.readside.terms import OperationError
from reconciler.readside.timeline import series, timeline
from reconciler.stores.facts import commit_fields

bp = Blueprint("manage", __name__)

MAX_TEXT_BODY = 96 * 1024  # a desired file's text (64 KB) as a JSON string
ACTIONS = ("deploy", "start", "stop")
MAX_IDS = 1000
MAX_IDS_BODY = 80 * MAX_IDS  # quoted ids of 63 characters, with commas


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false")
    return value


def _only(body: dict[str, Any], *names: str) -> None:
    extra = sorted(set(body) - set(names))
    if extra:
        raise ApiError(400, f"unknown field(s): {', '.join(extra)}; this takes {', '.join(names)}")


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string")
    return value


@bp.post("/api/projects/<raw>/start")
def start(raw: str) -> Response:
    project_id = ops().project(raw)
    json_body(required=False)
    return json_response(ops().start(project_id))


@bp.post("/api/projects/<raw>/pin")
def pin(raw: str) -> Response:
    project_id = ops().project(raw)
    body = json_body(required=True)
    _only(body, "version", "force")
    return json_response(ops().pin(project_id, _text(body, "version"), force=_flag(body, "force")))


@bp.post("/api/projects/<raw>/unpin")
def unpin(raw: str) -> Response:
    project_id = ops().project(raw)
    json_body(required=False)
    return json_response(ops().unpin(project_id))


@bp.post("/api/actions/<action>")
def many(action: str) -> Response:
    """``deploy``, ``start`` or ``stop`` several projects (``projects``: ids) or every one
    (``all: true``); each project's outcome is answered on its own."""
    if action not in ACTIONS:
        raise ApiError(404, f"no such action; one of {', '.join(ACTIONS)}")
    request.max_content_length = MAX_IDS_BODY
    body = json_body(required=True)
    _only(body, "projects", "all")
    operations = ops()
    every = _flag(body, "all")
    raw = body.get("projects")
    named = isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw)
    if ("projects" in body or not every) and not named:
        raise ApiError(400, 'send {"projects": ["id", ...]} or {"all": true}')
    if isinstance(raw, list) and len(raw) > MAX_IDS:
        raise ApiError(400, f"at most {MAX_IDS} projects at once (or all: true)")
    ids = [str(p) for p in operations.desired.ids()] if every else list(dict.fromkeys(raw or []))
    results: list[dict[str, Any]] = []
    for raw_id in ids:
        try:
            project_id = operations.project(raw_id)
            status = getattr(operations, action)(project_id)
            results.append({"id": project_id, "status": status.model_dump(mode="json")})
        except OperationError as exc:
            results.append({"id": raw_id, "error": exc.message, "kind": str(exc.kind)})
    failed = sum(1 for r in results if "error" in r)
    return json_response({"results": results, "failed": failed})


# -- a project's settings --------------------------------------------------------------------


@bp.get("/api/projects/<raw>/desired")
def desired_text(raw: str) -> Response:
    return json_response(ops().desired_text(ops().project(raw)))


@bp.put("/api/projects/<raw>/desired")
def save_desired(raw: str) -> Response:
    request.max_content_length = MAX_TEXT_BODY
    project_id = ops().project(raw)
    body = json_body(required=True)
    _only(body, "text", "dryRun", "base")
    text = _text(body, "text")
    base = body.get("base")
    if base is not None and (not isinstance(base, str) or len(base) > 64):
        raise ApiError(400, "base: the digest GET /desired answered")
    return json_response(
        ops().save_text(project_id, text, create=False, dry_run=_flag(body, "dryRun"), base=base)
    )


@bp.put("/api/projects/<raw>/env")
def save_env(raw: str) -> Response:
    project_id = ops().project(raw)
    body = json_body(required=True)
    _only(body, "env", "dryRun")
    env = body.get("env")
    if not isinstance(env, dict):
        raise ApiError(400, 'send {"env": {"NAME": "value" or {"secret": "name"}}}')
    return json_response(ops().save_env(project_id, env, dry_run=_flag(body, "dryRun")))


@bp.post("/api/projects")
def create_project() -> Response:
    """A new project from its file's text (``dryRun``: check it and show it, write nothing)."""
    request.max_content_length = MAX_TEXT_BODY
    body = json_body(required=True)
    _only(body, "id", "text", "dryRun")
    operations = ops()
    project_id = operations.check_id(_text(body, "id"))
    dry_run = _flag(body, "dryRun")
    result = operations.save_text(project_id, _text(body, "text"), create=True, dry_run=dry_run)
    return json_response({"id": project_id, **result}, 200 if dry_run else 201)


@bp.post("/api/drafts")
def draft() -> Response:
    """A new project's desired file, worked out from its source (nothing is written)."""
    body = json_body(required=True)
    _only(body, "id", "source", "ref")
    ref = body.get("ref")
    if ref is not None and not isinstance(ref, str):
        raise ApiError(400, "ref must be a string")
    return json_response(ops().draft(_text(body, "id"), _text(body, "source"), ref=ref))


@bp.delete("/api/projects/<raw>")
def delete_project(raw: str) -> Response:
    project_id = ops().project(raw)
    ops().delete_project(project_id)
    return json_response({"deleted": project_id})


# -- secrets ---------------------------------------------------------------------------------


@bp.get("/api/secrets")
def secrets() -> Response:
    return json_response({"secrets": ops().secrets()})


@bp.put("/api/secrets/<name>")
def set_secret(name: str) -> Response:
    request.max_content_length = 64 * 1024  # 4096 characters, each escaped as \uXXXX
    body = json_body(required=True)
    _only(body, "value")
    changed = ops().set_secret(name, _text(body, "value"))
    return json_response({"name": name, "changed": changed})


@bp.delete("/api/secrets/<name>")
def delete_secret(name: str) -> Response:
    ops().delete_secret(name)
    return json_response({"deleted": name})


# -- what happened ---------------------------------------------------------------------------


@bp.get("/api/projects/<raw>/deployments")
def deployments(raw: str) -> Response:
    project_id = ops().project(raw)
    limit = request.args.get("limit", "20")
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 200:
        raise ApiError(400, "limit must be an integer from 1 to 200")
    operations = ops()

    def commit_of(version: str) -> dict[str, str]:
        return commit_fields(operations.releases.source_of(project_id, version))

    return json_response(timeline(operations.db, project_id, limit=int(limit), commit_of=commit_of))


@bp.get("/api/projects/<raw>/series")
def usage_series(raw: str) -> Response:
    project_id: ProjectId = ops().project(raw)
    return json_response(series(ops().db, project_id))
