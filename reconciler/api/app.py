"""The Flask sidecar: the spec's endpoints over the state DB and the desired files.

Routes are thin: the work is in ``reconciler.operations`` (shared with the local CLI). It
never imports a runtime, so it answers the same while the daemon is down.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from reconciler.api.models import DaemonHealth, EdgeHealth, Health, RollbackRequest
from reconciler.core.config import Config, is_loopback
from reconciler.core.kinds import EdgeMode, EventType
from reconciler.readside.operations import Operations
from reconciler.readside.terms import ErrorKind, Event, OperationError
from reconciler.sources import hooks
from reconciler.stores.opened import open_stores
from reconciler.stores.state import StateDB

logger = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
EDGE_STALE = 90.0  # the edge's status unwritten this long while the daemon runs: stale
HTTP_STATUS = {
    ErrorKind.INVALID: 400,
    ErrorKind.REFUSED: 400,
    ErrorKind.DENIED: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.UNAVAILABLE: 503,
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def ops() -> Operations:
    return current_app.extensions["reconciler"]  # type: ignore[no-any-return]


bp = Blueprint("api", __name__)


def json_response(model: BaseModel | dict[str, Any], status: int = 200) -> Response:
    body = model.model_dump_json() if isinstance(model, BaseModel) else json.dumps(model)
    return Response(body, status=status, mimetype="application/json")


def json_body(*, required: bool) -> Any:
    """The JSON body of a write. Every write says ``Content-Type: application/json``, an
    empty one too (a browser cannot send that cross-origin without asking first)."""
    if not request.is_json:
        raise ApiError(415, "send the body as Content-Type: application/json")
    data = request.get_data(cache=True)
    if not data.strip():
        if required:
            raise ApiError(400, "a JSON body is required")
        return {}
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object ({} when there is nothing to say)")
    return body


@bp.get("/healthz")
def healthz() -> Response:
    ok = True
    edge = daemon = None
    try:
        ops().db.read("SELECT 1")
        row = ops().db.edge()
        running, message = ops().daemon()
        if row is not None:
            status, error = row.status, row.error
            age = time.time() - datetime.fromisoformat(row.updatedAt).timestamp()
            if running and age > EDGE_STALE:  # written every 30 s while the daemon checks it
                status = "down"
                error = f"not checked for {age:.0f} s (its last check said {row.status}): " + (
                    "the daemon's edge loop is stuck"
                )
            edge = EdgeHealth(
                mode=row.mode, status=status, pid=row.pid, version=row.version,
                sites=row.sites, error=error, checkedAt=row.updatedAt,
            )  # fmt: skip
        daemon = DaemonHealth(running=running, message=message)
    except Exception:
        ok = False
    health = Health(status="ok", database=ok, edge=edge, daemon=daemon)
    return json_response(health, 200 if ok else 503)


@bp.get("/api/projects")
def list_projects() -> Response:
    """Every project. The same listing is sent again without being built again; with an
    ETag (``If-None-Match`` gets a 304) and gzip for clients that take it (a thousand
    projects are 250 KB of JSON, 15 KB compressed)."""
    body = ops().projects_json()
    cached: tuple[bytes, str, bytes] | None = current_app.config.get("RECONCILER_LISTING")
    if cached is None or cached[0] is not body:
        etag = hashlib.sha256(body).hexdigest()[:20]
        cached = (body, etag, gzip.compress(body, compresslevel=5))
        current_app.config["RECONCILER_LISTING"] = cached
    _body, etag, packed = cached
    if etag in request.if_none_match:
        response = Response(status=304)
    elif request.accept_encodings["gzip"]:
        response = Response(packed, mimetype="application/json")
        response.headers["Content-Encoding"] = "gzip"
    else:
        response = Response(body, mimetype="application/json")
    response.set_etag(etag)
    response.headers["Vary"] = "Accept-Encoding"
    return response


@bp.get("/api/projects/<raw>/production")
def get_production(raw: str) -> Response:
    return json_response(ops().status_of(raw))


@bp.post("/api/projects/<raw>/deploy")
def deploy(raw: str) -> Response:
    project_id = ops().project(raw)
    json_body(required=False)
    return json_response(ops().deploy(project_id))


@bp.post("/api/projects/<raw>/stop-production")
def stop_production(raw: str) -> Response:
    project_id = ops().project(raw)
    json_body(required=False)
    return json_response(ops().stop(project_id))


@bp.get("/api/projects/<raw>/production-history")
def history(raw: str) -> Response:
    return json_response(ops().history(ops().project(raw)))


@bp.post("/api/projects/<raw>/rollback-production")
def rollback(raw: str) -> Response:
    project_id = ops().project(raw)
    body = json_body(required=True)
    try:
        asked = RollbackRequest.model_validate(body)
    except ValidationError:
        raise ApiError(
            400,
            'send {"toHash": "<8 lowercase hex characters>"} (and "force": true for a '
            "version that never served)",
        ) from None
    result = ops().rollback(project_id, asked.toHash, force=asked.force)
    return json_response(result, 200 if result.success else 500)


@bp.get("/api/projects/<raw>/production-logs")
def logs(raw: str) -> Response:
    project_id = ops().project(raw)
    offset = request.args.get("offset")
    tail = request.args.get("tail", "100")
    if (offset is not None and not _digits(offset)) or not _digits(tail):
        raise ApiError(400, "offset and tail must be non-negative integers")
    return json_response(
        ops().read_log(
            project_id,
            request.args.get("log", "app"),
            offset=int(offset) if offset is not None else None,
            tail=min(int(tail), 10_000),
        )
    )


@bp.get("/api/projects/<raw>/events")
def events(raw: str) -> Response:
    """The project's latest events, oldest first: deploy progress and notification attempts
    (``?type=production.notification``), ``?limit=`` up to 500."""
    project_id = ops().project(raw)
    limit = request.args.get("limit", "100")
    kind = request.args.get("type")
    if not _digits(limit) or not 1 <= int(limit) <= 500:
        raise ApiError(400, "limit must be an integer from 1 to 500")
    if kind is not None and kind not in {str(e) for e in EventType}:
        raise ApiError(400, f"type must be one of {', '.join(sorted(str(e) for e in EventType))}")
    rows = ops().db.recent_events(project_id, limit=int(limit), event_type=kind)
    return json_response({"events": [
        {"id": r.id, "type": str(r.type), "deployment": r.deployment, "createdAt": r.createdAt,
         "data": r.payload()} for r in rows
    ]})  # fmt: skip


@bp.get("/api/projects/<raw>/production-stream")
def stream(raw: str) -> Response:
    operations = ops()
    project_id = operations.project(raw)
    last_id = _last_event_id()
    streams: threading.BoundedSemaphore = current_app.config["RECONCILER_STREAMS"]
    if not streams.acquire(blocking=False):
        raise ApiError(503, "too many open event streams; retry shortly", {"Retry-After": "5"})
    try:
        events = operations.follow(project_id, last_id)
    except BaseException:
        streams.release()
        raise

    def body() -> Iterator[str]:
        try:
            yield "retry: 3000\n\n"  # headers and the reconnect hint go out at once
            for event in events:
                if event is None:
                    yield ": keep-alive\n\n"  # also how a gone client is noticed
                else:
                    yield _sse(event)
        finally:
            streams.release()

    response = Response(body(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _last_event_id() -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
    if raw is None:
        return None
    if not _digits(raw) or len(raw) > 18:
        raise ApiError(400, "Last-Event-ID must be a non-negative integer")
    return int(raw)


def _digits(raw: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes '²', which ``int`` refuses)."""
    return raw.isascii() and raw.isdigit()


def _sse(event: Event) -> str:
    data = json.dumps(event.data, separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"


# -- the dashboard ----------------------------------------------------------------------------

DASHBOARD = Path(__file__).with_name("dashboard")
DASHBOARD_FILES = {
    "index.html": "text/html", "style.css": "text/css", "icon.svg": "image/svg+xml",
    **{f"{name}.js": "text/javascript"
       for name in ("app", "ui", "project", "progress", "settings", "charts")},
}  # fmt: skip
# nothing from elsewhere, no inline code, never in a frame
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _dashboard_file(name: str) -> Response:
    body = (DASHBOARD / name).read_bytes()
    response = Response(body, mimetype=DASHBOARD_FILES[name])
    response.headers["Content-Security-Policy"] = DASHBOARD_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
def dashboard() -> Response:
    """The dashboard (plain HTML and JavaScript over this API)."""
    return _dashboard_file("index.html")


@bp.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for it on their own; the dashboard's icon (so no 404 in any log)."""
    response = _dashboard_file("icon.svg")
    response.headers["Cache-Control"] = "max-age=86400"
    return response


@bp.get("/dashboard/<name>")
def dashboard_asset(name: str) -> Response:
    if name not in DASHBOARD_FILES:
        raise ApiError(404, "not found")
    return _dashboard_file(name)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format: what the stores say now, the daemon's own counters (while it
    runs) and the edge's per-site request metrics (while it runs)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from reconciler.api.metrics import api_registry, edge_lines, host_sites

    config: Config = current_app.config["RECONCILER_CONFIG"]
    db = ops().db
    registry = current_app.config.get("RECONCILER_METRICS")
    if registry is None:
        registry = current_app.config["RECONCILER_METRICS"] = api_registry(db)
    parts = [generate_latest(registry), db.daemon_metrics() or b""]
    socket = config.edge_dir / "admin.sock"
    if config.edge != EdgeMode.OFF and socket.exists():
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), timeout=2) as edge:
                response = edge.get("http://edge/metrics")
            if response.status_code == 200:
                parts.append(edge_lines(response.text, host_sites(db)).encode())
        except httpx.HTTPError:
            pass  # the edge is down: its status says so; the rest is still worth a scrape
    return Response(b"".join(parts), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})  # fmt: skip


# -- push webhooks --------------------------------------------------------------------------


def _is_hook() -> bool:
    """Webhook requests come from forges: signed with a per-project secret, not the bearer
    token, and not from a browser (the HMAC is their check)."""
    return request.path == "/api/hooks/desired" or (
        request.path.startswith("/api/projects/") and request.path.endswith("/hooks/git")
    )


def _hook_response(name: str, ref: str | None, *, previews: bool = False) -> Response:
    config: Config = current_app.config["RECONCILER_CONFIG"]
    body = request.get_data(cache=False)
    headers = {k.lower(): v for k, v in request.headers.items()}
    secret = hooks.read_secret(config.hook_secret_dir, name)
    verdict = hooks.judge(secret, body, headers, ref, previews=previews)
    if verdict.request is not None:
        hooks.note_request(config.layout.previews / "requests", name, verdict.request)
    if verdict.nudge:
        if name != hooks.DESIRED:
            ops().db.note_trigger(name, f"webhook: {verdict.message}"[:200])
        hooks.nudge(config.nudge_dir, name)
    logger.info("webhook for %s: %s %s", name, verdict.status, verdict.message)
    return json_response(
        {"accepted": verdict.nudge, "message": verdict.message}
        if verdict.status < 400
        else {"error": verdict.message},
        verdict.status,
    )


@bp.post("/api/projects/<raw>/hooks/git")
def git_hook(raw: str) -> Response:
    """A forge's push webhook: checks the project's followed ref now."""
    project_id = ops().project(raw)
    desired = ops().desired.read(project_id)
    spec = desired.spec if desired is not None else None
    ref = spec.git.ref if spec is not None and spec.git and spec.production.follow else None
    return _hook_response(project_id, ref, previews=spec is not None and spec.previews.wanted)


@bp.post("/api/hooks/desired")
def desired_hook() -> Response:
    """A push webhook for the configuration repository (``--desired-git``)."""
    config: Config = current_app.config["RECONCILER_CONFIG"]
    return _hook_response(hooks.DESIRED, config.desired_git_ref if config.desired_git else None)


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def _check_origin() -> None:
    """A browser must not act for a page the API does not trust. On a loopback listener the
    Host must be a loopback name (a page on a domain that resolves to 127.0.0.1 cannot read
    or write through it), and a write's ``Origin`` (or ``Sec-Fetch-Site``) must be the API's
    own address or an allowed origin. Clients that are not browsers send neither."""
    allowed: tuple[str, ...] = current_app.config["RECONCILER_ORIGINS"]
    host = request.host.lower()
    if current_app.config["RECONCILER_LOOPBACK"]:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in LOOPBACK_NAMES and not any(o.split("://", 1)[-1] == host for o in allowed):
            raise ApiError(403, f"this API answers only at a loopback address, not {host!r}")
    if request.method not in WRITES:
        return
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        own = f"{request.scheme}://{host}"
        if origin.lower() != own and origin.lower() not in allowed:
            raise ApiError(
                403,
                f"cross-origin write from {origin!r} refused; allow it with --allowed-origins",
            )
    elif request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site" or origin == "null":
        raise ApiError(403, "cross-origin write refused")


def _check_auth() -> None:
    token: str | None = current_app.config["RECONCILER_TOKEN"]
    # reads are open, but for a project's whole file, the list of secrets (settings) and the
    # build and app logs (a build prints its environment, an app its configuration)
    settings = request.path.endswith(("/desired", "/production-logs")) or request.path.startswith(
        "/api/secrets"
    )
    if token is None or (request.method in ("GET", "HEAD", "OPTIONS") and not settings):
        return
    header = request.headers.get("Authorization", "")
    if not header:
        raise ApiError(
            401, "this API needs Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
        )
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise ApiError(403, "the bearer token is not valid")


# -- the app ---------------------------------------------------------------------------------


def create_app(config: Config, *, token: str | None = None, db: StateDB | None = None) -> Flask:
    app = Flask("reconciler.api")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["reconciler"] = Operations.of(open_stores(config, db=db), config)
    app.config["RECONCILER_TOKEN"] = token
    app.config["RECONCILER_CONFIG"] = config
    app.config["RECONCILER_ORIGINS"] = tuple(o.lower().rstrip("/") for o in config.allowed_origins)
    app.config["RECONCILER_LOOPBACK"] = is_loopback(config.listen_host)
    app.config["RECONCILER_STREAMS"] = threading.BoundedSemaphore(config.stream_cap)
    app.register_blueprint(bp)
    from reconciler.api.manage import bp as manage

    app.register_blueprint(manage)

    @app.before_request
    def _before() -> None:
        if _is_hook():
            request.max_content_length = hooks.MAX_PAYLOAD
            return
        _check_origin()
        _check_auth()

    @app.errorhandler(OperationError)
    def _operation_error(exc: OperationError) -> Response:
        return json_response({"error": exc.message, "kind": exc.kind}, HTTP_STATUS[exc.kind])

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
            413: f"the body is larger than {request.max_content_length} bytes (this path's limit)",
        }
        code = exc.code or 500
        response = json_response({"error": messages.get(code, exc.name.lower())}, code)
        if code == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        request_id = uuid.uuid4().hex[:12]  # for the operator to find this in the log
        logger.exception("request %s %s %s failed", request_id, request.method, request.path)
        return json_response({"error": f"internal error (request id {request_id})"}, 500)

    @app.get("/openapi.json")
    def _openapi() -> Response:
        from reconciler.api.openapi import document

        return json_response(document())

    return app
