"""The Flask sidecar: the spec's endpoints over the state DB and the desired files.

It reads ``data/state.db`` and the release store, and changes desired state only through
``DesiredStore.edit``. It never imports a runtime: it works the same while the daemon is down.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from reconciler.api.models import (
    Health,
    History,
    ProductionStatus,
    ProjectList,
    ProjectSummary,
    RollbackRequest,
    RollbackResult,
    Version,
)
from reconciler.api.status import in_progress, production_status
from reconciler.config import Config
from reconciler.desired import DesiredFileError, DesiredStore, EditError, ProjectNotFound
from reconciler.releases import ReleaseStore
from reconciler.spec import InvalidProjectId, ProjectId, ProjectSpec, check_project_id
from reconciler.state import StateDB

logger = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
TERMINAL = ("production.ready", "production.error", "production.stopped")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Services:
    config: Config
    db: StateDB
    desired: DesiredStore
    releases: ReleaseStore
    token: str | None
    streams: threading.BoundedSemaphore
    poll_interval: float = 0.2
    heartbeat: float = 15.0
    rollback_grace: float = 30.0
    open_streams: list[int] = field(default_factory=lambda: [0])

    def rollback_wait(self, spec: ProjectSpec) -> float:
        """How long a rollback waits for the daemon: the health timeout plus a grace."""
        return spec.health.timeout + self.rollback_grace


def services() -> Services:
    return current_app.extensions["reconciler"]  # type: ignore[no-any-return]


bp = Blueprint("api", __name__)


def json_response(model: BaseModel | dict[str, Any], status: int = 200) -> Response:
    body = model.model_dump_json() if isinstance(model, BaseModel) else json.dumps(model)
    return Response(body, status=status, mimetype="application/json")


# -- helpers ---------------------------------------------------------------------------------


def project_id(raw: str) -> ProjectId:
    try:
        return check_project_id(raw)
    except InvalidProjectId as exc:
        raise ApiError(400, str(exc)) from None


def known(raw: str) -> ProjectId:
    pid = project_id(raw)
    if services().desired.path_for(pid) is None:
        raise ApiError(404, f"project {pid!r} not found: there is no desired file for it")
    return pid


def current_status(pid: ProjectId, svc: Services | None = None) -> ProductionStatus:
    svc = svc or services()
    loaded = svc.desired.load(pid)
    spec = loaded.in_force if loaded else None
    return production_status(spec, svc.db.project(pid), svc.db.active_job(pid))


def json_body(*, required: bool) -> Any:
    data = request.get_data(cache=True)
    if not data.strip():
        if required:
            raise ApiError(400, "a JSON body is required")
        return {}
    if not request.is_json:
        raise ApiError(415, "send the body as Content-Type: application/json")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None


def edit(pid: ProjectId, mutate: Callable[[ProjectSpec], dict[str, object]]) -> None:
    try:
        services().desired.edit(pid, mutate)
    except ProjectNotFound:
        raise ApiError(404, f"project {pid!r} not found: there is no desired file for it") from None
    except DesiredFileError as exc:
        raise ApiError(
            409, f"the desired file is invalid; fix it first: {exc.problems[0].message}"
        ) from None
    except EditError as exc:
        raise ApiError(409, str(exc)) from None


# -- routes ----------------------------------------------------------------------------------


@bp.get("/healthz")
def healthz() -> Response:
    ok = True
    try:
        services().db.read("SELECT 1")
    except Exception:
        ok = False
    return json_response(Health(status="ok", database=ok), 200 if ok else 503)


@bp.get("/api/projects")
def list_projects() -> Response:
    svc = services()
    scan = svc.desired.scan()
    items = []
    for pid, loaded in sorted(scan.projects.items()):
        status = production_status(loaded.in_force, svc.db.project(pid), svc.db.active_job(pid))
        items.append(
            ProjectSummary(
                id=pid,
                file=loaded.path.name,
                valid=loaded.valid,
                production=status,
                error=loaded.error and _relative(loaded.error, svc),
            )
        )
    for problem in scan.orphans:
        items.append(
            ProjectSummary(
                id=None,
                file=problem.path.name,
                valid=False,
                production=None,
                error=f"{problem.path.name}:{problem.line}:{problem.column}: {problem.message}",
            )
        )
    return json_response(ProjectList(projects=items))


def _relative(message: str, svc: Services) -> str:
    """Name desired files relative to the desired dir: never leak absolute paths."""
    return message.replace(f"{svc.desired.directory}/", "")


@bp.get("/api/projects/<raw>/production")
def get_production(raw: str) -> Response:
    pid = known(raw)
    status = current_status(pid)
    if status.error:
        status = status.model_copy(update={"error": _relative(status.error, services())})
    return json_response(status)


@bp.post("/api/projects/<raw>/deploy")
def deploy(raw: str) -> Response:
    pid = known(raw)
    json_body(required=False)
    svc = services()

    def mutate(spec: ProjectSpec) -> dict[str, object]:
        status = production_status(spec, svc.db.project(pid), svc.db.active_job(pid))
        if in_progress(status):
            return {}
        return {
            "production.state": "running",
            "production.version": "latest",
            "production.generation": spec.production.generation + 1,
        }

    edit(pid, mutate)
    return json_response(current_status(pid))


@bp.post("/api/projects/<raw>/stop-production")
def stop_production(raw: str) -> Response:
    pid = known(raw)
    json_body(required=False)
    edit(pid, lambda spec: {"production.state": "stopped"})
    return json_response(current_status(pid))


@bp.get("/api/projects/<raw>/production-history")
def history(raw: str) -> Response:
    pid = known(raw)
    svc = services()
    row = svc.db.project(pid)
    active = row.productionHash if row and row.productionStatus != "stopped" else ""
    versions = [
        Version(hash=v.hash, isActive=v.is_active, createdAt=v.created_at)
        for v in svc.releases.history(pid, active=active or "")
    ]
    return json_response(History(versions=versions))


@bp.post("/api/projects/<raw>/rollback-production")
def rollback(raw: str) -> Response:
    pid = known(raw)
    body = json_body(required=True)
    try:
        target = RollbackRequest.model_validate(body).toHash
    except ValidationError:
        raise ApiError(400, 'send {"toHash": "<8 lowercase hex characters>"}') from None
    svc = services()
    if svc.releases.get(pid, target) is None:
        raise ApiError(404, f"version {target} not found (not kept)")
    row = svc.db.project(pid)
    if row is not None and row.productionHash == target and row.productionStatus == "running":
        raise ApiError(400, f"version {target} is already active")

    edit(pid, lambda spec: {"production.state": "running", "production.version": target})
    loaded = svc.desired.load(pid)
    spec = loaded.in_force if loaded else None
    assert spec is not None
    digest = spec.digest()
    deadline = time.monotonic() + svc.rollback_wait(spec)
    while time.monotonic() < deadline:
        row = svc.db.project(pid)
        if row is not None:
            converged = row.productionHash == target and row.productionStatus == "running"
            if converged and svc.db.active_job(pid) is None:
                return json_response(
                    RollbackResult(
                        success=True, hash=target, message=f"Rolled back to version {target}"
                    )
                )
            if row.productionStatus == "failed" and row.failedDigest == digest:
                error = _relative(row.productionError or "rollback failed", svc)
                return json_response(RollbackResult(success=False, error=error), 500)
        time.sleep(svc.poll_interval / 2)
    return json_response(
        RollbackResult(
            success=False,
            error=f"version {target} is pinned, but the daemon did not converge within "
            f"{int(svc.rollback_wait(spec))} s; is `reconciler daemon` running?",
        ),
        500,
    )


@bp.get("/api/projects/<raw>/production-stream")
def stream(raw: str) -> Response:
    pid = known(raw)
    svc = services()
    last_id = _last_event_id()
    if not svc.streams.acquire(blocking=False):
        raise ApiError(503, "too many open event streams; retry shortly", {"Retry-After": "5"})
    try:
        events = _events(svc, pid, last_id)
        first = next(events)  # send headers and the retry hint at once
    except BaseException:
        svc.streams.release()
        raise

    def body() -> Iterator[str]:
        svc.open_streams[0] += 1
        try:
            yield first
            yield from events
        finally:
            svc.open_streams[0] -= 1
            svc.streams.release()

    response = Response(body(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _last_event_id() -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "Last-Event-ID must be a non-negative integer")
    return int(raw)


def _sse(event: str, data: dict[str, Any], event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _events(svc: Services, pid: ProjectId, last_id: int | None) -> Iterator[str]:
    yield "retry: 3000\n\n"
    db = svc.db
    if last_id is None:
        deployment = db.latest_deployment(pid)
        status = current_status(pid, svc)
        if deployment is not None and deployment.finishedAt is None:
            replay = db.deployment_events(deployment.id)
            for event in replay:
                yield _sse(event.type, event.payload(), event.id)
                if event.type in TERMINAL:
                    yield _sse("stream.end", {}, event.id)
                    return
            last_id = replay[-1].id if replay else db.last_event_id(pid)
        elif status.activeJob is not None and status.activeJob.state == "queued":
            last_id = db.last_event_id(pid)  # a deployment is about to start: follow it
        else:
            marker = db.last_event_id(pid)
            yield _sse(*_state_event(status), marker)
            yield _sse("stream.end", {}, marker)
            return
    silent_since = time.monotonic()
    while True:
        batch = db.events_after(pid, last_id, limit=500)
        for event in batch:
            last_id = event.id
            yield _sse(event.type, event.payload(), event.id)
            if event.type in TERMINAL:
                yield _sse("stream.end", {}, event.id)
                return
        if batch:
            silent_since = time.monotonic()
            continue
        if time.monotonic() - silent_since >= svc.heartbeat:
            yield ": keep-alive\n\n"  # also how a gone client is noticed
            silent_since = time.monotonic()
        time.sleep(svc.poll_interval)


def _state_event(status: ProductionStatus) -> tuple[str, dict[str, Any]]:
    if status.status == "running":
        return "production.ready", {
            "status": "running",
            "url": status.url,
            "port": status.port,
            "hash": status.hash,
        }
    if status.status == "failed":
        return "production.error", {"error": status.error, "status": "failed"}
    if status.status == "stopped":
        return "production.stopped", {"status": "stopped"}
    return "production.status", status.model_dump()


# -- the app ---------------------------------------------------------------------------------


def _check_auth() -> None:
    svc = services()
    if svc.token is None or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    header = request.headers.get("Authorization", "")
    if not header:
        raise ApiError(
            401, "this API needs Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), svc.token.encode()
    ):
        raise ApiError(403, "the bearer token is not valid")


def create_app(config: Config, *, token: str | None = None, db: StateDB | None = None) -> Flask:
    app = Flask("reconciler.api")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.json.sort_keys = False  # type: ignore[attr-defined]
    config.data_dir.mkdir(parents=True, exist_ok=True)
    app.extensions["reconciler"] = Services(
        config=config,
        db=db or StateDB(config.state_db),
        desired=DesiredStore(config.desired_dir, lock_dir=config.lock_dir),
        releases=ReleaseStore(config.releases_dir),
        token=token,
        streams=threading.BoundedSemaphore(config.stream_cap),
    )
    app.register_blueprint(bp)

    @app.before_request
    def _before() -> None:
        g.request_id = uuid.uuid4().hex[:12]
        _check_auth()

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = json_response({"error": exc.message}, exc.status)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        messages = {
            404: "not found",
            405: f"method {request.method} is not allowed here",
            413: f"the body is larger than {MAX_BODY} bytes",
        }
        code = exc.code or 500
        response = json_response({"error": messages.get(code, exc.name.lower())}, code)
        if code == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        request_id = getattr(g, "request_id", "-")
        logger.exception("request %s %s %s failed", request_id, request.method, request.path)
        return json_response({"error": f"internal error (request id {request_id})"}, 500)

    @app.get("/openapi.json")
    def _openapi() -> Response:
        from reconciler.api.openapi import document

        return json_response(document())

    return app
